"""Entry point of the `xpaste` command: loads the command modules and turns user errors into one line."""
from __future__ import annotations

import importlib
import sys

# Command modules register themselves on the shared app when imported. A module missing here simply
# does not offer its commands (each is small and imports its heavy libraries lazily).
COMMAND_MODULES = [
    "xpaste.commands.stats",
    "xpaste.commands.pool",
    "xpaste.commands.augment",
    "xpaste.commands.eval",
    "xpaste.commands.pipeline",
    "xpaste.commands.report",
    "xpaste.commands.export",
]


def build_app():
    from xpaste.commands.app import app

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    return app


def main(argv: list[str] | None = None) -> int:
    from xpaste.pipeline.determinism import set_env_defaults

    set_env_defaults()  # before any command imports torch
    from xpaste.commands.app import STATE
    from xpaste.errors import XPasteError

    app = build_app()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="xpaste", standalone_mode=False)
    except XPasteError as e:
        if STATE["debug"] or "--debug" in args:
            raise
        print(f"xpaste: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xpaste: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
