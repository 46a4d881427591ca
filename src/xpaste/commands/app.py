"""The typer application every command module registers on, and the global flags (--debug, --quiet, --verbose)."""
from __future__ import annotations

import logging
import sys

import typer

from xpaste._version import __version__

app = typer.Typer(
    name="xpaste",
    help="Scalable Copy-Paste augmentation for instance segmentation (X-Paste).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(help="Create, import and inspect instance pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message is logged (the CLI run in-process by tests or the demo
    may swap it between invocations)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int = 0) -> None:
    """-1 (--quiet): warnings and errors only, no progress bars; 0: info; 1 (--verbose): debug.

    Messages go to stderr as `xpaste: message`. Progress bars are tqdm's; --quiet turns every one of them off
    (jobs pass `disable=` themselves, which tqdm's `TQDM_DISABLE` variable does not override, so this process's
    tqdm is told directly; the variable is set too, for processes started later).
    """
    import os

    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger("xpaste")
    if not any(getattr(h, "_xpaste", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("xpaste: %(message)s" if verbosity < 1 else
                                               "xpaste: %(name)s: %(message)s"))
        handler._xpaste = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
    import tqdm

    patched = getattr(tqdm.tqdm.__init__, "_xpaste_original", None)
    if verbosity < 0 and patched is None:
        os.environ["TQDM_DISABLE"] = "1"
        original = tqdm.tqdm.__init__

        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            original(self, *args, **kwargs)

        quiet_init._xpaste_original = original  # type: ignore[attr-defined]
        tqdm.tqdm.__init__ = quiet_init
    elif verbosity >= 0 and patched is not None:  # a later invocation in the same process (tests, the demo)
        os.environ.pop("TQDM_DISABLE", None)
        tqdm.tqdm.__init__ = patched


#: Global flags of this invocation, set by the root callback before any command runs.
STATE = {"debug": False, "verbosity": 0}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"xpaste {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print xpaste's version and exit.",
                                 callback=_print_version, is_eager=True),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages from every module."),
) -> None:
    STATE["debug"] = debug
    STATE["verbosity"] = -1 if quiet else (1 if verbose else 0)
    configure_logging(STATE["verbosity"])
