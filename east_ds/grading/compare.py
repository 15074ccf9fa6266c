"""Comparison of answers: leaves (numbers, expressions, words) and the structures `structure.py` builds.

`struct_eq(pred, gold)` decides equality under the principles listed in `east_ds.grading`'s docstring.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from east_ds.grading.structure import _VAR, _has_var, _structure, is_constant

_CACHE = 8192


class Leaf(NamedTuple):
    """One scalar answer. kind: num (exact Fraction), expr (sympy), text (normalised words)."""

    kind: str
    value: object
    pct: bool = False  # written with a percent sign
    decimals: int | None = None  # fractional digits when written as a decimal literal, e.g. 0.15 -> 2


# ---- leaves ------------------------------------------------------------------------------------------------

_INT_FRAC = re.compile(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?")  # \frac{1}{2}, \frac12 (one digit each unbraced)
_MIXED = re.compile(r"(-?)(\d+)\s*\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))")  # 2\frac{5}{8}, 2\frac58
_DECIMAL = re.compile(r"[-+]?(\d*)\.?(\d*)")
_SLASH = re.compile(r"(-?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")
_CHOICE = re.compile(r"\(([A-Ea-e])\)|([A-E])\)?")
_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d{1,12})\}")  # 0.1\overline{6} = 1/6
_BASE = re.compile(r"(\d+)_\{?(\d+)\}?")
_SCI = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE]([-+]?\d{1,4})")
_PLAIN_MIXED = re.compile(r"([-+]?)(\d+) (\d+)/(\d+)")  # 4 4/9


_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def _fast_rational(t: str) -> tuple[Fraction, int | None] | None:
    """Exact value of an integer, decimal, integer fraction or mixed number written without spaces."""
    if len(t) > 60:
        return None
    m = _REPEATING.fullmatch(t)
    if m:
        head, rep = m.group(3), m.group(4)
        v = int(m.group(2) or 0) + Fraction(int(head or 0), 10 ** len(head)) + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(head))
        return (-v if m.group(1) else v), None
    m = _DECIMAL.fullmatch(t)
    if m and (m.group(1) or m.group(2)):
        return Fraction(t), (len(m.group(2)) if "." in t and m.group(2) else None)
    m = _INT_FRAC.fullmatch(t)
    if m and (t.count("{") in (0, 2)) and (("{" in t) or (len(m.group(2)) == 1 and len(m.group(3)) == 1)):
        if int(m.group(3)) == 0:
            return None
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return (-v if m.group(1) else v), None
    m = _MIXED.fullmatch(t)
    if m and int(m.group(5) or m.group(6)) != 0:
        v = int(m.group(2)) + Fraction(int(m.group(3) or m.group(4)), int(m.group(5) or m.group(6)))
        return (-v if m.group(1) else v), None
    m = _SLASH.fullmatch(t)
    if m and Fraction(m.group(2)) != 0:
        return Fraction(m.group(1)) / Fraction(m.group(2)), None
    m = _SCI.fullmatch(t)
    if m and abs(int(m.group(1))) <= 400:  # 1e3, 1.5E-2
        return Fraction(t), None
    return None


def _text_form(s: str) -> str:
    """Prose answers compare case- and space-insensitively, without braces or \\text."""
    s = re.sub(r"\\(text|textbf|mathrm|mbox)\b", "", s)
    return re.sub(r"[\s{}]", "", s).lower()


@lru_cache(maxsize=_CACHE)
def _leaf(s: str) -> Leaf:
    s = s.strip()
    pct = s.endswith("%")
    if pct:
        s = s[:-1].strip()
    t = s.replace(" ", "")
    r = _fast_rational(t)
    m = _PLAIN_MIXED.fullmatch(s)
    if m:  # a mixed number needs a proper fraction: `11 7/6`, `4 4/0` are no number at all
        num, den = int(m.group(3)), int(m.group(4))
        if not num < den:
            return Leaf("text", _text_form(s), pct)
        v = int(m.group(2)) + Fraction(num, den)
        return Leaf("num", -v if m.group(1) == "-" else v, pct)
    if r is None and " " in s:
        m = _MIXED.fullmatch(s.replace("\\frac ", "\\frac"))
        r = _fast_rational(m.group(0).replace(" ", "")) if m else None
    if r is not None:
        return Leaf("num", r[0], pct, r[1])
    if t.lower() in _NUMBER_WORDS:
        return Leaf("num", Fraction(_NUMBER_WORDS[t.lower()]), pct)
    m = _CHOICE.fullmatch(t)
    if m:
        return Leaf("text", (m.group(1) or m.group(2)).upper())
    m = _BASE.fullmatch(t)
    if m:  # 52_8: a numeral in base 8; compared digit for digit
        return Leaf("text", m.group(1))
    from east_ds.grading.latex_math import MathParseError, parse_math

    try:
        e = parse_math(s)
    except MathParseError:
        return Leaf("text", _text_form(s), pct)
    if e.is_Rational:
        return Leaf("num", Fraction(int(e.p), int(e.q)), pct)
    return Leaf("expr", e, pct)


def _round_eq(value: complex, gold: Fraction, k: int) -> bool:
    """value rounded to the k decimals the gold was written with equals the gold (gold 7.78, value 70/9)."""
    return abs(value.imag) < 1e-12 and abs(round(value.real, k) - float(gold)) < 0.5 * 10.0 ** (-k) * 1e-3 + 1e-12


def _leaf_eq(a: Leaf, b: Leaf) -> bool:
    """pred leaf a against gold leaf b."""
    if a.kind == "num" and b.kind == "num":
        x, y = a.value, b.value
        if x == y:
            return True
        if (a.pct or b.pct) and (x == y * 100 or x * 100 == y):
            return True
        if b.decimals and (a.decimals is None or (b.decimals >= 2 and a.decimals > b.decimals)) and _round_eq(
                complex(float(x)), y, b.decimals):
            return True
        # a rounded decimal against an exact fraction: 0.0833333333333 for 1/12, 0.3333 for 1/3
        return a.decimals is not None and a.decimals >= 4 and _round_eq(complex(float(y)), x, a.decimals)
    if a.kind == "text" or b.kind == "text":
        if a.kind == b.kind:
            return a.value == b.value
        other = b if a.kind == "text" else a
        return other.kind == "num" and other.value.denominator == 1 and str(other.value) == (
            a.value if a.kind == "text" else b.value)
    import sympy

    from east_ds.grading.latex_math import numeric, sympy_equal

    ea = a.value if a.kind == "expr" else sympy.Rational(a.value.numerator, a.value.denominator)
    eb = b.value if b.kind == "expr" else sympy.Rational(b.value.numerator, b.value.denominator)
    if sympy_equal(ea, eb):
        return True
    if b.kind == "num" and b.decimals:
        v = numeric(ea)
        return v is not None and _round_eq(v, b.value, b.decimals)
    if a.kind == "num" and a.decimals is not None and a.decimals >= 4:
        # a rounded decimal against an exact value: 0.3333 for 1/3, 2.6667 for 8/3
        v = numeric(eb)
        return v is not None and _round_eq(v, a.value, a.decimals)
    return False


# ---- whole answers that are not mathematics: prose and labelled choices ----------------------------------------

_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_STYLE = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathit|mathbf|mbox|operatorname)\b|[\s{}$~]")
_BARE_CHOICE = re.compile(r"\(?([A-E])\)?")
_LED_CHOICE = re.compile(r"\(?([A-E])[.)]\s+[^\s+\-*/^=]")  # `C. x = 42`, `(B) 17`: a choice and its content


def prose_eq(a: str, b: str) -> bool:
    """Two normalised answers that both read as prose (`odd $n$`, `all primes p \\ge 5`) are equal when their text
    is, whatever the case, spacing, braces or `\\text`. Only a fallback once the mathematics found no equality."""
    if not all(any(w.lower() not in _NOT_PROSE for w in _PROSE.findall(s)) for s in (a, b)):
        return False
    # words of four letters or more are words in any case; shorter runs may be products of variables (`ABC`)
    key_a, key_b = (_LONG_WORD.sub(lambda m: m.group(0).lower(), _STYLE.sub("", s)).rstrip(".") for s in (a, b))
    return key_a == key_b


_LONG_WORD = re.compile(r"[A-Za-z]{4,}")


_NOT_PROSE = frozenset({"sqrt", "frac", "sin", "cos", "tan", "log", "exp", "infty", "cdot", "times", "left",
                        "right", "text", "mathrm", "pmatrix", "begin", "end"})


def choice_eq(a: str, b: str) -> bool | None:
    """A bare choice letter against a choice written with its content (`C` against `C. x = 42`): the letters
    decide. None when the pair is not of that shape."""
    for x, y in ((a, b), (b, a)):
        m, n = _BARE_CHOICE.fullmatch(x.strip()), _LED_CHOICE.match(y.strip())
        if m and n:
            return m.group(1) == n.group(1)
    return None


# ---- comparison of structures --------------------------------------------------------------------------------

_MAX_PAIRWISE = 40  # members beyond the exact matches compared pairwise (keeps hostile lists under a second)


def _distinct(xs: tuple) -> tuple:
    """The members of a set, each once: `(3,17), (3,17), (1,2)` names two pairs."""
    out = list(dict.fromkeys(xs))
    if len(out) > _MAX_PAIRWISE:
        return tuple(out)
    kept: list = []
    for x in out:
        if not any(_struct_eq(x, y) for y in kept):
            kept.append(x)
    return tuple(kept)


def _unordered_eq(xs: tuple, ys: tuple) -> bool:
    """Equal as sets of answers (each member once). Exact matches are paired first, the rest pairwise."""
    if len(xs) != len(ys):
        xs, ys = _distinct(xs), _distinct(ys)
    if len(xs) != len(ys):
        return False
    left = list(ys)
    rest = []
    for x in xs:
        if x in left:
            left.remove(x)
        else:
            rest.append(x)
    if len(rest) > _MAX_PAIRWISE:
        return False
    for x in rest:
        for j, y in enumerate(left):
            if _struct_eq(x, y):
                del left[j]
                break
        else:
            return False
    return True


def _flat(t: tuple) -> tuple | None:
    """Elements of a row or column matrix, a tuple or a bare list, in order; None for anything else."""
    if t[0] == "matrix" and (len(t[1]) == 1 or all(len(r) == 1 for r in t[1])):
        return tuple(c for r in t[1] for c in r)
    if t[0] == "seq" and t[1] == "(" and t[2] == ")":
        return t[3]
    if t[0] == "list":
        return t[1]
    return None


def _expr_of(s: str):
    leaf = _leaf(s)
    if leaf.kind == "text":
        return None
    import sympy

    return leaf.value if leaf.kind == "expr" else sympy.Rational(leaf.value.numerator, leaf.value.denominator)


def _equation_eq(a: tuple, b: tuple, positive: bool = False) -> bool:
    """l1 = r1 and l2 = r2 are the same equation when (l1 - r1) / (l2 - r2) is a nonzero constant
    (a positive one for inequalities, so that x < 5 and 5 < x differ)."""
    from east_ds.grading.latex_math import _points, numeric

    e = [_expr_of(x) for x in (a[1], a[2], b[1], b[2])]
    if any(x is None for x in e):
        return False
    d1, d2 = e[0] - e[1], e[2] - e[3]
    if d1.free_symbols != d2.free_symbols or not d1.free_symbols:
        return bool(d1 == d2)
    ratios = []
    for p in _points(d1.free_symbols):
        v1, v2 = numeric(d1, p), numeric(d2, p)
        if v1 is None or v2 is None or abs(v2) < 1e-12:
            return False
        ratios.append(v1 / v2)
    if positive and not (abs(ratios[0].imag) < 1e-12 and ratios[0].real > 0):
        return False
    return all(abs(r - ratios[0]) <= 1e-9 * max(1, abs(ratios[0])) for r in ratios) and abs(ratios[0]) > 1e-12


# A function of one variable, as a question asks for it: `\cos(x)`, `\sin^2\theta`, `\log_2 x`, `\tan A`.
_FUNCTION_OF_VAR = re.compile(r"\\?(?:sin|cos|tan|sec|csc|cot|sinh|cosh|tanh|arcsin|arccos|arctan|log|ln|exp)"
                              r"(?:_\{?\w{1,3}\}?)?(?:\^\{?-?\d\}?)?\s*(?:\(\s*\\?[A-Za-z]+\s*\)|\{?\\?[A-Za-z]+\}?)")


def _named_function_eq(a: tuple, b: tuple) -> bool:
    """An equation `f(x) = c` (a function of one variable equal to a constant) against a bare value: the value
    asked for under its name, so c is compared. Any other equation is not a value."""
    pred_eq = a[0] == "eq"
    eq, leaf = (a, b) if pred_eq else (b, a)
    if not (_FUNCTION_OF_VAR.fullmatch(eq[1].strip()) and is_constant(eq[2])):
        return False
    value = _structure(eq[2])
    return _struct_eq(value, leaf) if pred_eq else _struct_eq(leaf, value)


_INF, _NEG_INF = ("leaf", "\\infty"), ("leaf", "-\\infty")


def _as_intervals(t: tuple) -> tuple | None:
    """The set an answer describes as a tuple of intervals: an interval, a union, a relation that bounds one
    variable (`t > 3` is (3, oo), `|x| < 2` is (-2, 2)), alternatives of those. None for anything else."""
    kind = t[0]
    if kind == "seq" and len(t[3]) == 2 and t[1] in "([" and t[2] in ")]":
        return (t,)
    if kind in ("union", "or"):
        parts = [_as_intervals(x) for x in t[1]]
        return None if any(p is None for p in parts) else tuple(i for p in parts for i in p)
    if kind != "rel":
        return None
    op, lhs, rhs = t[1:]
    if op == "\\neq":  # x \neq c: everything but c
        side = rhs if _VAR.fullmatch(lhs) and not _has_var(rhs) else lhs if _VAR.fullmatch(rhs) and not _has_var(lhs) else None
        c = _structure(side) if side is not None else None
        return None if c is None else (("seq", "(", ")", (_NEG_INF, c)), ("seq", "(", ")", (c, _INF)))
    lo, hi = ("(", ")") if op == "<" else ("[", "]")
    if _VAR.fullmatch(lhs) and not _has_var(rhs):  # x < c, |x| < c
        r = _structure(rhs)
        if lhs.startswith("|"):
            return (("seq", lo, hi, (_structure(f"-({rhs})"), r)),)
        return (("seq", "(", hi, (_NEG_INF, r)),)
    if _VAR.fullmatch(rhs) and not _has_var(lhs):  # c < x, c < |x|
        r = _structure(lhs)
        if rhs.startswith("|"):
            return (("seq", "(", hi, (_NEG_INF, _structure(f"-({lhs})"))), ("seq", lo, ")", (r, _INF)))
        return (("seq", lo, ")", (r, _INF)),)
    return None


def _resolve(t: tuple) -> tuple:
    """Alternatives `A or B`: one answer in two spellings when they are equal, else the set of them (a union
    when they are intervals or relations); an assignment list met by anything else: its values in order."""
    if t[0] == "assign":
        return ("seq", "(", ")", tuple(v for _, v in t[1]))
    if t[0] != "or":
        return t
    items = tuple(_resolve(x) for x in t[1])
    if all(_struct_eq(x, items[0]) for x in items[1:]):
        return items[0]
    intervals = _as_intervals(("or", items))
    if intervals is not None and (any(x[0] == "rel" for x in items) or any(_is_interval(x) for x in intervals)):
        # `x < 1 or x > 2`, `x \in (-\infty, 1) or x \in (2, \infty)`; but `(1,4) or (4,1)` are points
        return ("union", intervals)
    return ("list", tuple(y for x in items for y in (x[1] if x[0] == "list" else (x,))))


def _is_interval(t: tuple) -> bool:
    """A bracket pair that can only be an interval: a square bracket or an infinite end (`(1, 4)` may be a point)."""
    return t[0] == "seq" and ("[" in t[1] + t[2] or "]" in t[1] + t[2] or _INF in t[3] or _NEG_INF in t[3])


def _value_eq(a: tuple, b: tuple) -> bool:
    """A computed value (from a matrix expression) against a leaf or another value."""
    from east_ds.grading.latex_math import sympy_equal

    ea, eb = (t[1] if t[0] == "value" else _expr_of(t[1]) if t[0] == "leaf" else None for t in (a, b))
    return ea is not None and eb is not None and sympy_equal(ea, eb)


def _struct_eq(a: tuple, b: tuple) -> bool:
    """pred structure a against gold structure b."""
    if a[0] == b[0] == "assign":
        la, lb = dict(a[1]), dict(b[1])
        if len(la) == len(a[1]) and la.keys() == lb.keys():  # the same names: compared name by name
            return all(_struct_eq(la[k], lb[k]) for k in la)
    a, b = _resolve(a), _resolve(b)
    ka, kb = a[0], b[0]
    if "value" in (ka, kb):
        return _value_eq(a, b)
    if ka == "leaf" and kb == "leaf":
        return a[1] == b[1] or _leaf_eq(_leaf(a[1]), _leaf(b[1]))
    if ka == kb == "seq":
        return a[1:3] == b[1:3] and len(a[3]) == len(b[3]) and all(map(_struct_eq, a[3], b[3]))
    if ka in ("list", "union") and kb == ka:
        return _unordered_eq(a[1], b[1])
    if ka == kb == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(r) == len(q) and all(map(_struct_eq, r, q)) for r, q in zip(a[1], b[1]))
    if ka == kb == "eq":
        return _equation_eq(a, b)
    if {ka, kb} == {"eq", "leaf"}:  # `\cos(x) = \frac{42}{59}` against `\frac{42}{59}`
        return _named_function_eq(a, b)
    if ka == kb == "rel":
        return a[1] == b[1] and _equation_eq(("eq", a[2], a[3]), ("eq", b[2], b[3]), positive=True)
    if (ka, kb) in (("leaf", "list"), ("list", "leaf")):  # a set of one member against that member
        one, leaf = (b, a) if ka == "leaf" else (a, b)
        return len(_distinct(one[1])) == 1 and _struct_eq(one[1][0], leaf)
    fa, fb = _flat(a), _flat(b)
    if fa is not None and fb is not None:
        return len(fa) == len(fb) and all(map(_struct_eq, fa, fb))
    ia, ib = _as_intervals(a), _as_intervals(b)  # `t > 3` against `(3, \infty)`
    return ia is not None and ib is not None and _unordered_eq(ia, ib)
