"""Tests of east_ds.grading: extraction, equivalence, keys, clustering, hostile input, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from east_ds.grading import answer_key, cluster_answers, extract_answer, grade, is_equivalent

FIXTURES = Path(__file__).parent / "fixtures"

# ---- extract_answer ----------------------------------------------------------------------------------------

EXTRACT = [
    (r"so the answer is $\boxed{5}$.", "5"),
    (r"\boxed{\frac{1}{2}} then later \boxed{\frac{3}{4}}", r"\frac{3}{4}"),
    (r"nested \boxed{\frac{\sqrt{3}}{2}} end", r"\frac{\sqrt{3}}{2}"),
    (r"The area is \boxed 5 square units", "5"),
    (r"\fbox{42}", "42"),
    (r"set $\boxed{\{1,2\}}$", r"\{1,2\}"),
    (r"$\boxed{1}, \boxed{2}$", "1, 2"),
    # boxes joined by "or" are alternatives: equal ones are one answer (graded below), different ones a set
    (r"either $\boxed{15\frac{39}{40}},$ or $\boxed{\frac{639}{40}}$ inches", r"15\frac{39}{40} or \frac{639}{40}"),
    ("She makes 9 * 2 = $18.\n#### 18", "18"),
    ("total\n#### 1,234", "1234"),
    ("Final Answer: The final answer is $28 \\%$. I hope it is correct.", "28 \\%"),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct.", "12,000,023"),
    ("The answer is 7.78.", "7.78"),
    ("The answer is: \\(x = 3\\)", "x = 3"),
    ("Answer: 17", "17"),
    ("# Answer\n\n204", "204"),
    ("so there are 12 sequences that work. I hope it is correct.", "12"),
    ("Janet sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18 dollars", "18"),
    ("no numbers here at all", None),
    ("", None),
    (r"unbalanced \boxed{1 + \frac{2}{3}", "3"),  # truncated box: falls back to the last number
    (r"\boxed{}", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ---- is_equivalent: (pred, gold, expected) --------------------------------------------------------------------

EQUIV = [
    # integers, thousands separators, decimals
    ("5", "5", True), ("-5", "-5", True), ("5", "-5", False), ("7,425,000", "7425000", True),
    ("1,000", "1000", True), ("1 000", "1000", True), ("1000.0", "1000", True), ("1,000.99", "1000.99", True),
    (r"10,\!080", "10080", True), (r"11,\! 111,\! 111,\! 100", "11111111100", True), ("14{,}916", "14916", True),
    ("32, 349", "32349", False), (".4", "0.4", True), (".0000672", "0.0000672", True), ("0.50", "0.5", True),
    ("2.5", "2.50", True), ("3.14", "3.15", False), ("007", "7", True),
    # fractions and mixed numbers
    ("0.5", r"\frac{1}{2}", True), ("1/2", r"\frac{1}{2}", True), (r"\dfrac{1}{2}", r"\frac12", True),
    (r"\tfrac{3}{4}", "0.75", True), (r"\cfrac{1}{3}", "1/3", True), ("10/9", r"\frac{10}{9}", True),
    ("-10/9", r"-\frac{10}{9}", True), (r"\frac{-10}{9}", r"-\frac{10}{9}", True), (r"\frac43", r"\frac{4}{3}", True),
    (r"\frac 59", r"\frac{5}{9}", True), (r"\frac9{19}", r"\frac{9}{19}", True), (r"\frac{270}7", r"\frac{270}{7}", True),
    (r"1\frac{4}{5}", r"\frac{9}{5}", True), (r"137 \frac{1}{2}", "137.5", True), (r"\frac{2}{4}", r"\frac{1}{2}", True),
    (r"\frac{1}{2}", r"\frac{1}{3}", False), ("2/3", "0.67", True), ("0.67", "2/3", False), ("0.6667", "2/3", True),
    ("0.0833333333333333", r"\frac{1}{12}", True), ("0.3333", r"\frac13", True), ("0.33", r"\frac13", False),
    (r"\frac{70}{9}", "7.78", True), (r"\frac{3}{2}", "1.5", True), ("3/0", "3", False),
    # percentages, money, units, degrees
    (r"28\%", "28", True), ("28", r"28\%", True), ("28%", r"28\%", True), ("0.28", r"28\%", True),
    ("28 percent", r"28\%", True), ("0.28", "28", False), ("28/100", "28", False),
    (r"\$32,\!348", "32348", True), (r"\$18.90", "18.9", True), ("$36", r"\$36", True),
    (r"5.4 \text{ cents}", "5.4", True), (r"864 \mbox{ inches}^2", "864", True), (r"15\mbox{ cm}^2", "15", True),
    ("125 miles", "125", True), (r"125\textnormal{ miles}", "125 miles", True), ("125 miles", "126", False),
    (r"90^\circ", "90", True), (r"90^{\circ}", "90", True), (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", True),
    ("45 degrees", r"45^\circ", True), (r"45^\circ", r"46^\circ", False),
    # radicals, pi, powers, scientific notation
    (r"3\sqrt{13}", r"\sqrt{117}", True), (r"\sqrt2", r"\sqrt{2}", True), (r"11\sqrt2", r"11\sqrt{2}", True),
    (r"\sqrt 2+\sqrt 5", r"\sqrt{2}+\sqrt{5}", True), (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    (r"\sqrt[3]{8}", "2", True), (r"\sqrt[3]{x}", "x^{1/3}", True), (r"2\sqrt{5}", r"\sqrt{20}", True),
    (r"\sqrt{3}", "1.732", True), (r"\sqrt{2}", r"\sqrt{3}", False), (r"\frac94\pi", r"\frac{9}{4}\pi", True),
    (r"\frac{\pi}{2}", r"\pi/2", True), ("2\\pi", r"\pi", False), (r"288 \pi", r"288\pi", True),
    (r"18+2\pi", r"2\pi+18", True), ("2^{10}", "1024", True), ("2^10", "1024", True), (r"10^{-3}", "0.001", True),
    (r"1.5 \times 10^{3}", "1500", True), (r"3 \cdot 10^2", "300", True), ("1e3", "1000", True), ("1.5e3", "1500", True), ("2E-2", "0.02", True), ("1e3", "100", False),
    (r"\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{15+2\sqrt{33}}", r"\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{2\sqrt{33}+15}", True),
    (r"\frac{1+\sqrt{5}}{2}", "2", False), (r"\frac{34}{16}+\frac{\sqrt{1358}}{16}", "4", False), ("1", r"1\sqrt{19}", False),
    ("3!", "6", True), (r"\binom{5}{2}", "10", True), (r"\dbinom{6}{3}", "20", True),
    # complex numbers
    ("6 - 5i", "6-5i", True), ("-5i+6", "6-5i", True), ("1+2i", "1-2i", False), ("i^2", "-1", True),
    # algebra
    ("p-q", "p - q", True), ("-q+p", "p-q", True), ("q-p", "p-q", False), (r"x^5 - x^4 + x^3 - x^2 + x - 1",
                                                                            "x^5-x^4+x^3-x^2+x-1", True),
    ("(a+5)(b+2)", "ab+2a+5b+10", True), ("(+5)(b+2)", "(a+5)(b+2)", False), ("2k+2", "2(k+1)", True),
    ("6r^2-4r-24", "2(3r^2-2r-12)", True), (r"\frac{x+2}{7}", r"\frac{x}{7}+\frac{2}{7}", True),
    ("x+2n+1", "x+1", False), (r"\tan^2(y)+1", r"\sec^2(y)", True), (r"\cot x", r"\frac{\cos x}{\sin x}", True),
    (r"2 \sin b \cos a", r"2\cos a\sin b", True), (r"\sin^2 x+\cos^2 x", "1", True), (r"\frac{\pi r}{h+r}", r"\frac{r\pi}{r+h}", True),
    ("3R^2", "3r^2", False), ("5r^5", "5 r^5", True), (r"\ln(e^2)", "2", True), (r"\log_2 8", "3", True),
    (r"\frac{11+9a}{20}", r"\frac{9a+11}{20}", True), ("x_1+x_2", "x_2+x_1", True), ("|x|", "|x|", True),
    # equations and relations
    ("x=5", "5", True), ("5", "x=5", True), ("k = \\frac{1}{3}", "1/3", True), ("x = 5+5+1 = 11", "11", True),
    ("y = 2x + 3", "2x+3", True), ("y=-2x", "y = -2x", True), ("y=2x+3", "y=2x+4", False),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0", True), ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0", True),
    ("10x-14y+22z+8=0", "5x - 7y + 11z + 4 = 0", True), ("5x-7y+11z+5=0", "5x - 7y + 11z + 4 = 0", False),
    ("x^2/16 + y^2/12 = 1/4", "x^2/4 + y^2/3 = 1", True), ("a+3z=0", "0", False), ("2x+z=1", "1", False),
    (r"x \approx 11", "11", True), (r"x \geq 5", "x >= 5", True), (r"5 \leq x", r"x \ge 5", True),
    ("x < 3", r"x \lt 3", True), ("x > 5", "x < 5", False), (r"x \neq 3", "x != 3", True), ("-x > -1", "x < 1", True),
    # intervals, unions, sets, lists, tuples
    ("[0,1)", "[0,1)", True), ("[0,1)", "[0,9)", False), ("[0,9)", "(0,9)", False), ("(3,4]", "(3,4)", False),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"(0.6, \frac{8}{3}]", True), (r"(-\infty, 0]", r"(-\infty,0]", True),
    (r"(2,\infty)", r"(2, \infty)", True), (r"(-\infty, 2) \cup (3, \infty)", r"(3,\infty)\cup(-\infty,2)", True),
    (r"(0,9) \cup (9,36)", r"(0,9) \cup (9,37)", False), (r"x \in [-2,7]", "[-2,7]", True), (r"k \in [-36,104]", "[-36,104]", True),
    (r"[-1, -\tfrac12) \cup (-\tfrac12, 0)", r"[-1, -\frac{1}{2}) \cup (-\frac{1}{2}, 0)", True),
    (r"\{1,2,3\}", r"\{3,2,1\}", True), (r"\{1,2\}", r"\{1,2,3\}", False), ("1,-2", "-2,1", True), ("3, 5, 7", "7,5,3", True),
    ("1, 2", "1, 3", False), (r"\{1\pm\sqrt{5},-2\}", r"\{-2, 1+\sqrt5, 1-\sqrt5\}", True),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", True), (r"3 \pm 2 \sqrt{2}", r"3 \pm 2\sqrt{2}", True),
    (r"3 \pm 2 \sqrt{2}", r"3 + 2\sqrt{2}", False), ("(6,31,-1)", "(6, 31, -1)", True), ("(1,2)", "(2,1)", False),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", True), ("(1,4.5)", r"(1,\frac{9}{2})", True),
    ("(-6, 10)", "(A, B) = (-6, 10)", True), (r"\emptyset", r"\varnothing", True), ("(7,6)", "(7, 6)", True),
    # matrices and vectors
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", r"\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac53 \end{pmatrix}", True),
    (r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", True),
    (r"\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", False),
    (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}", True),
    (r"(1, 2, 3)", r"\begin{pmatrix} 1 \\ 2 \\ 3 \end{pmatrix}", True),
    (r"\left[\begin{array}{cc}1 & 2 \\ 3 & 4\end{array}\right]", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \end{pmatrix}", False),
    # text answers and multiple choice
    (r"\text{Evelyn}", "Evelyn", True), ("evelyn", r"\text{Evelyn}", True), (r"\text{east}", "East", True),
    (r"\text{ellipse}", "parabola", False), (r"\text{(C)}", "C", True), ("(C)", r"\text{(C)}", True),
    (r"\textbf{(B)}", "B", True), ("(B)", "(C)", False), (r"\text{E}", "E", True), (r"\text{even}", "odd", False),
    (r"12\text{ and }13", "12, 13", True),
    # bases, wrappers
    ("52_8", "52", True), ("4210_{5}", "4210_5", True), ("1112122_3", "1112112_3", False),
    ("$9$", "9", True), (r"\(9\)", "9", True), (r"\[ 9 \]", "9", True), (r"\boxed{9}", "9", True),
    ("$$9$$", "9", True), (r"\left( \frac{1}{3} \right)", "1/3", True), (r"\boxed{\frac{1}{3}}", "1/3", True),
    ("9.", "9", True), (r"\infty", r"\infty", True), (r"-\infty", r"\infty", False),
    # none / empty
    ("", "5", False), ("5", "", False),
]


@pytest.mark.parametrize("pred,gold,expected", EQUIV)
def test_is_equivalent(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_is_equivalent_none():
    assert is_equivalent(None, "5") is False
    assert is_equivalent("5", None) is False


# ---- grade ---------------------------------------------------------------------------------------------------

GRADE = [
    (r"Thus $x-p=\boxed{2-2p}$.", "2-2p", True),
    (r"the answer is $\boxed{\frac{14}{3}}$", r"\frac{14}{3}", True),
    (r"... $\boxed{90^\circ}.$", r"90^\circ", True),
    (r"... between $\boxed{12\text{ and }13}$", r"12\text{ and }13", True),
    (r"Thus, the answer is $x \in \boxed{(2,12) \cup (12,102)}$", r"\boxed{(2, 12) \cup (12, 102)}", True),
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", True),
    ("The answer is 1,000 dollars", "1000", True),
    ("Final Answer: The final answer is $(0, 1)$. I hope it is correct.", "[0,1)", False),
    ("I do not know.", "5", False),
    ("", "5", False),
    (r"so $\boxed{5}$", r"We find that \boxed{5}", True),  # gold given as a solution
    (r"$\boxed{1}\boxed{2}$", r"\boxed{1,2}", True),
]


@pytest.mark.parametrize("response,gold,expected", GRADE)
def test_grade(response, gold, expected):
    assert grade(response, gold) is expected


def _rows(name):
    return [json.loads(x) for x in (FIXTURES / name).read_text().splitlines() if x.strip()]


def test_math500_solutions_grade_correct_against_their_answer():
    rows = _rows("math500_sample.jsonl")
    assert len(rows) == 60
    missed = [r["answer"] for r in rows if not grade(r["solution"], r["answer"])]
    assert missed == []


def test_gsm8k_gold_convention():
    solution = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    gold = solution.rsplit("#### ", 1)[-1].replace(",", "")
    assert gold == "1018" and grade(solution, gold)


# ---- answer_key and cluster_answers ---------------------------------------------------------------------------

@pytest.mark.parametrize("group", [
    ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", r"$\frac{1}{2}$", r"\boxed{0.50}"],
    ["1000", "1,000", r"1{,}000", "1000.0", r"\$1,\!000"],
    [r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", r"\sqrt{3}/3"],
    ["(1,2)", r"\left(1, 2\right)", "( 1 , 2 )"],
    [r"\{1,2\}", r"\{2,1\}"],
    ["x=5", "5", "y = 5"],
    [r"\text{Evelyn}", "evelyn"],
    ["2x+2", "2(x+1)"],
])
def test_answer_key_shared_by_equal_answers(group):
    assert len({answer_key(a) for a in group}) == 1


def test_answer_key_distinguishes_and_handles_none():
    assert answer_key(None) == "none"
    assert answer_key("") == "none"
    keys = [answer_key(a) for a in ["1/2", "1/3", "(1,2)", "(2,1)", r"\sqrt2", r"\sqrt3", "x+1", "x+2"]]
    assert len(set(keys)) == len(keys)


def test_cluster_answers_equivalent_and_exact():
    answers = ["1/2", "0.5", None, r"\frac12", "3", r"\boxed{3}", r"28\%", "0.28", None]
    assert cluster_answers(answers) == [0, 0, 1, 0, 2, 2, 3, 3, 1]
    assert cluster_answers(answers, mode="exact") == [0, 1, 2, 3, 4, 4, 5, 6, 2]
    assert cluster_answers([]) == []
    with pytest.raises(ValueError):
        cluster_answers(["1"], mode="fuzzy")


def test_cluster_ids_in_order_of_first_appearance():
    assert cluster_answers(["7", "8", "7", "9", "8"]) == [0, 1, 0, 2, 1]


# ---- hostile input: each call must return (a bool) well within a generous bound -------------------------------

HOSTILE = [
    "2^{2^{2^{2^{2^{2}}}}}", "2^(10^10)", "9^9^9^9", "10^{10^{10}}", "1000000!", "(10^100)!", "x^{100000}",
    "\\sqrt[1000000]{2}", "{" * 50000 + "1" + "}" * 50000, "(" * 50000 + "1" + ")" * 50000,
    "\\boxed{" * 50000 + "1", "\\frac{" * 5000, "1" * 1_000_000, "\x00" * 1000 + "5", "$" * 100000,
    "\\sin(" * 2000 + "x" + ")" * 2000, "1+" * 5000 + "1", "\\sqrt{" * 3000 + "2" + "}" * 3000,
    "a" * 2_000_000, "\\boxed{" + "9" * 2_000_000 + "}", "#### " + "1," * 100000,
    "The answer is " + "(" * 100000, "x" + "^x" * 10000, "\\begin{pmatrix}" + "1&" * 20000 + "\\end{pmatrix}",
    "10^{9999}", "1/" * 3000 + "1", "\\frac{1}{0}", "0^{-1}", "\\sin(10^{1000})", "(-1)^{1/3}",
    # the shapes of issue 10: joined boxes, 'or', assignments, doubled escapes, chains, matrix sums, set algebra
    "\\boxed{1} or " * 5000 + "\\boxed{2}", "\\boxed{x} and " * 3000, "x=1, " * 300, "\\\\frac" * 20000,
    "1 < x < " * 1000, "\\begin{pmatrix}1\\end{pmatrix}+" * 1000, " or " * 10000, "\\{1\\}\\cup" * 2000,
    "\\{x \\mid " * 1000, "(1,2) or " * 200, "m=1,n=3; " * 150, "2 \\le |w| \\le " * 300, "2or" * 3000,
    "$" + "\\boxed{1}$ $" * 3000, "\\boxed{1} and " * 20 + "Final Answer: " * 2000,
    # the shapes of issue 26: program syntax, mixed numbers, special tokens, misspelt boxes, phrases, set operations
    "2**" * 3000 + "2", "(" * 3000 + "sqrt(" * 2000 + "1", "x = " + "-1 + sqrt(3) " * 2000, "1\\frac12" * 500,
    "<|im_end|>" * 50000, "<|im_start|>" * 50000 + "5", "\\beginboxed{" * 20000 + "1", "答案是" * 20000 + "5",
    "x<1 \\cup " * 1000, "{1,2} \\setminus " * 500, "1,2;" * 5000, "|" * 10000 + "x", "xy^" * 3000 + "2",
    "e^{i\\pi} = " * 500 + "-1", "\\cos(x) = " * 300 + "1", "5" + "\\" * 10000, "\\sqrt{}" * 5000,
    "10" + "weeks" * 20000, "1 \\approx " * 3000 + "1", "réponse est " * 5000,
]

# Pairs of long symbolic lists: set comparison must not go quadratic in sympy comparisons.
HOSTILE_PAIRS = [
    (", ".join(f"x+{i}" for i in range(150)), ", ".join(f"x+{i}" for i in range(140))),
    (", ".join(f"x+{i}" for i in range(150)), ", ".join(f"x+{i}" for i in reversed(range(150)))),
    ("\\{" + ", ".join(f"x+{i}" for i in range(150)) + "\\}\\cup\\{1\\}", "\\{1\\}"),
    (" or ".join(f"x+{i}" for i in range(120)), ", ".join(f"x+{i}" for i in range(120))),
]


def _bounded(fn, seconds=10.0):
    """Run fn in a thread; fail if it has not returned after `seconds` (a hang), re-raise its errors."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "call did not return in time"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize("idx", range(len(HOSTILE)))
def test_hostile_inputs_return_quickly(idx):
    text = HOSTILE[idx]
    assert isinstance(_bounded(lambda: grade(text, "5")), bool)
    assert isinstance(_bounded(lambda: is_equivalent(text[:5000], "2")), bool)
    assert isinstance(_bounded(lambda: answer_key(text[:5000])), str)
    _bounded(lambda: extract_answer(text))


@pytest.mark.parametrize("idx", range(len(HOSTILE_PAIRS)))
def test_hostile_pairs_return_quickly(idx):
    a, b = HOSTILE_PAIRS[idx]
    assert isinstance(_bounded(lambda: is_equivalent(a, b)), bool)
    assert isinstance(_bounded(lambda: cluster_answers([a, b, a[::-1]])), list)


def test_nothing_is_executed():
    # Would run code under eval/sympify; here it is just text that is not equal to anything.
    evil = "__import__('os').system('touch /tmp/east_pwned')"
    assert grade(f"\\boxed{{{evil}}}", "0") is False
    assert is_equivalent(evil, evil.replace("touch", "rm")) is False
    assert not Path("/tmp/east_pwned").exists()


def test_threads_agree():
    cases = [(p, g) for p, g, _ in EQUIV[:60]]
    expected = [is_equivalent(p, g) for p, g in cases]
    results: list = [None] * 4

    def work(i):
        results[i] = [is_equivalent(p, g) for p, g in cases]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r == expected for r in results)


# ---- CLI -------------------------------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "east_ds.grading.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_cli_jsonl_roundtrip(tmp_path):
    f = tmp_path / "roll.jsonl"
    rows = [{"response": r"so \boxed{\frac12}", "gold": "0.5", "id": 1}, {"response": "#### 7", "gold": "8", "id": 2}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _cli(f)
    assert p.returncode == 0, p.stderr
    assert "accuracy 0.5000" in p.stdout
    out = [json.loads(x) for x in (tmp_path / "roll.graded.jsonl").read_text().splitlines()]
    assert [(r["id"], r["answer"], r["correct"]) for r in out] == [(1, r"\frac12", True), (2, "7", False)]


def test_cli_parquet_roundtrip(tmp_path):
    import pandas as pd

    f = tmp_path / "roll.parquet"
    pd.DataFrame({"response": [r"\boxed{3}", "no idea"], "gold": ["3", "4"]}).to_parquet(f)
    from east_ds.grading.cli import main

    assert main([str(f)]) == 0
    df = pd.read_parquet(tmp_path / "roll.graded.parquet")
    assert df["correct"].tolist() == [True, False]
    assert df["answer"][0] == "3" and pd.isna(df["answer"][1])


@pytest.mark.parametrize("content,needle", [
    ('{"response": "x"}\n', "missing column(s) ['gold']"),
    ('{"response": "x", "gold": "1"}\n{"response": "y"}\n', "row 2: missing key 'gold'"),
    ('{"response": "x", "gold": "1"}\n{not json\n', "line 2 is not valid JSON"),
    ("", "the table is empty"),
    ('[1, 2]\n', "line 1 is not a JSON object"),
])
def test_cli_bad_input_exit_2(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    p = _cli(f)
    assert p.returncode == 2
    assert needle in p.stderr and str(f) in p.stderr


def test_cli_missing_parquet_column_and_file(tmp_path, capsys):
    import pandas as pd

    from east_ds.grading.cli import main

    f = tmp_path / "x.parquet"
    pd.DataFrame({"response": ["1"]}).to_parquet(f)
    assert main([str(f)]) == 2
    assert "missing column(s) ['gold']" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.jsonl")]) == 2


def test_add_parser_registers_grade():
    import argparse

    from east_ds.grading.cli import add_parser, run

    top = argparse.ArgumentParser()
    add_parser(top.add_subparsers(dest="cmd"))
    args = top.parse_args(["grade", "f.jsonl"])
    assert args.cmd == "grade" and args.file == "f.jsonl" and callable(run)


@pytest.mark.parametrize("pred, gold, expected", [
    ("yes", "Yes", True),
    ("Even", "\\text{even}", True),
    ("no", "yes", False),
])
def test_prose_answers_ignore_case(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@pytest.mark.parametrize("response, gold", [
    ("so \\boxed{\\frac{1}{2}}", "0.5"),
    ("The answer is 7.", "8"),
    ("no answer here at all", "3"),
    ("#### 1,234", "Total: 617 * 2 = 1234\n#### 1234"),  # a gold given as a full solution
])
def test_grade_answer_is_grade_on_an_extracted_answer(response, gold):
    from east_ds.grading import grade_answer

    assert grade_answer(extract_answer(response), gold) is grade(response, gold)


def test_grade_answer_none_is_wrong():
    from east_ds.grading import grade_answer

    assert grade_answer(None, "1") is False and grade_answer("1", "") is False
