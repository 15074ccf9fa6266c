"""`east-ds grade FILE`: grade a table of responses against gold answers.

Reads a JSONL or Parquet file with columns `response` and `gold`, writes the same rows plus `answer` (the
extracted final answer, null when none) and `correct` (bool) to `<stem>.graded.jsonl` / `<stem>.graded.parquet`
beside the input (same format), and prints the accuracy. Bad input (unreadable file or JSON line, missing
column, no rows) is reported with the file, row and key, and exits with status 2.

    python -m east_ds.grading.cli FILE [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from east_ds.grading import extract_answer, grade_answer
from east_ds.tables import TableError, read_table, write_table

REQUIRED = ("response", "gold")


class InputError(Exception):
    """A problem with the input file; the message names the file, row and key."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `grade` subcommand on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "grade",
        help="grade responses against gold answers (JSONL or Parquet with columns response, gold)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="input .jsonl or .parquet with columns `response` and `gold`")
    p.add_argument("--out", default=None,
                   help="output path (default: <stem>.graded.jsonl or <stem>.graded.parquet beside FILE)")


def _read(path: Path):
    """The table at `path` (tables.read_table), with every row holding both REQUIRED keys."""
    try:
        df = read_table(path, required=REQUIRED)
    except TableError as err:
        raise InputError(str(err)) from None
    for key in REQUIRED:
        missing = df.index[df[key].isna()]
        if len(missing):
            raise InputError(f"{path}: row {missing[0] + 1}: missing key {key!r}")
    return df


def _default_out(path: Path) -> Path:
    ext = ".parquet" if path.suffix == ".parquet" else ".jsonl"
    return path.with_name(path.stem + ".graded" + ext)


def run(args: argparse.Namespace) -> int:
    """Grade args.file; write the graded table; print accuracy. Returns the exit status (2 on bad input)."""
    path = Path(args.file)
    try:
        df = _read(path)
        if len(df) == 0:
            raise InputError(f"{path}: no rows")
        for i, (resp, gold) in enumerate(zip(df["response"], df["gold"]), 1):
            for key, v in (("response", resp), ("gold", gold)):
                if v is not None and not isinstance(v, str):
                    raise InputError(f"{path}: row {i}: key {key!r} must be a string, got {type(v).__name__}")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    responses = ["" if r is None else r for r in df["response"]]
    golds = ["" if g is None else str(g) for g in df["gold"]]
    answers = [extract_answer(r) if r else None for r in responses]
    df["answer"] = answers
    df["correct"] = [grade_answer(a, g) for a, g in zip(answers, golds)]  # grade(), extracting once
    out = Path(args.out) if getattr(args, "out", None) else _default_out(path)
    write_table(df, out)
    acc = float(df["correct"].mean())
    print(f"{path}: {int(df['correct'].sum())}/{len(df)} correct, accuracy {acc:.4f} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m east_ds.grading.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
