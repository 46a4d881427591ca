"""Help pages in one style (`xpaste.commands.app`): an example on every page, flags without a `<bool>` type, no
internal names in usage lines, defaults as `[default: X]` only, the same flag for the same meaning across
commands (old spellings hidden but accepted), choices in the help that are the ones the errors list."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from xpaste.cli import build_app, main

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    return list(walk(typer.main.get_command(build_app()), []))


def _help(path: list[str]) -> str:
    out = CliRunner().invoke(build_app(), path + ["--help"], env={"COLUMNS": "250"}, terminal_width=250).output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


COMMANDS = _commands()


def _usage(path: list[str]) -> str:
    raw = CliRunner().invoke(build_app(), path + ["--help"], env={"COLUMNS": "250"}, terminal_width=250).output
    return next(line.strip() for line in raw.splitlines() if "Usage:" in line)


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) or "xpaste" for p, _ in COMMANDS])
def test_every_help_page_has_an_example_and_one_style(path):
    text = _help(path)
    assert re.search(r"Examples?: xpaste ", text), text[-400:]
    assert "<bool>" not in text and "<list[" not in text
    assert not re.search(r"<(int|str|float|path|file|directory)( range)?>", text)  # types: PATH, TEXT, INTEGER
    assert "[default: (" not in text and "default: null" not in text  # one style: [default: X]
    usage = _usage(path)
    assert "{" not in usage and "<" not in usage, usage
    command = next(c for p, c in COMMANDS if p == path)
    for param in command.params:  # old spellings are hidden
        if getattr(param, "hidden", False):
            assert not any(f"{opt} " in text + " " for opt in param.opts if opt.startswith("--")), param.opts


def test_usage_lines_name_arguments_plainly():
    assert _usage(["pool", "migrate"]) == "Usage: xpaste pool migrate [OPTIONS] OLD NEW"
    assert _usage(["report"]) == "Usage: xpaste report [OPTIONS] INPUTS..."
    assert _usage(["stats"]) == "Usage: xpaste stats [OPTIONS]"  # the old positional is hidden
    assert _usage(["run"]) == "Usage: xpaste run [OPTIONS] CONFIG"


def test_the_dataset_is_given_the_same_way_everywhere(tmp_path, capsys):
    """--dataset in stats, import-coco, augment and export-yolo; the positional of stats and import-coco is a
    hidden alias for one release."""
    from coco_fixtures import write_dataset

    for path in (["stats"], ["pool", "import-coco"], ["augment"], ["export-yolo"]):
        assert "--dataset PATH" in _help(path), path
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    assert main(["stats", "--dataset", str(ann)]) == 0
    new = capsys.readouterr().out
    assert main(["stats", str(ann)]) == 0 and capsys.readouterr().out == new  # the old spelling
    assert main(["stats"]) == 2 and "--dataset" in capsys.readouterr().err
    assert main(["pool", "import-coco", "--dataset", str(ann), "--images", str(images), "--out",
                 str(tmp_path / "p1"), "--min-area", "50"]) == 0
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(tmp_path / "p2"),
                 "--min-area", "50"]) == 0


def test_fresh_is_the_one_name_and_overwrite_a_hidden_alias():
    for path in (["augment"], ["export-yolo"], ["segment"], ["build-pool"]):
        text = _help(path)
        assert "--fresh " in text and "--overwrite" not in text, path
    params = {o for _, c in COMMANDS if _ == ["export-yolo"] for p in c.params for o in p.opts}
    assert {"--fresh", "--overwrite"} <= params


def test_sampling_help_lists_the_choices_the_error_lists(tmp_path, capsys):
    from coco_fixtures import write_dataset

    text = _help(["augment"])
    listed = re.search(r"--sampling TEXT which pool instances \(([^)]*)\)", text).group(1).split(" | ")
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    assert main(["pool", "import-coco", "--dataset", str(ann), "--images", str(images), "--out",
                 str(tmp_path / "pool"), "--min-area", "50"]) == 0
    capsys.readouterr()
    # a value the help does not list (and 'weighted', when the help leaves it out) is refused naming the same list
    for value in ["nosuch"] + [v for v in ("weighted",) if v not in listed]:
        assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(tmp_path / "pool"),
                     "--out", str(tmp_path / "out"), "--sampling", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        named = re.search(r"one of ([a-z, ]+?)(?:, got|$| \(|;)", err[0]).group(1).split(", ")
        assert named == listed, (named, listed)
    assert not (tmp_path / "out").exists()


def test_help_defaults_match_the_config_and_the_readme():
    from xpaste.stages.retrieve import RetrieveConfig

    default = RetrieveConfig().per_category
    assert f"--per-category INTEGER images per category (config key retrieve.per_category) [default: {default}]" \
        in _help(["retrieve"])
    readme = (ROOT / "README.md").read_text()
    assert f"[--per-category {default}]" in readme
    assert re.search(r"--seed INTEGER seed of the paste plans", _help(["augment"]))


def test_the_build_pool_hint_for_an_unscored_run_names_a_flag_that_works(tmp_path, capsys):
    """build-pool on a run without CLIP scores says `--set score.clip=null`, and that command builds the pool."""
    import shutil

    from test_build_pool import write_run

    from test_stage_resume import TABLE

    write_run(tmp_path, TABLE[:4])
    shutil.rmtree(tmp_path / "score")
    args = ["build-pool", "--run", str(tmp_path), "--area-min", "0.01"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--set score.clip=null" in err
    assert main(args + ["--set", "score.clip=null"]) == 0
    assert (tmp_path / "pool" / "pool.json").is_file()
