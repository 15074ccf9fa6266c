"""`east-ds data NAME [--out DIR] [--source PATH]`: write the data files the shipped configs read.

    gsm8k    DIR/gsm8k_train.jsonl  DIR/gsm8k_test.jsonl   openai/gsm8k, config `main`
    math     DIR/math_train.jsonl   DIR/math_test.jsonl    EleutherAI/hendrycks_math, its 7 subject configs
    math500  DIR/math500_test.jsonl                        HuggingFaceH4/MATH-500

Where the rows come from:
- `--source DIR`: a local copy, either as the hub stores it (what `hf download REPO --repo-type dataset
  --local-dir DIR` leaves: Parquet split files such as `main/train-00000-of-00001.parquet`,
  `algebra/test-00000-of-00001.parquet` or `data/train-*.parquet`, or `test.jsonl` at the top), or plain
  `train.jsonl` / `test.jsonl` (or `.parquet`) files.
- otherwise the hub, through the `datasets` package (`pip install -e '.[data]'`; the `gpu` extra includes it).
  Offline (HF_HUB_OFFLINE=1 or no network) this is an error that says how to get the files.

Each written row keeps the source's columns. A row whose gold answer does not parse (data.gold_of, as
the driver reads them) is left out and counted, so every written file loads.
For each file it prints the row count, the share of rows whose gold parsed, and the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from east_ds.data.load import gold_of
from east_ds.tables import TableError, read_table, write_table

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


class DataPrepError(RuntimeError):
    """The data set cannot be made: no source, an incomplete local copy, rows without a question column."""


@dataclass(frozen=True)
class DataSpec:
    repo: str  # hub dataset the files come from
    configs: tuple[str, ...]  # hub configs (subfolders of the hub layout) concatenated in this order; "" = default
    files: tuple[tuple[str, str], ...]  # (output file name, split)
    fmt: str  # how the gold answer is read ("gsm8k" or "math")


SPECS = {
    "gsm8k": DataSpec("openai/gsm8k", ("main",), (("gsm8k_train.jsonl", "train"), ("gsm8k_test.jsonl", "test")),
                      "gsm8k"),
    "math": DataSpec("EleutherAI/hendrycks_math", MATH_SUBJECTS,
                     (("math_train.jsonl", "train"), ("math_test.jsonl", "test")), "math"),
    "math500": DataSpec("HuggingFaceH4/MATH-500", ("",), (("math500_test.jsonl", "test"),), "math"),
}
TABLE_SUFFIXES = (".jsonl", ".parquet", ".json")


# ----------------------------------------------------------------------------------------------------------------
# Finding a split in a local copy


def split_files(source: Path, split: str, configs: tuple[str, ...]) -> list[Path]:
    """The files holding `split` under `source`, in the first layout that has it:

    1. `source/<split>.jsonl` (or .parquet/.json): a plain copy, or MATH-500 as the hub stores it;
    2. `source/data/<split>-*.parquet`: a single-config hub repo (the `default` config);
    3. `source/<config>/<split>-*.parquet` for every config of the data set (gsm8k's `main`, MATH's subjects).
    An incomplete copy (some configs present, others not) is an error naming the missing ones.
    """
    if not source.is_dir():
        raise DataPrepError(f"--source {source}: not a directory")
    for suffix in TABLE_SUFFIXES:
        if (source / f"{split}{suffix}").is_file():
            return [source / f"{split}{suffix}"]
    data = sorted((source / "data").glob(f"{split}-*.parquet"))
    if data:
        return data
    named = [c for c in configs if c]
    found = {c: sorted((source / c).glob(f"{split}-*.parquet")) for c in named}
    present = [c for c in named if found[c]]
    if present and len(present) < len(named):
        missing = [c for c in named if not found[c]]
        raise DataPrepError(f"--source {source}: split {split!r} has files for {present} but none for {missing} "
                            f"(looked for <config>/{split}-*.parquet); the copy is incomplete")
    if present:
        return [f for c in named for f in found[c]]
    looked = [f"{split}.jsonl", f"data/{split}-*.parquet"] + [f"{c}/{split}-*.parquet" for c in named]
    raise DataPrepError(f"--source {source}: no file for split {split!r} (looked for {', '.join(looked)})")


def read_local(source: Path, split: str, configs: tuple[str, ...]) -> tuple[pd.DataFrame, list[Path]]:
    """The rows of `split` from a local copy, concatenated in file order, and the files they came from."""
    files = split_files(source, split, configs)
    return pd.concat([read_table(f) for f in files], ignore_index=True), files


# ----------------------------------------------------------------------------------------------------------------
# The hub


def _how_to_get(name: str, spec: DataSpec, out: Path) -> str:
    return (f"on a machine with internet access run `hf download {spec.repo} --repo-type dataset --local-dir DIR` "
            f"(huggingface_hub's CLI), copy DIR here and run `east-ds data {name} --out {out} --source DIR`; "
            f"or install the `datasets` package (pip install -e '.[data]') and run this command online")


def read_hub(name: str, spec: DataSpec, split: str, out: Path) -> pd.DataFrame:
    """The rows of `split` from the hub through `datasets`, every config concatenated in order."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataPrepError(f"{name}: no --source given and the hub is off (HF_HUB_OFFLINE=1); "
                            + _how_to_get(name, spec, out))
    try:
        import datasets
    except ImportError:
        raise DataPrepError(f"{name}: no --source given and the `datasets` package is not installed; "
                            + _how_to_get(name, spec, out)) from None
    frames = []
    for config in spec.configs:
        try:
            ds = datasets.load_dataset(spec.repo, config or None, split=split)
        except Exception as e:  # network, authentication and missing-config errors come in many types
            raise DataPrepError(f"{name}: loading {spec.repo} ({config or 'default'}, {split}) from the hub failed "
                                f"({type(e).__name__}: {e}); " + _how_to_get(name, spec, out)) from None
        frames.append(ds.to_pandas())
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------
# Gold answers, writing, the command


def parsable_rows(df: pd.DataFrame, fmt: str) -> list[int]:
    """Positions of the rows whose gold answer parses."""
    keep = []
    for i, row in enumerate(df.to_dict("records")):
        try:
            gold_of(row, fmt)
        except ValueError:
            continue
        keep.append(i)
    return keep


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(name: str, out: str | Path, source: str | Path | None = None) -> list[dict]:
    """Write the files of data set `name` under `out`; return one summary per file: path, rows (written),
    source_rows, gold_parsed (share of source rows), dropped, sha256, sources."""
    if name not in SPECS:
        raise DataPrepError(f"unknown data set {name!r}; choose one of {sorted(SPECS)}")
    spec, out = SPECS[name], Path(out)
    summaries = []
    for filename, split in spec.files:
        if source is not None:
            df, files = read_local(Path(source), split, spec.configs)
            where = [str(f) for f in files]
        else:
            df = read_hub(name, spec, split, out)
            where = [f"{spec.repo}[{split}]"]
        if "question" not in df.columns and "problem" not in df.columns:
            raise DataPrepError(f"{', '.join(where)}: no `question` or `problem` column; found {list(df.columns)}")
        keep = parsable_rows(df, spec.fmt)
        path = write_table(df.iloc[keep].reset_index(drop=True), out / filename)
        summaries.append({"path": str(path), "rows": len(keep), "source_rows": len(df),
                          "gold_parsed": len(keep) / len(df), "dropped": len(df) - len(keep),
                          "sha256": sha256(path), "sources": where})
    return summaries


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write the GSM8K / MATH / MATH-500 files the shipped configs read",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SPECS), help="which data set")
    p.add_argument("--out", default="data", help="output directory (the shipped configs read data/)")
    p.add_argument("--source", default=None, help="a local copy (hub layout or train.jsonl/test.jsonl) instead of "
                                                  "the hub")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        summaries = prepare(args.name, args.out, args.source)
    except (DataPrepError, TableError) as e:
        print(f"east-ds data: error: {e}", file=sys.stderr)
        return 2
    width = max(len(s["path"]) for s in summaries)
    print(f"{'file':<{width}} {'rows':>7} {'gold parsed':>12}  sha256")
    for s in summaries:
        print(f"{s['path']:<{width}} {s['rows']:>7} {100 * s['gold_parsed']:>11.2f}%  {s['sha256']}")
        if s["dropped"]:
            print(f"  {s['dropped']} of {s['source_rows']} source rows left out: their gold answer does not parse")
    return 0
