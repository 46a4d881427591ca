"""The typer application every command module registers on."""
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

STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    STATE["debug"] = debug
