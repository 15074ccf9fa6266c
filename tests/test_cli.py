"""The command line: every subcommand is reachable, and the pure stages never import the heavy frameworks."""

import json
import subprocess
import sys

import pytest

from east_ds.cli import COMMANDS, PASSTHROUGH, main

HEAVY = ("vllm", "ray", "deepspeed")


def test_light_imports():
    code = ("import sys, east_ds, east_ds.cli, east_ds.grading, east_ds.weighting.mapping, east_ds.weighting.selection, "
            "east_ds.weighting.stage, east_ds.config, east_ds.data.load, east_ds.training.losses\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", sorted(COMMANDS) + sorted(PASSTHROUGH))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_grade_through_the_cli(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    rows = [{"response": "so \\boxed{\\frac{1}{2}}", "gold": "0.5"}, {"response": "\\boxed{3}", "gold": "4"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", str(f)]) == 0
    assert "0.5" in capsys.readouterr().out  # accuracy 1/2
    graded = [json.loads(x) for x in (tmp_path / "r.graded.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False]


def test_unknown_subcommand_fails():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_overrides_may_follow_the_flags(tmp_path, capsys):
    """`east-ds check CFG --no-cluster name=x`: argparse alone would reject the override after the flag."""
    from pathlib import Path

    cfg = str(Path(__file__).resolve().parent.parent / "configs" / "demo_cpu.yaml")
    main(["check", cfg, "--no-cluster", f"output_dir={tmp_path}", "name=after_flags"])
    assert f"run {tmp_path / 'after_flags'}" in capsys.readouterr().out
    for extra in (["--no-such-flag"], ["not_an_override"]):
        with pytest.raises(SystemExit) as e:
            main(["check", cfg, "--no-cluster", *extra])
        assert e.value.code == 2
        assert f"unrecognized arguments: {extra[0]}" in capsys.readouterr().err
