"""A newcomer's first steps (issue 19): the version flag. Oracle: the installed distribution's metadata."""
from __future__ import annotations

from importlib.metadata import version


def test_version_flag_prints_the_installed_version(capsys):
    from xpaste.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xpaste {version('xpaste')}"
