"""Score math-verify and east on the public graders' test cases of tests/test_grading_public_cases.py.

    .venv/bin/python benchmarks/public_cases_vs_math_verify.py [-v]

math-verify is called the way its own tests call it: parse() on gold and prediction, then verify(gold, pred).
A bare answer (no `$`, `\\(`, `\\[` or `\\boxed`) is wrapped in `$...$` first so its LaTeX extractor sees it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_grading_public_cases import CASES, CONTESTED, _row, check  # noqa: E402


def _wrap(s: str) -> str:
    return s if any(t in s for t in ("$", "\\(", "\\[", "\\boxed")) else f"${s}$"


def math_verify_says(kind: str, pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        p = parse(pred if kind == "grade" else _wrap(pred))
        g = parse(_wrap(gold))
        return bool(verify(g, p))
    except Exception:  # noqa: BLE001 - a crash counts as "not equivalent"
        return False


def main() -> None:
    verbose = "-v" in sys.argv
    for name, table in (("public cases", CASES), ("contested", CONTESTED)):
        mv = east = 0
        for kind, pred, gold, expected, source in map(_row, table):
            m = math_verify_says(kind, pred, gold)
            e = check(kind, pred, gold)
            mv += m is expected
            east += e is expected
            if verbose and (m is not expected or e is not expected):
                print(f"  expected={expected} east={e} math-verify={m} [{source}] {pred[-70:]!r} | {gold[-50:]!r}")
        n = len(table)
        print(f"{name}: {n} cases; east {east}/{n} = {100 * east / n:.1f}%; math-verify {mv}/{n} = {100 * mv / n:.1f}%")


if __name__ == "__main__":
    main()
