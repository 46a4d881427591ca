"""The typer application every command module registers on, the global flags (--debug, --quiet, --verbose), and
the one style of every help page (`HelpGroup`).

Help style, the same on every page: a value's type in capitals (PATH, TEXT, INTEGER, NUMBER, or the option's own
metavar such as KEY=VALUE); a true/false flag shown as a plain flag (no type); positional arguments in capitals
without braces in the usage line; the choices of an option at the end of its help as `(a | b)`; its default as
`[default: X]` (never in parentheses); and an example command line at the end of every command's page
(`example(...)`, the command's epilog; `tests/test_help.py` checks all of it).
"""
from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from xpaste._version import __version__

#: typer's type labels -> the one style of this CLI
_TYPE_NAMES = {"path": "PATH", "file": "PATH", "directory": "PATH", "str": "TEXT", "int": "INTEGER",
               "float": "NUMBER", "int range": "INTEGER", "float range": "NUMBER", "list[Path]": "PATH",
               "list[str]": "TEXT"}


def example(*lines: str) -> str:
    """A command's epilog: its example command lines, one per line."""
    return "\n\n".join(["Example:" if len(lines) == 1 else "Examples:", *(f"  {line}" for line in lines)])


def _tidy_param(param) -> None:
    """Show `param` in the help style of this CLI (see the module docstring); idempotent."""
    if getattr(param, "_xpaste_tidy", False):
        return
    param._xpaste_tidy = True
    if isinstance(param, TyperArgument):
        if param.hidden:  # an old spelling kept for one release: not in the usage line either
            param.get_usage_pieces = lambda ctx: []
            return
        if param.metavar is None:
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        plain = param.metavar
        param._usage_display_name = lambda: plain if param.required else f"[{plain}]"
        param.display_type_rich = lambda ctx: None  # the name says it (DATASET, POOL)
        return
    if not isinstance(param, TyperOption):
        return
    original_type = param.display_type_rich
    if param.is_flag:
        param.display_type_rich = lambda ctx: None
    elif param.metavar is None:
        def display_type_rich(ctx, original=original_type):
            shown = original(ctx)
            if shown is None:
                return None
            return _TYPE_NAMES.get(shown.strip("<>"), shown.strip("<>").upper())
        param.display_type_rich = display_type_rich
    original_default = param._get_default_string

    def _get_default_string(*, ctx, show_default_is_str, default_value, original=original_default):
        if show_default_is_str:  # typer wraps a text default in parentheses: shown as any other default
            return str(param.show_default)
        return original(ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value)
    param._get_default_string = _get_default_string


def _tidy_command(command) -> None:
    for param in command.params:
        _tidy_param(param)
    get_help_option = command.get_help_option
    if getattr(get_help_option, "_xpaste_tidy", False):
        return

    def tidy_help_option(ctx, original=get_help_option):
        option = original(ctx)
        if option is not None:
            _tidy_param(option)
        return option
    tidy_help_option._xpaste_tidy = True
    command.get_help_option = tidy_help_option


class HelpGroup(TyperGroup):
    """A command group whose help pages, and those of its commands, follow this CLI's one help style."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _tidy_command(self)
        for command in self.commands.values():
            _tidy_command(command)


app = typer.Typer(
    name="xpaste",
    help="Scalable Copy-Paste augmentation for instance segmentation (X-Paste).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
    epilog=example("xpaste augment --dataset train.json --images train_images/ --pool pool/ --out augmented/",
                   "xpaste COMMAND --help   (every command's options, with an example)"),
)
pool_app = typer.Typer(help="Create, import and inspect instance pools.", no_args_is_help=True, cls=HelpGroup,
                       epilog=example("xpaste pool import-coco --dataset train.json --images train_images/ "
                                      "--out pool/", "xpaste pool info pool/"))
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
