"""Score east and math-verify on every grading table: the public graders' cases (both sets), the broader shapes
table and the generated table (MATH golds rewritten into equivalent and different forms).

    .venv/bin/python benchmarks/public_cases_vs_math_verify.py [-v] [--golds N] [--data DIR]

--golds N: the generated table is built from N golds sampled from DIR (default data/, where `east-ds data
math500` and `east-ds data math` write math500_test.jsonl and math_train.jsonl) when DIR holds both files
(default 1000), else from the 300-gold fixture in tests/fixtures.
math-verify is called the way its own tests call it: parse() on gold and prediction, then verify(gold, pred).
A bare answer (no `$`, `\\(`, `\\[` or `\\boxed`) is wrapped in `$...$` first so its LaTeX extractor sees it.
The slowest single east call is printed too (the issue's bound: no case over 2 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from grading_variants import rows, sample_golds  # noqa: E402
from test_grading_public_cases import CASES, CONTESTED, _row  # noqa: E402
from test_grading_public_cases import check as check_public  # noqa: E402
from test_grading_public_cases_2 import CASES as CASES_2  # noqa: E402
from test_grading_public_cases_2 import UNSCORED as UNSCORED_2  # noqa: E402
from test_grading_forms import FALSE_EQUAL, ROUNDED_PREDICTION  # noqa: E402
from test_grading_shapes import EAST_ONLY, SHAPES  # noqa: E402
from test_grading_shapes import check as check_shape  # noqa: E402

DATA = ROOT / "data"


def _wrap(s: str) -> str:
    return s if any(t in s for t in ("$", "\\(", "\\[", "\\boxed")) else f"${s}$"


def math_verify_says(kind: str, pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        p = parse(pred if kind in ("grade", "x") else _wrap(pred))
        g = parse(_wrap(gold))
        return bool(verify(g, p))
    except Exception:  # noqa: BLE001 - a crash counts as "not equivalent"
        return False


def score(name: str, table: list[tuple], check, verbose: bool) -> None:
    mv = east = 0
    slowest = 0.0
    for kind, pred, gold, expected, note in table:
        m = math_verify_says(kind, pred, gold)
        t0 = time.perf_counter()
        e = check(kind, pred, gold)
        slowest = max(slowest, time.perf_counter() - t0)
        mv += m is expected
        east += e is expected
        if verbose and (m is not expected or e is not expected):
            print(f"  expected={expected} east={e} math-verify={m} [{note}] {pred[-70:]!r} | {gold[-50:]!r}")
    n = len(table)
    print(f"{name}: {n} cases; east {east}/{n} = {100 * east / n:.1f}%; math-verify {mv}/{n} = {100 * mv / n:.1f}%;"
          f" slowest east call {slowest:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", action="store_true", help="print every case either grader gets wrong")
    ap.add_argument("--golds", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=DATA, help="directory with math500_test.jsonl, math_train.jsonl")
    args = ap.parse_args()
    import math_verify  # noqa: F401 - import cost outside the timings

    import east_ds.grading.latex_math  # noqa: F401

    score("public cases", [_row(c) for c in CASES], check_public, args.v)
    score("contested", [_row(c) for c in CONTESTED], check_public, args.v)
    score("public cases, round 2 (issue 26)", CASES_2, check_public, args.v)
    score("round 2, unscored (dataset conventions)", UNSCORED_2, check_public, args.v)
    never = [("eq", p, g, False, "never equal") for a, b in FALSE_EQUAL for p, g in ((a, b), (b, a))]
    never += [("eq", p, g, False, "rounded prediction") for p, g in ROUNDED_PREDICTION]
    score("pairs that must never grade equal (issue 26)", never, check_public, args.v)
    shapes = [(k, p, g, exp, shape) for shape, rs in SHAPES.items() for k, p, g, exp in rs]
    score("shapes table", shapes, check_shape, args.v)
    score("east-only principle (not counted)", [(*r, "east principle 3") for r in EAST_ONLY], check_shape, args.v)
    if all((args.data / f).is_file() for f in ("math500_test.jsonl", "math_train.jsonl")):
        golds, src = sample_golds(args.golds, data=args.data), f"{args.golds} golds from {args.data}"
    else:
        fixture = ROOT / "tests" / "fixtures" / "math_golds_sample.jsonl"
        golds, src = [json.loads(x)["gold"] for x in fixture.read_text().splitlines() if x.strip()], str(fixture)
    print(f"generated table from {src}")
    score("generated table", [(k, p, g, exp, s) for k, p, g, exp, s in rows(golds)], check_shape, args.v)


if __name__ == "__main__":
    main()
