"""Stage outputs are tables on disk: read JSONL or Parquet, write Parquet atomically, check columns.

Every phase of a run reads and writes tables a person can open with pandas. Writes go to a temporary file in
the same directory and are renamed into place, so a reader never sees half a file and a crash loses nothing
that was already written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd


class TableError(ValueError):
    """A table that cannot be used: missing file or column, empty, unreadable row. The message names it."""


def read_table(path: str | Path, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read a `.jsonl`/`.json` or `.parquet` file; raise TableError naming the file, row or column at fault."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise TableError(f"{p}: not a readable Parquet file ({e})") from None
    elif suffix in (".jsonl", ".json"):
        rows = []
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TableError(f"{p}: line {lineno} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise TableError(f"{p}: line {lineno} is not a JSON object")
                rows.append(row)
        df = pd.DataFrame(rows)
    else:
        raise TableError(f"{p}: unsupported table format {suffix!r} (use .jsonl or .parquet)")
    if len(df) == 0:
        raise TableError(f"{p}: the table is empty")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(f"{p}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to `path` (Parquet or JSONL by suffix) atomically: temp file in the same directory, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        if p.suffix.lower() == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_json(obj, path: str | Path) -> Path:
    """Write a JSON document atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, p)
    return p


def append_jsonl(obj: dict, path: str | Path) -> None:
    """Append one JSON line (metrics logs); a torn last line is skipped by `read_jsonl`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=str) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a metrics log written by `append_jsonl`, skipping a torn final line from a crash."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
