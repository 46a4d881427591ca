"""Entry point of the `xpaste` command: loads the command modules and ends every fault in one line.

How a run ends (the same for every command):
- success: exit 0;
- `XPasteError` (a problem the user can fix): one line `xpaste: error: <path>: <message> (hint: ...)`, exit 2;
- an OS fault writing or reading files (errno ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EMFILE, ENFILE; and, as a
  safety net behind each command's own output check, EEXIST, ENOTDIR, EISDIR): one line naming the path and
  what to do, exit 2 (atomic writes leave nothing half-written, so rerunning resumes);
- Ctrl-C (SIGINT, `KeyboardInterrupt`): `xpaste: interrupted` on stderr, exit 130 (128 + SIGINT, the shell
  convention), no traceback;
- usage errors (unknown flag, missing argument): click's message, exit 2;
- `--debug` (anywhere on the command line) re-raises instead, with the full traceback.
"""
from __future__ import annotations

import errno
import importlib
import logging
import sys

# Command modules register themselves on the shared app when imported. A module missing here simply
# does not offer its commands (each is small and imports its heavy libraries lazily).
COMMAND_MODULES = [
    "xpaste.commands.stats",
    "xpaste.commands.pool",
    "xpaste.commands.augment",
    "xpaste.commands.masks_from_boxes",
    "xpaste.commands.eval",
    "xpaste.commands.plan",
    "xpaste.commands.pipeline",
    "xpaste.commands.report",
    "xpaste.commands.export",
    "xpaste.commands.doctor",
]

#: errno -> what the user can do about it. These are faults of the environment, not bugs: one line, exit 2.
OS_FAULT_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder, then rerun to resume",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere, then rerun to resume",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EACCES: "permission denied: check the folder's owner and mode, or choose another folder",
    errno.EPERM: "operation not permitted: check the folder's owner and mode, or choose another folder",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.ENFILE: "the system's open-file table is full: use fewer workers or retry later",
    # a path of the wrong kind (each command checks its outputs first, `xpaste.io.check_output`: a safety net)
    errno.EEXIST: "a file stands where a folder is needed: choose another output path",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another output path",
    errno.EISDIR: "this is a folder where a file is needed: name a file",
}

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT

log = logging.getLogger(__name__)


def build_app():
    from xpaste.commands.app import app

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    return app


def os_fault(exc: BaseException) -> OSError | None:
    """The OSError of a known environment fault behind `exc` (itself, or a cause/context), else None.

    Libraries that wrap the C library's error (pyarrow) may leave `errno` unset: the strerror text of the
    known kinds in the message identifies them then.
    """
    import os

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in OS_FAULT_HINTS:
                return exc
            if exc.errno is None:
                text = str(exc)
                for code in OS_FAULT_HINTS:
                    if os.strerror(code) in text:
                        return OSError(code, os.strerror(code), exc.filename)
        exc = exc.__cause__ or exc.__context__
    return None


def os_fault_line(e: OSError) -> str:
    """`path: No space left on device (hint: ...)`, the path being the file the fault happened on."""
    import os

    where = e.filename if e.filename is not None else "(file not named by the system)"
    text = f"{os.fsdecode(where) if isinstance(where, bytes) else where}: {e.strerror or os.strerror(e.errno)}"
    return f"{text} (hint: {OS_FAULT_HINTS[e.errno]})"


def _stdout_is_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (poll reports an error on the write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests), or no poll
        return False


def _end_progress_bars() -> None:
    """Close the progress bars an exception left open, so the message that follows starts on its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot be drawn any more is simply left
            pass


def _say(message: str) -> None:
    _end_progress_bars()
    print(message, file=sys.stderr)


def _invoke(app, args: list[str]) -> int:
    """Run the command line through click directly, so every exception reaches `main` (typer's own main
    turns Ctrl-C into a return value of 130 that was easy to lose)."""
    import typer
    import typer.main

    command = typer.main.get_command(app)
    try:
        with command.make_context("xpaste", list(args)) as ctx:
            command.invoke(ctx)
    except typer.Exit as e:  # --help, ctx.exit(n), typer.Exit(n) from a command
        return int(e.exit_code)
    except typer.Abort:  # raised for EOF at a prompt
        print("xpaste: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as e:  # usage errors (click's, vendored by typer): its message, exit 2
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            print(f"xpaste: error: {e.format_message()}", file=sys.stderr)
        return int(getattr(e, "exit_code", EXIT_ERROR))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `xpaste ARGS`; returns the exit status (see the module docstring for how faults end)."""
    from xpaste.pipeline.determinism import set_env_defaults

    set_env_defaults()  # before any command imports torch
    from xpaste.commands.app import STATE
    from xpaste.errors import XPasteError

    args = list(sys.argv[1:] if argv is None else argv)
    STATE["debug"] = "--debug" in args
    if STATE["debug"]:  # accepted anywhere on the line: it is a global flag of the root command
        args = ["--debug"] + [a for a in args if a != "--debug"]
    try:
        return _invoke(build_app(), args)
    except KeyboardInterrupt:
        if STATE["debug"]:
            raise
        _say("xpaste: interrupted")
        return EXIT_INTERRUPTED
    except XPasteError as e:
        if STATE["debug"]:
            raise
        _say(f"xpaste: error: {e}")
        return EXIT_ERROR
    except SystemExit as e:  # sys.exit inside a command (argparse-style helpers)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:
        # `xpaste stats x.json | head`: the reader of stdout went away; nothing to report. Any other broken
        # pipe (a worker's) is a real error and is raised.
        import os

        if not _stdout_is_gone():
            raise
        try:  # so that the interpreter's final flush of stdout stays quiet too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as e:  # noqa: BLE001 - only environment faults end here; everything else is re-raised
        fault = os_fault(e)
        if fault is None or STATE["debug"]:
            raise
        _say(f"xpaste: error: {os_fault_line(fault)}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
