"""Every command the docs show names configs that exist, and its batch arithmetic holds.

A command copied from README.md, docs/*.md or the usage comment of a launch script should start: the configs
it names must be shipped (configs/...), and micro_batch_size x gradient_accumulation_steps x world size must
equal global_batch_size (east_ds.config.check_batch_sizes) at the world size the command states, or the run
stops at its first training step. The world size is `--num_gpus N` for the deepspeed launcher,
`NUM_GPUS=N` (default 1) for launch/iteration_deepspeed.sh, and training.num_ranks of the config and its
overrides for everything else (Ray driver, ray_job.sh, sbatch); hostfile launches state none and are skipped.
Placeholders (CONFIG.yaml, C, <name>, $CFG, ...) are skipped. Pure parsing: nothing is started.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import NamedTuple

import pytest

from east_ds.config import check_batch_sizes, load_config

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = re.compile(r"^(launch/\S+|east-ds|deepspeed|sbatch|python\S*)$")  # what a script's usage comment runs
DEEPSPEED = {"deepspeed", "launch/train_deepspeed.sh"}
ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # VAR=value before the program
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*=")  # key=value / section.key=value after it
OPTIONAL = re.compile(r"\[[^\]]*\.\.\.[^\]]*\]")  # "[key=value ...]": an optional tail, not an argument
CONFIG_IN_TEXT = re.compile(r"(?<![\w/.$-])configs/[\w.-]+\.yaml")


class Command(NamedTuple):
    where: str  # file:line of the command's first line
    text: str  # continuation lines joined


def _joined(lines: list[tuple[int, str]], name: str) -> list[Command]:
    """Join lines ending in a backslash with the next one; one Command per logical line."""
    out: list[Command] = []
    start, parts = 0, []
    for no, line in lines:
        start = start or no
        parts.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            out.append(Command(f"{name}:{start}", " ".join(parts)))
            start, parts = 0, []
    return out


def markdown_commands(text: str, name: str) -> list[Command]:
    """Lines of fenced code blocks with language bash/sh/none, and of indented code blocks."""
    lines, fence, indented, prev_blank = [], None, False, True
    for no, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
            continue
        if fence is None:
            indented = line.startswith("    ") and (indented or prev_blank)
            prev_blank = not line.strip()
        if indented or fence in ("bash", "sh", "shell", ""):
            lines.append((no, line))
    return [c for c in _joined(lines, name) if c.text]


def script_usage_commands(text: str, name: str) -> list[Command]:
    """Usage lines in the leading comment block of a launch script that run one of PROGRAMS."""
    block = []
    for no, line in enumerate(text.splitlines(), 1):
        if no == 1 and line.startswith("#!"):
            continue
        if not line.startswith("#"):
            break
        block.append((no, line[1:]))
    commands = []
    for cmd in _joined(block, name):
        text = re.sub(r"^[A-Za-z][\w ()-]*:\s+", "", cmd.text)  # a label: "one node:  launch/..."
        try:
            programs = [_program(sub)[0] for sub in _subcommands(text)]
        except ValueError:  # prose with an apostrophe
            continue
        if any(p and PROGRAMS.match(p) for p in programs):
            commands.append(Command(cmd.where, text))
    return commands


def _subcommands(text: str) -> list[list[str]]:
    """shlex tokens of each simple command (split at ; && || |), comments and optional [... ...] tails removed."""
    lex = shlex.shlex(OPTIONAL.sub(" ", text), posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    subs: list[list[str]] = [[]]
    for tok in lex:
        if set(tok) <= set(";&|"):
            subs.append([])
        else:
            subs[-1].append(tok)
    return [s for s in subs if s]


def _program(tokens: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """(program, env assignments before it, its arguments); `do`, `then` and `bash` are looked through."""
    env: dict[str, str] = {}
    i = 0
    while i < len(tokens) and (ASSIGN.match(tokens[i]) or tokens[i] in ("do", "then", "bash", "sh")):
        if ASSIGN.match(tokens[i]):
            key, value = tokens[i].split("=", 1)
            env[key] = value
        i += 1
    return (tokens[i], env, tokens[i + 1:]) if i < len(tokens) else (None, env, [])


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _without_arms(args: list[str]) -> list[str]:
    """The arguments without the values of `--arms` (`east-ds compare`'s NAME=k=v arm specs, not overrides)."""
    out, in_arms = [], False
    for a in args:
        in_arms = a == "--arms" or (in_arms and not a.startswith("-"))
        if not in_arms:
            out.append(a)
    return out


def _placeholder(path: str) -> bool:
    stem = Path(path).name.split(".")[0]
    return "<" in path or path.startswith("$") or path.strip(".") == "" or stem.replace("_", "").isupper()


def _world(program: str, env: dict[str, str], args: list[str], num_ranks: int) -> int | None:
    """The world size the command states; None for a hostfile or a placeholder count (N)."""
    if program in DEEPSPEED:
        n = None if "--hostfile" in args else _flag(args, "--num_gpus")
    elif program.endswith("iteration_deepspeed.sh"):
        n = None if "HOSTFILE" in env else env.get("NUM_GPUS", "1")
    else:
        return num_ranks  # the Ray driver (east-ds run, ray_job.sh, sbatch) trains training.num_ranks ranks
    return int(n) if n and n.isdigit() else None


def problems(cmd: Command) -> list[str]:
    """What stops this command: configs that do not exist, batch arithmetic that does not hold."""
    found = []
    try:
        subs = _subcommands(cmd.text)
    except ValueError as e:
        return [f"{cmd.where}: cannot split {cmd.text!r}: {e}"]
    paths = set(CONFIG_IN_TEXT.findall(cmd.text))  # also those named in a comment
    checks = []
    for tokens in subs:
        program, env, args = _program(tokens)
        if program is None:
            continue
        positional = [a for a in args if a.endswith(".yaml") and not a.startswith("-") and "=" not in a]
        config = _flag(args, "--config") or env.get("TRAIN_CONFIG") or (positional[0] if positional else None)
        paths |= {p for p in [config, *positional] if p and not _placeholder(p)}
        checks.append((program, env, args, config))
    found += [f"{cmd.where}: config {p} does not exist (in {cmd.text!r})"
              for p in sorted(paths) if not (ROOT / p).is_file()]
    for program, env, args, config in checks:
        launcher = program in DEEPSPEED or program.endswith("iteration_deepspeed.sh")
        if (config is None and not launcher) or (config and (_placeholder(config) or not (ROOT / config).is_file())):
            continue  # nothing to load; a launcher without a config trains with the defaults
        try:
            cfg = load_config(ROOT / config if config else None,
                              [a for a in _without_arms(args) if OVERRIDE.match(a)])
            world = _world(program, env, args, cfg.training.num_ranks)
            if world is not None:
                check_batch_sizes(cfg.training, world)
        except ValueError as e:  # ConfigError is a ValueError
            found.append(f"{cmd.where}: {e} (in {cmd.text!r})")
    return found


def all_commands() -> list[Command]:
    commands = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        commands += markdown_commands(md.read_text(), str(md.relative_to(ROOT)))
    for script in sorted([*(ROOT / "launch").glob("*.sh"), *(ROOT / "launch").glob("*.sbatch")]):
        commands += script_usage_commands(script.read_text(), str(script.relative_to(ROOT)))
    return commands


def test_documented_commands_name_real_configs_and_hold_batch_arithmetic() -> None:
    commands = all_commands()
    assert len(commands) > 30, f"the collector found only {len(commands)} commands"
    assert any(c.where.startswith("launch/train_deepspeed.sh") for c in commands)
    found = [p for c in commands for p in problems(c)]
    assert not found, "documented commands that cannot start:\n" + "\n".join(found)


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_holds_batch_arithmetic(path: str) -> None:
    cfg = load_config(ROOT / "configs" / path)
    check_batch_sizes(cfg.training, cfg.training.num_ranks)


def test_checker_reports_bad_commands() -> None:
    doc = "\n".join([
        "Text.", "", "```bash",
        "east-ds run configs/no_such_config.yaml iterations=2",
        "deepspeed --num_gpus 8 --module east_ds.train --config configs/gsm8k_sft_east.yaml \\",
        "    --examples E --model M --out D",
        "deepspeed --num_gpus 8 --module east_ds.train --config configs/gsm8k_sft_east.yaml \\",
        "    --examples E --model M --out D training.gradient_accumulation_steps=1 [key=value ...]",
        "NUM_GPUS=8 launch/iteration_deepspeed.sh M runs/x/iter_1",
        "deepspeed --num_gpus N --module east_ds.train --config CONFIG.yaml --examples E --model M --out D",
        "```",
    ])
    commands = markdown_commands(doc, "bad.md")
    assert [c.where for c in commands] == ["bad.md:4", "bad.md:5", "bad.md:7", "bad.md:9", "bad.md:10"]
    missing, eight_gpus, fixed, iteration, placeholder = (problems(c) for c in commands)
    assert len(missing) == 1 and "bad.md:4" in missing[0] and "configs/no_such_config.yaml" in missing[0]
    assert len(eight_gpus) == 1 and "bad.md:5" in eight_gpus[0] and "= 128 != global_batch_size (16)" in eight_gpus[0]
    assert fixed == [] and placeholder == []
    assert len(iteration) == 1 and "x world size (8)" in iteration[0]
    usage = "#!/usr/bin/env bash\n# Usage:\n#   one node:  launch/x.sh --config configs/nope.yaml\nset -e\n# later\n"
    assert [p.split(":")[:2] for c in script_usage_commands(usage, "x.sh") for p in problems(c)] == [["x.sh", "3"]]
