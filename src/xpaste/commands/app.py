"""The typer application every command module registers on, and the global flags (--debug, --quiet, --verbose)."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="xpaste",
    help="Scalable Copy-Paste augmentation for instance segmentation (X-Paste).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(help="Create, import and inspect instance pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")

#: Global flags of this invocation, set by the root callback before any command runs.
STATE = {"debug": False, "verbosity": 0}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages from every module."),
) -> None:
    from xpaste.cli import configure_logging

    STATE["debug"] = debug
    STATE["verbosity"] = -1 if quiet else (1 if verbose else 0)
    configure_logging(STATE["verbosity"])
