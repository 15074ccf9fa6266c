"""Answer grading for EAST: extract a final answer, compare it with the gold, cluster one question's answers.

Steps 2-3 of the EAST iteration (docs/method.md section 1): every response's final answer is compared with the gold by
mathematical equivalence, and the n answers of a question are clustered into equivalence classes.

Reads response and gold strings; writes nothing itself (`east-ds grade`, in `cli`, writes a graded table). Pure
Python and sympy, so it sits below every stage that reads an answer: data (gold answers parse when questions
load), rollout (greedy evaluation) and weighting. Public names: extract_answer, grade, grade_answer, is_equivalent,
answer_key, cluster_answers (this module), and the modules extract, structure, compare, latex_math, matrix_expr, cli.

Safety: model output is hostile text. Nothing here evaluates it: `latex_math` is a bounded hand-written parser
that builds sympy objects directly (no eval / sympify / parse_expr / parse_latex), and every step has a size cap,
so each call returns quickly for any input (no signal.alarm: safe in threads and worker processes).

Speed: most answers are integers, decimals or simple fractions; those are decided by `fractions.Fraction`
without importing sympy. sympy is imported lazily, only for radicals, pi, symbols and the like.

Principles (applied the same way to the prediction and the gold, in `extract`, `structure` and `compare`):
1. Where the answer is. The last `\boxed{}`; several boxes separated only by punctuation, spacing, "and"/"or",
   one counted word (`\boxed{3} cats and \boxed{4} dogs`) or a label (`x = \boxed{2} or x = \boxed{3}`) are one
   answer; a repeated box counts once. A "Final Answer" sentence written a few sentences after the last box
   wins over it. Then `####`, "the answer is", the last math span, a text that is nothing but an answer
   (`.75`, `2 500`, `\dfrac{7}{3}`), the expression in program syntax around the last number (`-1 + sqrt(3)`),
   and last the last number. The phrase may be in another language ("答案是", "la réponse est", "Ответ:"); an
   end-of-text token (`<|im_end|>`, `</s>`) ends the response; a misspelt box (`\beginboxed{}`) is a box.
2. Spelling does not count. `\dfrac`/`\frac`/`a/b`/decimals; spacing commands (`\!`, `\,`, `\;`, `\quad`);
   text that was JSON-escaped twice (`\\frac`); `\left`/`\right`; units, degrees, currency, ordinals, thousands
   separators (`1,000`, `1\,000`, `1{,}000`), also inside lists (`3 cm, 4 cm`); number words up to twenty.
   Decoration after the answer: a unit glued to it (`10weeks`), a stray trailing `\`, the rounding after an exact
   value (`\frac{\sqrt3}{3} \approx 0.577` is the exact value); an empty `\sqrt{}` takes what follows; an
   answer phrase before a bare answer ("answer is 0.25 + 3") is not part of it.
3. A named value is its value. `label = value` equals `value` when the label only names a quantity: a variable,
   `y_1`, `PQ`, `f(2)`, `|PQ|`, `A:B`, `\frac{AM}{MB}`, `(p, q)`. `2x = 6`, `x^2 = 4`, `a + b = 5` are equations
   (compared as equations, up to a nonzero factor), and `7 = 11a + c` is not `11a + c`. In a chain
   `a = b = c`, and in `constant = constant` (a computation: `e^{i\pi} = -1`), the value is the last side, as
   it is after an operator that computes a number (`\lim_{x \to 0} .. = 1`, `\det A = 3`); `2 = x` is 2. A
   function or operator applied to something never names a value: `\cos(x) = \frac{42}{59}` is an equation in x
   (it is not `\sin(x) = \frac{42}{59}`); against a bare value it is the value asked for under its name.
4. Order. Tuples `(a, b)`, intervals and matrices are ordered; sets `\{..\}`, bare lists `a, b`, `\pm` and
   alternatives are unordered, and a set counts each member once. Assignments keep the order written:
   `x = 2, y = 3` is the tuple (2, 3), compared name by name with another list of the same names. The same name
   assigned several times (`x = 2, x = -3`) is the set of its values; groups separated by `;` that each assign
   every name (`m=1,n=3; m=2,n=5`) are a set of tuples.
5. "or" and "and". `A or B`: one answer in two spellings when A equals B (`15\frac{39}{40}` or `\frac{639}{40}`),
   else the set {A, B} (a union when they are inequalities). "and" between values is a list separator.
6. A set is a set however written. An interval, a union of intervals, a relation that bounds one variable
   (`t > 3` is (3, oo), `-1 < t < 2` is (-1, 2), `2 <= |w| <= 3` is [-3, -2] U [2, 3]), `x \in S` and
   `\{x \mid cond\}` compare as the set they describe; `\{1,2\} \cup \{5\}` and `\cap` of finite sets are
   evaluated, and so is `\setminus`; bare braces in a set operation are a set (`{1,2} \cup {3}`). Relations or
   intervals joined by `\cup` or "or" are a union (`x < -1 \cup x > 2`). Groups separated by `;` of equal
   length are tuples (`1,2;3,4`). A relation against a relation compares as a relation (`5 \geq x` is `x \leq 5`).
7. Arithmetic is evaluated, never executed: `2 + 3`, matrix sums, scalar multiples and products written out
   (`matrix_expr`), all through the bounded parser.
8. Numbers. Exact when both are exact; a decimal with at least 4 places equals an exact value it rounds to, and
   a value equals a gold decimal it rounds to at the gold's places; a percent equals its value and its /100.
   An integer before a proper fraction of integers is a mixed number (`2\frac58` is 21/8, not 5/4).
9. Program syntax is mathematics in other spelling: `sqrt(3)`, `*`, and `**` as a power (`2**(1/4)` is the fourth
   root of 2, never 2 * 1/4), read by the same bounded parser.
10. Prose. When the mathematics finds no equality and both answers read as prose (`odd $n$`, `\text{no solution}`),
   equal text is equal, whatever its case (for words of four letters or more), spacing, braces or `\text`.
   A bare choice letter equals the same letter written with its content (`C` and `C. x = 42`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from east_ds.grading.extract import MAX_ANSWER_CHARS, extract_answer, normalize
from east_ds.grading.compare import (_CACHE, _equation_eq, _leaf, _resolve, _struct_eq, _text_form, choice_eq,
                                     prose_eq)
from east_ds.grading.structure import _SIMPLE_LHS, _split_top, _structure

__all__ = ["extract_answer", "is_equivalent", "grade", "answer_key", "cluster_answers"]

# ---- public API ------------------------------------------------------------------------------------------------

_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")  # a word or words: never parsed as a product of symbols


@lru_cache(maxsize=_CACHE)
def _norm(answer: str) -> str:
    return normalize(answer)


def _safe(fn, *args, default):
    """Run fn, treating any internal failure on hostile input as 'not equal' rather than a crash."""
    try:
        return fn(*args)
    except (ValueError, TypeError, ArithmeticError, RecursionError, MemoryError, AttributeError, KeyError):
        return default


@lru_cache(maxsize=_CACHE)
def is_equivalent(pred: str, gold: str) -> bool:
    """True when the answer `pred` is mathematically equal to the answer `gold`.

    Both are bare answers or wrapped in `$..$`, `\\(..\\)`, `\\boxed{}`. Numbers compare exactly (Fraction),
    other expressions via sympy (structure, then numeric values at a few points); tuples are ordered, sets
    and bare lists unordered; `x = 5` compares as 5. Answers over 1,000 characters compare as strings.
    """
    if pred is None or gold is None:
        return False
    if pred.strip() == gold.strip():
        return bool(pred.strip())
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return _norm(pred[: 4 * MAX_ANSWER_CHARS]) == _norm(gold[: 4 * MAX_ANSWER_CHARS])
    a, b = _norm(pred), _norm(gold)
    if not a or not b:
        return False
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    if _WORDS.fullmatch(a) and _WORDS.fullmatch(b) and " or " not in a + b:  # prose ("Yes", "even"): any case
        return _text_form(a) == _text_form(b)
    choice = choice_eq(a, b)
    if choice is not None:
        return choice
    if _safe(lambda: _struct_eq(_structure(a), _structure(b)), default=False):
        return True
    if prose_eq(a, b):  # neither side is mathematics the parser reads: equal text is equal
        return True
    # `y = -x/2 + 3/4` against `2x + 4y - 3 = 0`: both whole equations, equal up to a factor
    pa, pb = _split_top(a, ("=",)), _split_top(b, ("=",))
    if len(pa) == 2 and len(pb) == 2 and (_SIMPLE_LHS.fullmatch(pa[0].strip()) or _SIMPLE_LHS.fullmatch(pb[0].strip())):
        return _safe(lambda: _equation_eq(("eq", pa[0], pa[1]), ("eq", pb[0], pb[1])), default=False)
    return False


_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def _gold_answer(gold: str) -> str | None:
    """A gold given as a full solution (with \\boxed or `####`) is reduced to its answer; else used as is."""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold or len(_PROSE.findall(gold)) >= 8:
        return extract_answer(gold)
    return gold


def grade_answer(answer: str | None, gold: str) -> bool:
    """Compare an already extracted final answer with `gold` (a bare answer or a solution); None is wrong."""
    g = _gold_answer(gold) if gold else None
    if answer is None or g is None:
        return False
    return is_equivalent(answer, g)


def grade(response: str, gold: str) -> bool:
    """Extract the final answer of `response` and compare it with `gold` (a bare answer or a solution)."""
    return grade_answer(extract_answer(response) if response else None, gold)


def _key(t: tuple) -> str:
    t = _resolve(t)
    kind = t[0]
    if kind == "value":
        from east_ds.grading.latex_math import fingerprint

        return fingerprint(t[1])
    if kind == "leaf":
        leaf = _leaf(t[1])
        if leaf.kind == "num":
            return f"q:{leaf.value.numerator}/{leaf.value.denominator}"
        if leaf.kind == "text":
            return "t:" + str(leaf.value)
        from east_ds.grading.latex_math import fingerprint

        return fingerprint(leaf.value)
    if kind == "seq":
        return t[1] + ",".join(map(_key, t[3])) + t[2]
    if kind in ("list", "union"):
        return kind + "{" + ",".join(sorted(map(_key, t[1]))) + "}"
    if kind == "matrix":
        return "M[" + ";".join(",".join(map(_key, r)) for r in t[1]) + "]"
    return kind + ":" + "|".join(x.replace(" ", "") for x in t[1:])


@lru_cache(maxsize=_CACHE)
def answer_key(answer: str | None) -> str:
    """A canonical key: equal answers (`1/2`, `0.5`, `\\frac{1}{2}`) share it. None or empty -> "none".

    Different keys do not prove inequality (28% and 0.28, equations up to a factor): `cluster_answers`
    merges distinct keys with `is_equivalent`.
    """
    if answer is None:
        return "none"
    s = _norm(answer[: 4 * MAX_ANSWER_CHARS])
    if not s:
        return "none"
    if len(answer) > MAX_ANSWER_CHARS:
        return "s:" + s.replace(" ", "")
    return _safe(lambda: _key(_structure(s)), default="s:" + s.replace(" ", ""))


def cluster_answers(answers: list[str | None], mode: str = "equivalent") -> list[int]:
    """Cluster ids 0..K-1 (in order of first appearance) for the n answers of one question.

    mode "exact": normalised-string match (the reference code's behaviour); "equivalent": same answer_key,
    then distinct keys merged pairwise with is_equivalent. None answers share one cluster of their own.
    """
    if mode not in ("exact", "equivalent"):
        raise ValueError(f"unknown cluster mode {mode!r} (expected 'exact' or 'equivalent')")
    if mode == "exact":
        keys = ["none" if a is None or not _norm(a) else "s:" + _norm(a).replace(" ", "") for a in answers]
    else:
        keys = [answer_key(a) for a in answers]
    rep: dict[str, str | None] = {}
    for k, a in zip(keys, answers):
        rep.setdefault(k, a)
    parent = {k: k for k in rep}
    if mode == "equivalent":
        distinct = [k for k in rep if k != "none"]
        for i, ki in enumerate(distinct):
            for kj in distinct[:i]:
                if parent[ki] == ki and (is_equivalent(rep[ki], rep[kj]) or is_equivalent(rep[kj], rep[ki])):
                    parent[ki] = parent[kj]
                    break
    ids: dict[str, int] = {}
    out = []
    for k in keys:
        root = parent[k]
        out.append(ids.setdefault(root, len(ids)))
    return out


def clear_caches() -> None:
    """Empty the memo caches (benchmarks use this so that repeated strings do not flatter the timing)."""
    from east_ds.grading.structure import is_constant

    for f in (_structure, _leaf, _norm, is_equivalent, answer_key, is_constant):
        f.cache_clear()
