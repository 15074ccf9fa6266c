"""The generated table: MATH golds (tests/fixtures/math_golds_sample.jsonl, 150 MATH500 answers + 150 boxed
answers of MATH train solutions, sampled by tests/grading_variants.py) rewritten into equivalent and
non-equivalent forms; every row must grade as labelled. One test per shape, so a failure names the shape and
lists its rows."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from grading_variants import rows

from east_ds.grading import grade, is_equivalent

GOLDS = [json.loads(x)["gold"] for x in (Path(__file__).parent / "fixtures" / "math_golds_sample.jsonl").read_text()
         .splitlines() if x.strip()]
ROWS = rows(GOLDS, seed=0)
BY_SHAPE: dict[tuple[str, bool], list] = defaultdict(list)
for _r in ROWS:
    BY_SHAPE[(_r[4], _r[3])].append(_r)


def test_the_table_covers_every_shape_with_both_verdicts():
    shapes = {s for s, _ in BY_SHAPE}
    assert len(GOLDS) == 300 and len(ROWS) > 3000
    assert {"doubled backslashes", "named assignment", "boxes joined by and", "inequality for an interval",
            "whole response is the answer", "'or' list", "changed digit", "swapped tuple", "wrong interval end",
            "list member dropped", "'or' of different alternatives", "mixed number", "reversed assignment",
            "approximation after the value", "glued unit", "answer phrase in Chinese", "end-of-text token",
            "program syntax", "reversed assignment, changed digit", "answer phrase in Chinese, changed digit"} <= shapes


@pytest.mark.parametrize("shape,expected", sorted(BY_SHAPE), ids=lambda v: str(v))
def test_generated_rows_grade_as_labelled(shape, expected):
    wrong = [(p, g) for kind, p, g, exp, _ in BY_SHAPE[(shape, expected)]
             if (grade(p, g) if kind == "grade" else is_equivalent(p, g)) is not exp]
    assert not wrong, f"{len(wrong)} of {len(BY_SHAPE[(shape, expected)])} rows wrong, e.g. {wrong[:5]}"
