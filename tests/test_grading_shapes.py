"""The broader table: one block per answer shape, written from the conventions public graders document and
test (values are our own), plus property tests that generate the shapes.

kind "eq": is_equivalent(pred, gold); "grade": grade(response, gold); "x": extract_answer(response) == gold.
Convention sources: MV huggingface/Math-Verify tests (test_all, test_numina_cases, test_open_thoughts,
test_boxed); QW QwenLM/Qwen2.5-Math evaluation/grader.py; HM hendrycks/math is_equiv (also lm-evaluation-harness
hendrycks_math); MN lm-evaluation-harness minerva_math normalize_final_answer (also verl math_dapo); PRM
openai/prm800k grader (normalisation docs). The principles are in east_ds/grading/__init__.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from east_ds.grading import extract_answer, grade, is_equivalent

E, G, X = "eq", "grade", "x"

SHAPES = {
    "whole response is only an answer (MV, QW)": [
        (G, ".25", "0.25", True), (G, "3 400", "3400", True), (G, r"\dfrac{5}{4}", "5/4", True),
        (G, "-12", "-12", True), (G, "$y = 7$", "7", True), (G, r"\(\frac{2}{9}\)", r"\frac29", True),
        (X, ".25", ".25", True), (X, r"\dfrac{5}{4}", r"\dfrac{5}{4}", True), (X, "8 cm", "8 cm", True),
        (G, "I could not finish: maybe 3 or so", "3", True), (G, "no answer here", "0", False),
    ],
    "where the answer is: phrases and choices (MV, QW)": [
        (G, "The answer is C.", "C", True), (G, "I believe the answer is D because the others fail.", "D", True),
        (G, "The correct option is (A).", "A", True), (G, "The answer is 14, since 2 times 7 is 14.", "14", True),
        (G, "The answer is 14, since 2 times 7 is 14.", "7", False),
    ],
    "named assignment against a bare value (MV, QW)": [
        (E, "AB=7, CD=3", "7, 3", True), (E, "a_1 = 4, a_2 = -2", "4, -2", True), (E, "P:Q = 2:9", "2:9", True),
        (E, r"\frac{BE}{EC} = 3", "3", True), (E, "|MN| = 5", "5", True), (E, "g(3) = 10", "10", True),
        (E, r"\angle ABC = 40", "40", True), (E, r"m\angle B = 40^\circ", "40", True),
        (E, "s=1,t=4; s=3,t=8", "(1,4),(3,8)", True), (E, "s=1,t=4; s=3,t=8", "(4,1),(8,3)", False),
        (E, "(u, v) = (2, 6)", "(2, 6)", True), (E, "(u, v) = (2, 6)", "(6, 2)", False),
        (E, "u = 2, v = 6", "v = 6, u = 2", True), (E, "u = 2, v = 6", "u = 6, v = 2", False),
        (E, "x = 3, x = -4", "-4, 3", True), (E, "9", "5 = 2a + b", False), (E, "k = 5", "5", True), (E, "5", "k = 5", True),
        (E, "1 + 2 = 3", "3", True), (E, "a = b = 12", "12", True),
    ],
    "several answers joined by words or boxes (MV)": [
        (G, r"\boxed{4} and \boxed{-1}", r"\boxed{-1, 4}", True), (G, r"$\boxed{5}$ or $\boxed{7}$", "5, 7", True),
        (E, "3, 8 or 12", "12, 8, 3", True), (E, "(1,4) or (4,1)", "(4,1), (1,4)", True),
        (G, r"\boxed{2} apples and \boxed{9} pears", "2, 9", True), (G, r"\boxed{2} so so so so \boxed{9}", "2, 9", False),
        (G, r"$p = \boxed{3}$ and $q = \boxed{5}$", "3, 5", True), (E, r"6 \text{ and } 10", "6, 10", True),
        (G, r"\boxed{1}\quad\text{and}\quad\boxed{8}", "1, 8", True), (E, "4 or 4.0", "4", True),
        (E, r"\frac{5}{2} or 2.5", "2.5", True), (E, "3 or 5", "3", False), (E, "two", "2", True),
        (G, r"$\boxed{6}$. Later we see $\boxed{6}$.", "6", True),
        (G, r"Step: $\boxed{40}$. So she pays 40 + 15 = 55 dollars. Final Answer: The final answer is $55$.", "55", True),
    ],
    "inequalities against intervals (MV)": [
        (E, "-3 < s < 4", "(-3, 4)", True), (E, r"-3 \le s < 4", "[-3, 4)", True), (E, "-3 < s < 4", "[-3, 4)", False),
        (E, r"1 \le |z| \le 2", r"[-2,-1] \cup [1,2]", True), (E, "|z| < 2", "(-2, 2)", True),
        (E, "y > 5", r"(5, \infty)", True), (E, r"y \geq 5", r"[5, \infty)", True), (E, "y > 5", r"[5, \infty)", False),
        (E, r"y \le -1", r"(-\infty, -1]", True), (E, r"q < 0 \text{ or } q > 3", r"(-\infty,0)\cup(3,\infty)", True),
        (E, "0 < g(x) < 2", "(0, 2)", True), (E, r"w \in [1, 5]", r"1 \le w \le 5", True),
        (E, r"\{t \mid t > 1\}", r"(1, \infty)", True), (E, r"\mathbb{R}", r"(-\infty, \infty)", True),
        (E, "x > 2", "x < 2", False), (E, r"7 \geq x", r"x \leq 7", True),
    ],
    "set algebra and arithmetic to evaluate (MV, QW)": [
        (E, r"\{2,4\} \cup \{9\}", r"\{2,4,9\}", True), (E, r"\{2,4\} \cup \{4,9\}", r"\{2,4,9\}", True),
        (E, r"\{1,2,3\} \cap \{2,3,5\}", r"\{2,3\}", True), (E, r"\{2,4\} \cup \{9\}", r"\{2,9\}", False),
        (E, r"\begin{pmatrix}2&0\\1&1\end{pmatrix}+\begin{pmatrix}1&1\\0&2\end{pmatrix}", r"\begin{pmatrix}3&1\\1&3\end{pmatrix}", True),
        (E, r"3\begin{pmatrix}1\\-2\end{pmatrix}", r"\begin{pmatrix}3\\-6\end{pmatrix}", True),
        (E, r"\begin{pmatrix}0&1\\1&0\end{pmatrix}\begin{pmatrix}5\\7\end{pmatrix}", r"\begin{pmatrix}7\\5\end{pmatrix}", True),
        (E, r"\begin{pmatrix}0&1\\1&0\end{pmatrix}\begin{pmatrix}5\\7\end{pmatrix}", r"\begin{pmatrix}5\\7\end{pmatrix}", False),
        (E, "2^3 + 1", "9", True), (E, r"x = 4 + 5 = 9", "9", True), (E, r"\frac{6}{4}", "1.5", True),
    ],
    "escaping and spacing (MV, MN, PRM)": [
        (E, r"\\frac{3}{8}", "3/8", True), (E, r"\\left( 4, 5 \\right)", "(4,5)", True), (E, r"\\sqrt{7}", r"\sqrt7", True),
        (E, r"\\$25", "25", True), (E, r"30\\%", "30", True), (E, r"\\{1,3\\}", r"\{3,1\}", True),
        (E, r"\frac{1}{\!6}", "1/6", True), (E, r"2\,\sqrt{3}", r"2\sqrt3", True), (E, r"\;7\;", "7", True),
        (E, r"\quad 7", "7", True), (E, r"12\,500", "12500", True), (E, r"12{,}500", "12500", True),
        (E, r"12,\!500", "12500", True), (E, "5 cm, 9 cm", "5, 9", True), (E, r"5\text{ cm}, 9\text{ cm}", "9, 5", True),
        (E, r"5^\mathrm{th}", "5", True), (E, r"90^{\circ}", "90", True), (E, r"\text{(C)}", "C", True),
        (E, r"\\frac{3}{8}", "3/7", False), (E, "5 cm, 9 cm", "5, 8", False),
    ],
    "order and multiplicity (MV, HM, QW)": [
        (E, "(2, 5)", "(5, 2)", False), (E, r"\{2, 5\}", r"\{5, 2\}", True), (E, "2, 5", "5, 2", True),
        (E, "[2, 5]", "[2, 5)", False), (E, "(3,1),(3,1),(2,2)", "(2,2),(3,1)", True), (E, r"\pm 3", "3, -3", True),
        (E, r"\begin{pmatrix}1\\2\end{pmatrix}", "(1, 2)", True), (E, r"\begin{pmatrix}1\\2\end{pmatrix}", "(2, 1)", False),
    ],
}
# east's own principle 3 where public graders differ: hendrycks and Qwen drop any left side of at most two
# characters (`2x = 6` is 6) and math-verify takes the last side of a prediction's equation. Tested, reported
# apart, not counted in the agreement rate.
EAST_ONLY = [(E, "2x = 6", "6", False), (E, "x^2 = 9", "9", False), (E, "3y = 12", "12", False)]

CASES = [pytest.param(k, p, g, exp, id=f"{shape[:20]}-{i}") for shape, rows in SHAPES.items()
         for i, (k, p, g, exp) in enumerate(rows)]


def check(kind: str, pred: str, gold: str) -> bool:
    if kind == X:
        return extract_answer(pred) == gold
    return grade(pred, gold) if kind == G else is_equivalent(pred, gold)


@pytest.mark.parametrize("kind,pred,gold,expected", CASES)
def test_shape_case(kind, pred, gold, expected):
    assert check(kind, pred, gold) is expected


@pytest.mark.parametrize("kind,pred,gold,expected", EAST_ONLY)
def test_an_equation_is_not_its_right_side(kind, pred, gold, expected):
    assert check(kind, pred, gold) is expected


# ---- property tests: the shapes, generated ----------------------------------------------------------------------

ints = st.integers(-999, 999)
pos = st.integers(1, 400)


@settings(max_examples=60, deadline=None)
@given(ints, pos)
def test_fraction_spellings_agree(p, q):
    frac = rf"{'-' if p < 0 else ''}\dfrac{{{abs(p)}}}{{{q}}}"
    assert is_equivalent(frac, f"{p}/{q}")
    assert is_equivalent(frac.replace("\\", "\\\\"), f"{p}/{q}")  # JSON-escaped twice
    assert is_equivalent(f"x = {frac}", f"{p}/{q}")  # a named value is its value
    assert grade(frac, f"{p}/{q}")  # a response that is only the answer
    assert not is_equivalent(frac, f"{p + 1}/{q}")


@settings(max_examples=60, deadline=None)
@given(ints, ints)
def test_tuple_order_counts_and_set_order_does_not(a, b):
    assert is_equivalent(f"({a}, {b})", f"({b}, {a})") is (a == b)
    assert is_equivalent(rf"\{{{a}, {b}\}}", rf"\{{{b}, {a}\}}")
    assert is_equivalent(f"s = {a}, t = {b}", f"({a}, {b})")
    if a != b:  # a repeated box, and `a or a`, are the one answer a
        assert grade(rf"\boxed{{{a}}} and \boxed{{{b}}}", f"{b}, {a}")
        assert is_equivalent(f"{a} or {b}", f"{b}, {a}")
    else:
        assert grade(rf"\boxed{{{a}}} and \boxed{{{b}}}", f"{a}")
        assert is_equivalent(f"{a} or {b}", f"{a}")


@settings(max_examples=60, deadline=None)
@given(ints, pos, st.booleans(), st.booleans())
def test_inequalities_are_intervals(lo, width, closed_lo, closed_hi):
    hi = lo + width
    op1, op2 = ("\\le" if closed_lo else "<"), ("\\le" if closed_hi else "<")
    interval = f"{'[' if closed_lo else '('}{lo}, {hi}{']' if closed_hi else ')'}"
    wrong = f"{'(' if closed_lo else '['}{lo}, {hi}{']' if closed_hi else ')'}"
    assert is_equivalent(f"{lo} {op1} t {op2} {hi}", interval)
    assert not is_equivalent(f"{lo} {op1} t {op2} {hi}", wrong)
    assert is_equivalent(f"t > {lo}", rf"({lo}, \infty)")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 99), min_size=2, max_size=5, unique=True), st.sampled_from(["cm", "m", "kg"]))
def test_units_and_words_inside_lists(xs, unit):
    gold = ", ".join(map(str, xs))
    assert is_equivalent(", ".join(f"{x} {unit}" for x in reversed(xs)), gold)
    assert is_equivalent(", ".join(map(str, xs[:-1])) + f" and {xs[-1]}", gold)
    assert is_equivalent(", ".join(map(str, xs[:-1])) + f" or {xs[-1]}", gold)
    assert not is_equivalent(", ".join(map(str, xs[:-1])), gold)
