"""Round 2 of grading that generalises (issue 26): seven answer families, each a table of generated shapes with
the near misses that must stay unequal, and a family of pairs built to make the grader say "equal" wrongly.

kind "eq": is_equivalent(pred, gold); "grade": grade(response, gold); "x": extract_answer(response) == gold.
The rules are the principles in east_ds/grading/__init__.py (9 and 10 are this round's).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from east_ds.grading import answer_key, cluster_answers, extract_answer, grade, is_equivalent

E, G, X = "eq", "grade", "x"
TRIG = ["sin", "cos", "tan", "cot", "sec", "csc"]
small = st.integers(1, 60)
nonsquare = st.integers(2, 99).filter(lambda n: math.isqrt(n) ** 2 != n)


def check(kind: str, pred: str, gold: str) -> bool:
    if kind == X:
        return extract_answer(pred) == gold
    return grade(pred, gold) if kind == G else is_equivalent(pred, gold)


# ---- 1. answers in program syntax ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(-30, 30), nonsquare, st.integers(2, 30))
def test_program_syntax_reads_like_latex(a, b, c):
    assert is_equivalent(f"{a} + sqrt({b})", rf"{a} + \sqrt{{{b}}}")
    assert is_equivalent(f"({abs(a) + 1}*sqrt({b}))/{c}", rf"\frac{{{abs(a) + 1}\sqrt{{{b}}}}}{{{c}}}")
    assert grade(f"Running the code gives x = {a} + sqrt({b}).", rf"{a}+\sqrt{{{b}}}")
    assert extract_answer(f"So the value is ({a} - sqrt({b}))/{c}") == f"({a} - sqrt({b}))/{c}"
    # near misses: another radicand, another denominator, the last number alone
    assert not is_equivalent(f"{a} + sqrt({b})", rf"{a} + \sqrt{{{b + 1}}}")
    assert not is_equivalent(f"({abs(a) + 1}*sqrt({b}))/{c}", rf"\frac{{{abs(a) + 1}\sqrt{{{b}}}}}{{{c + 1}}}")
    assert not grade(f"Running the code gives x = {a} + sqrt({b}).", str(b))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(1, 5), st.integers(2, 6))
def test_double_star_is_a_power_never_a_product(base, p, q):
    power = float(base) ** (p / q)
    assert is_equivalent(f"{base}**({p}/{q})", f"{base}^{{{p}/{q}}}")
    assert is_equivalent(f"{base}**{p}", str(base**p))
    assert grade(f"The result: {base}**({p}/{q})", f"{base}^{{\\frac{{{p}}}{{{q}}}}}")
    if abs(power - base * p / q) > 1e-6:  # `**` read as `*` would make these equal
        assert not is_equivalent(f"{base}**({p}/{q})", str(Fraction(base * p, q)))


# ---- 2. mixed numbers --------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 99), st.integers(2, 9), st.data())
def test_mixed_numbers_without_braces(whole, den, data):
    num = data.draw(st.integers(1, den - 1))
    value = whole + Fraction(num, den)
    for spelling in (rf"{whole}\frac{num}{den}", rf"{whole}\frac{{{num}}}{{{den}}}", rf"{whole}\dfrac{num}{den}",
                     rf"{whole} \frac{{{num}}}{{{den}}}"):
        assert is_equivalent(spelling, f"{value.numerator}/{value.denominator}"), spelling
        assert not is_equivalent(spelling, f"{(whole * Fraction(num, den)).numerator}/{(whole * Fraction(num, den)).denominator}")
    assert is_equivalent(rf"-{whole}\frac{num}{den}", f"-{value.numerator}/{value.denominator}")
    assert grade(rf"She ran $\boxed{{{whole}\frac{num}{den}}}$ miles.", f"{value.numerator}/{value.denominator}")
    assert not is_equivalent(rf"{whole}\frac{num}{den}", f"{value.numerator + 1}/{value.denominator}")
    if value.denominator in (2, 4, 5, 8):
        assert is_equivalent(rf"{whole}\frac{num}{den}", str(float(value)))


def test_an_integer_after_a_power_or_root_is_not_a_mixed_number():
    assert is_equivalent(r"x^2\frac12", r"\frac{x^2}{2}")
    assert is_equivalent(r"\sqrt2\frac12", r"\frac{\sqrt2}{2}")
    assert not is_equivalent(r"\sqrt2\frac12", r"\sqrt{2.5}")


# ---- 3. equations -----------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(-99, 99), st.sampled_from(["x", "y", "k", "n"]))
def test_reversed_assignment_is_its_value(v, name):
    assert is_equivalent(f"{v} = {name}", str(v))
    assert is_equivalent(f"{v}={name}", f"{name} = {v}")
    assert not is_equivalent(f"{v} = {name}", str(v + 1))
    assert not is_equivalent(f"{v} = 2{name}", str(v))  # an equation, not a value


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50), st.integers(1, 50))
def test_a_constant_computation_is_its_value(a, b):
    assert is_equivalent(f"{a} + {b} = {a + b}", str(a + b))
    assert is_equivalent(rf"\det(M) = {a}", str(a))
    assert is_equivalent(rf"\lim_{{x \to 0}} \frac{{\sin({a}x)}}{{x}} = {a}", str(a))
    assert not is_equivalent(rf"\det(M) = {a}", str(a + 1))
    assert not is_equivalent(rf"\lim_{{x \to 0}} \frac{{\sin({a}x)}}{{x}} = {a}", str(a + b))


@pytest.mark.parametrize("pred,gold,expected", [
    (r"e^{i\pi} = -1", "-1", True), (r"e^{i\pi} = -1", "1", False), (r"\sin(\frac{\pi}{6}) = \frac12", "0.5", True),
    (r"\cos 0 = 1", "1", True), (r"\det\begin{pmatrix}1&2\\3&4\end{pmatrix} = -2", "-2", True),
    (r"\lim_{n \to \infty} (1+1/n)^n = e", "e", True), (r"\lim_{n \to \infty} (1+1/n)^n = e", r"\pi", False),
    ("2x = 6", "6", False), ("7 = 11a + c", "11a + c", False), ("2 = x", "x = 2", True),
])
def test_constant_sides(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(TRIG), st.sampled_from(TRIG), st.integers(1, 99), st.integers(2, 99),
       st.sampled_from(["x", r"\theta", "A"]))
def test_equations_with_different_left_sides_differ(f, g, p, q, var):
    c = rf"\frac{{{p}}}{{{q}}}"
    arg = f"({var})" if var == "x" else f" {var}"
    left, right = rf"\{f}{arg} = {c}", rf"\{g}{arg} = {c}"
    assert is_equivalent(left, right) is (f == g)
    assert is_equivalent(left, rf"\{f}({var}) = {p}/{q}")  # the same equation, spelled differently
    value = Fraction(p, q)
    assert is_equivalent(left, f"{value.numerator}/{value.denominator}")  # the value asked for, under its name
    assert not is_equivalent(left, f"{value.numerator + 1}/{value.denominator}")
    assert not is_equivalent(left, rf"\{f}({var}) = \frac{{{p + 1}}}{{{q}}}")


# ---- 4. trailing decoration -------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(nonsquare, st.integers(2, 9))
def test_an_approximation_after_the_exact_value(b, d):
    approx = f"{math.sqrt(b) / d:.3f}"
    exact = rf"\frac{{\sqrt{{{b}}}}}{{{d}}}"
    assert is_equivalent(rf"{exact} \approx {approx}", exact)
    assert is_equivalent(exact, rf"{exact} \approx {approx}")
    assert is_equivalent(rf"{exact} ≈ {approx}", exact)
    assert not is_equivalent(rf"{exact} \approx {approx}", rf"\frac{{\sqrt{{{b + 1}}}}}{{{d}}}")
    assert not is_equivalent(approx, exact)  # three places are a rounding, not the value
    assert is_equivalent(rf"x \approx {approx}", approx)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 5000), st.sampled_from(["weeks", "cm", "dollars", "hours", "km"]),
       st.sampled_from(["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<｜end▁of▁sentence｜>"]))
def test_trailing_decoration(v, unit, token):
    assert is_equivalent(f"{v}\\", str(v)) and not is_equivalent(f"{v}\\", str(v + 1))
    assert is_equivalent(f"{v}{unit}", str(v)) and not is_equivalent(f"{v}{unit}", str(v + 1))
    assert grade(f"The answer is {v}.{token}", str(v))
    assert grade(rf"So \boxed{{{v}}}{token}", str(v))
    # what follows the end of the text is another turn, not this answer
    assert grade(f"The total is {v}.{token}\nuser: and what is {v + 7} minus 2?", str(v))
    assert not grade(f"The total is {v}.{token}\nuser: and what is {v + 7} minus 2?", str(v + 5))


def test_a_function_name_is_not_a_glued_unit():
    assert not is_equivalent("4sinh", "4") and not is_equivalent("2pi", "2")


# ---- 5. lenient reading of malformed or informal answers -------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(nonsquare, st.integers(-20, 20), st.integers(1, 20))
def test_lenient_forms(b, lo, width):
    hi = lo + width
    assert is_equivalent(rf"\sqrt{{}}{{{b}}}", rf"\sqrt{{{b}}}") and not is_equivalent(rf"\sqrt{{}}{{{b}}}", rf"\sqrt{{{b + 1}}}")
    assert grade(rf"so the answer is \beginboxed{{{lo}}}", str(lo))
    union = rf"(-\infty, {lo}) \cup ({hi}, \infty)"
    for spelling in (rf"x < {lo} \cup x > {hi}", rf"x < {lo} \text{{ or }} x > {hi}",
                     rf"x \in (-\infty, {lo}) \text{{ or }} x \in ({hi}, \infty)"):
        assert is_equivalent(spelling, union), spelling
        assert not is_equivalent(spelling, rf"(-\infty, {lo}] \cup ({hi}, \infty)"), spelling
        assert not is_equivalent(spelling, rf"(-\infty, {lo}) \cup ({hi + 1}, \infty)"), spelling


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-9, 9), min_size=4, max_size=4, unique=True))
def test_several_solution_sets(v):
    a, b, c, d = v
    gold = f"({a},{b}),({c},{d})"
    for spelling in (f"({a},{b}); ({c},{d})", rf"({a},{b}) \quad \text{{and}} \quad ({c},{d})",
                     f"x={a}, y={b}; x={c}, y={d}", rf"\{{{a},{b}\}}; \{{{c},{d}\}}"):
        assert is_equivalent(spelling, gold if "\\{" not in spelling else rf"\{{{a},{b}\}}, \{{{c},{d}\}}"), spelling
    assert not is_equivalent(f"({a},{b}); ({c},{d})", f"({a},{b}),({d},{c})")
    assert not is_equivalent(rf"\{{{a},{b}\}}; \{{{c},{d}\}}", rf"\{{{a},{b}\}}, \{{{c},{d + 20}\}}")


# ---- 6. prose answers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred,gold,expected", [
    ("odd $n$", r"\text{odd } n", True), (r"\text{all odd } n", "All odd n", True), ("even n", "odd n", False),
    (r"n \text{ is odd}", r"\text{n is odd}", True), (r"n \text{ is odd}", r"n \text{ is even}", False),
    (r"\text{no solution}", "No solution", True), (r"\text{no solution}", r"\text{one solution}", False),
    ("ABC + 1", "abc + 1", False),  # short letter runs are variables, and case counts for them
    (r"f(x) = x^2 \text{ for } x > 0", r"f(x)=x^2\ \text{for}\ x>0", True),
])
def test_prose_answers(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


# ---- 7. golds written as a sentence, answer phrases in other languages ------------------------------------------

PHRASES = ["所以，答案是 {v}。", "答案：${v}$", "因此答案为 {v}", "La réponse est {v}.", "La respuesta es {v}.",
           "Die Antwort ist {v}.", "Ответ: {v}", "정답은 {v}", "答えは {v} です"]


@settings(max_examples=40, deadline=None)
@given(st.integers(-500, 500), st.sampled_from(PHRASES), st.integers(1, 99))
def test_answer_phrases_in_other_languages(v, phrase, noise):
    response = f"先计算 {noise} + {noise} = {2 * noise}。" + phrase.format(v=v)
    assert grade(response, str(v))
    assert not grade(response, str(v + 1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 99), st.integers(1, 99))
def test_a_gold_written_as_a_sentence(a, b):
    assert grade(rf"\boxed{{{a + b}}}", f"answer is {a} + {b}")
    assert grade(rf"\boxed{{{a + b}}}", f"The answer is {a + b}.")
    assert is_equivalent(str(a + b), f"Answer: {a} + {b}")
    assert not grade(rf"\boxed{{{a + b + 1}}}", f"answer is {a} + {b}")


# ---- the grader must not say "equal" here -----------------------------------------------------------------------

FALSE_EQUAL = [
    (r"\cos(x)=\frac{42}{59}", r"\sin(x)=\frac{42}{59}"), (r"\tan\theta = \frac34", r"\cot\theta = \frac34"),
    (r"\sin^2 x = \frac14", r"\cos^2 x = \frac14"), (r"\log_2 x = 3", r"\log_3 x = 3"),
    ("y = 2x + 3", "x = 2y + 3"), ("x + 1", "y + 1"), ("2x + 3", "2x + 4"), (r"\sqrt{2}", r"\sqrt{3}"),
    (r"a^2 + b^2", r"a^2 - b^2"), (r"\frac{\pi}{3}", r"\frac{\pi}{6}"), ("x^2 + 1", "x^3 + 1"),
    ("[1, 4]", "[1, 4)"), ("(1, 4]", "[1, 4]"), (r"(-\infty, 2)", r"(-\infty, 2]"), (r"(2, \infty)", r"(3, \infty)"),
    (r"x < 2", r"x \le 2"), ("2**(1/4)", "1/2"), ("2**3", "6"), (r"1\frac12", "0.5"), (r"2\frac58", "5/4"),
    (r"\frac{22}{7}", r"\pi"), (r"\frac{\sqrt3}{3} \approx 0.577", r"\frac{\sqrt2}{3}"),
    ("2=x", "3"), ("2x = 6", "6"), ("x = 2", "x = 3"), (r"\text{odd}", r"\text{even}"), ("C", "D. x = 42"),
    (r"\sin(x) = \frac12", r"\frac{\pi}{6}"), (r"e^{i\pi} = -1", "1"), ("10weeks", "11"), ("185\\", "18"),
    (r"\{1, 2\}; \{3\}", r"\{1, 2, 3\}"), ("(1, 2); (3, 4)", "(1, 2), (4, 3)"),
]


@pytest.mark.parametrize("a,b", FALSE_EQUAL)
def test_never_a_false_equal(a, b):
    assert not is_equivalent(a, b) and not is_equivalent(b, a)
    assert cluster_answers([a, b]) == [0, 1]


# A prediction rounded to a few places is not the exact gold (the other way round, an exact prediction equals a
# gold written as a decimal it rounds to: principle 8).
ROUNDED_PREDICTION = [("3.14", r"\pi"), (r"x \approx 3.14", r"\pi"), ("0.33", r"\frac13"), ("1.41", r"\sqrt2"),
                      ("0.577", r"\frac{\sqrt3}{3}"), ("2.7", "e")]


@pytest.mark.parametrize("pred,gold", ROUNDED_PREDICTION)
def test_a_rounded_prediction_is_not_the_exact_gold(pred, gold):
    assert not is_equivalent(pred, gold)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(TRIG + ["ln", "log", "exp", "sqrt"]), st.sampled_from(TRIG + ["ln", "log", "exp", "sqrt"]),
       st.integers(2, 9), st.integers(-9, 9), st.sampled_from(["x", "t"]))
def test_expressions_differing_in_one_symbol(f, g, a, b, var):
    assume(f != g and {f, g} != {"ln", "log"})  # `\log` without a base is read as the natural log
    one, other = rf"{a}\{f}({var}) + {b}", rf"{a}\{g}({var}) + {b}"
    assert not is_equivalent(one, other)
    assert not is_equivalent(one, one.replace(var, "y"))
    assert not is_equivalent(one, rf"{a + 1}\{f}({var}) + {b}")
    assert answer_key(one) != answer_key(other)
