"""Self-grading check: every MATH500 solution must grade correct against its own `answer` field.

Also checks GSM8K: each solution's `#### N` line against the gold extracted from the same field
(commas removed). Prints the rate and every miss.

    python benchmarks/check_math500.py [MATH500.jsonl] [GSM8K.jsonl]

The files default to data/math500_test.jsonl and data/gsm8k_test.jsonl, which `east-ds data math500` and
`east-ds data gsm8k` write.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from east_ds.grading import extract_answer, grade

DATA = Path(__file__).resolve().parents[1] / "data"  # what `east-ds data math500` and `east-ds data gsm8k` write


def main() -> int:
    math_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA / "math500_test.jsonl"
    gsm_path = Path(sys.argv[2]) if len(sys.argv) > 2 else DATA / "gsm8k_test.jsonl"
    rows = [json.loads(line) for line in math_path.read_text().splitlines() if line.strip()]
    t0 = time.perf_counter()
    misses = [r for r in rows if not grade(r["solution"], r["answer"])]
    dt = time.perf_counter() - t0
    print(f"MATH500: {len(rows) - len(misses)}/{len(rows)} self-graded correct ({dt:.2f} s)")
    for r in misses:
        print(f"  MISS {r['unique_id']}: answer={r['answer']!r} extracted={extract_answer(r['solution'])!r}")
    gsm = [json.loads(line) for line in gsm_path.read_text().splitlines() if line.strip()]
    gmiss = []
    for r in gsm:
        gold = r["answer"].rsplit("#### ", 1)[-1].replace(",", "").strip()
        if not grade(r["answer"], gold):
            gmiss.append((gold, extract_answer(r["answer"])))
    print(f"GSM8K test: {len(gsm) - len(gmiss)}/{len(gsm)} self-graded correct")
    for g, e in gmiss[:20]:
        print(f"  MISS gold={g!r} extracted={e!r}")
    return 0 if not misses and not gmiss else 1


if __name__ == "__main__":
    raise SystemExit(main())
