"""`east-ds`: the command line. Each subcommand lives in its stage's module and is imported only when used,
so `east-ds grade` never loads vLLM, Ray or DeepSpeed.

    east-ds run CONFIG.yaml [key=value ...]   the iterative EAST driver
    east-ds compare CONFIG.yaml --arms ...    weightings as arms of one config, paired on a shared rollout
    east-ds rollout / grade / weight / train / eval / report   the stages one at a time
    east-ds demo                               the CPU demo (vanilla against EAST on a tiny model)
    east-ds data gsm8k|math|math500            write the data files the shipped configs read
    east-ds check CONFIG.yaml [key=value ...]  preflight: every problem of a run at once, in seconds
    east-ds bench CONFIG.yaml [key=value ...]  throughput of your own setup through the real pipeline
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function that adds its parser). The module is imported only for that subcommand.
COMMANDS = {
    "run": ("east_ds.driver", "add_parser"),
    "compare": ("east_ds.compare", "add_parser"),
    "rollout": ("east_ds.rollout.cli", "add_rollout_parser"),
    "eval": ("east_ds.rollout.cli", "add_eval_parser"),
    "grade": ("east_ds.grading.cli", "add_parser"),
    "weight": ("east_ds.weighting.stage", "add_parser"),
    "report": ("east_ds.report", "add_parser"),
    "demo": ("east_ds.demo", "add_parser"),
    "data": ("east_ds.data.prep", "add_parser"),
    "check": ("east_ds.checks.preflight", "add_parser"),
    "bench": ("east_ds.checks.bench", "add_parser"),
}


# Subcommands whose module parses its own arguments (also run by the deepspeed launcher as `--module`).
PASSTHROUGH = {"train": "east_ds.training.cli"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return int(importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="east-ds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"see `east-ds {name} --help` (single process; or the deepspeed launcher)")
    for name, (module, fn) in COMMANDS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name)
            continue
        if wanted is None:  # help listing: no heavy imports, just the names
            sub.add_parser(name, help=f"see `east-ds {name} --help`")
            continue
        getattr(importlib.import_module(module), fn)(sub)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the flags (`east-ds check CFG --smoke name=x`): argparse stops filling a
    # positional list at the first flag, so those come back here as unrecognised
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in x and not x.startswith("-") for x in extra):
        args.overrides += extra
    elif extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
