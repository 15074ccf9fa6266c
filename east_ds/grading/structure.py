"""Structure of one normalised answer: tuples, sets, intervals, unions, matrices, equations, relations.

Pure string work on the output of `east_ds.grading.extract.normalize`; the leaves are compared by
`east_ds.grading`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from east_ds.grading.extract import _THOUSANDS, MAX_ANSWER_CHARS

_CACHE = 8192

# ---- structure: split an answer into tuples, sets, intervals, matrices, equations ---------------------------

_OPEN, _CLOSE = "([{", ")]}"


def _split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split s on any of seps at bracket depth 0 (brackets of any kind, `\\{` included)."""
    if not any(sep in s for sep in seps):  # nothing to split on: skip the character scan
        return [s]
    parts, depth, last, i, n = [], 0, 0, 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i) and not (sep.isalpha() is False and sep == "=" and s[i - 1 : i] in "<>!\\"):
                    parts.append(s[last:i])
                    i += len(sep)
                    last = i
                    break
            else:
                i += 1
            continue
        i += 1
    parts.append(s[last:])
    return parts


def _outer_bracket_spans(s: str) -> bool:
    """True when the first character's bracket closes at the last character: `(1,2)` but not `(1)(2)`."""
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_SIMPLE_LHS = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z0-9, ]*\))?|\\[a-zA-Z]+|\([A-Za-z, ]+\)|[A-Za-z]{2,12}")
# A label names a quantity without computing anything: `x`, `y_1`, `PQ`, `f(2)`, `\angle ABC`, `|PQ|`, `A:B`,
# `\frac{AM}{MB}`, `(p, q)`. `2x`, `x^2`, `a + b` are expressions: `2x = 6` is an equation, not the value 6.
_NAME = r"(?:m?\\angle ?|\\overline\{?)?(?:[A-Za-z]{1,12}|\\[a-zA-Z]+)\}?(?:_\{?\w{1,6}\}?)?'*(?:\([A-Za-z0-9, +-]{0,20}\))?"
_LABEL = re.compile(rf"{_NAME}|\|{_NAME}\||{_NAME}(?: ?: ?{_NAME})+|\\frac\{{{_NAME}\}}\{{{_NAME}\}}|\([A-Za-z, ]+\)")
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)
_SIDE = r"(?:[^<>=\\]|\\(?!leq|geq))+?"
_CHAIN = re.compile(rf"({_SIDE})\s*(<|>|\\leq|\\geq)\s*(\|?[A-Za-z](?:_\{{?\w+\}}?)?(?:\([A-Za-z]\))?\|?)\s*"
                    rf"(<|>|\\leq|\\geq)\s*({_SIDE})")
_RELS = ("\\leq", "\\geq", "\\neq", "<", ">")
_VAR = re.compile(r"\|?[A-Za-z](?:_\{?\w+\}?)?\|?")


def _has_var(side: str) -> bool:
    """True when side names a variable (a letter outside a LaTeX command)."""
    return bool(re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", side)))


# Functions and operators compute a value from their argument, so they never name one: `\cos(x) = \frac{42}{59}`
# is an equation in x (not the value 42/59 under the name `\cos(x)`), and `\det A = 3` is a computation.
_OPERATOR = re.compile(r"\\?(?:sin|cos|tan|sec|csc|cot|arcsin|arccos|arctan|sinh|cosh|tanh|log|ln|exp|det|lim|sum|"
                       r"prod|int|max|min|gcd|lcm|operatorname)(?![A-Za-z])")
# An operator that binds its own variable or reduces its argument to a number: `lhs = constant` is the computation
# of that constant (`\lim_{x \to 0} \frac{\sin x}{x} = 1`, `\det(A) = 3`, `\sum_{k=1}^{n} 1 = n` is not: n is free).
_COMPUTATION = re.compile(r"\\(?:lim|sum|prod|int|det|max|min|gcd|operatorname)(?![A-Za-z])|(?:lcm|gcd|det)(?![A-Za-z])")


def is_label(lhs: str) -> bool:
    """True when `lhs = value` names the value (see _LABEL); a function or operator applied to something is not
    a name (see _OPERATOR)."""
    lhs = lhs.strip()
    if _OPERATOR.match(lhs):
        return False
    return bool(_SIMPLE_LHS.fullmatch(lhs) or _LABEL.fullmatch(lhs))


@lru_cache(maxsize=_CACHE)
def is_constant(side: str) -> bool:
    """True when side has a value without any free variable: `3/4`, `e^{i\\pi}`, `\\sin(\\pi/6)` (through the
    bounded parser; `e` and `i` are constants there). Unparseable text is not constant."""
    if not re.search(r"[A-Za-z]", side):  # no letter and no command: digits and operators only
        return True
    from east_ds.grading.latex_math import MathParseError, parse_math

    try:
        return not parse_math(side).free_symbols
    except (MathParseError, RecursionError, TypeError, ValueError, ArithmeticError, AttributeError):
        return False


def _equation_value(lhs: str, rhs: str) -> str | None:
    """The side that is the answer of `lhs = rhs`, or None when it is an equation to compare as one.

    A label names the value on its right (`x = 5`); a constant computed from constants, or by an operator, is its
    value (`1/2 + 3 = 7/2`, `e^{i\\pi} = -1`, `\\lim_{x\\to0} f = 1`: the right side); a value assigned the other
    way round is that value (`2 = x`: the left side). Anything else (`2x = 6`, `7 = 11a + c`,
    `\\cos(x) = \\frac{42}{59}`) is an equation."""
    if is_label(lhs):
        return rhs
    if is_constant(rhs) and (_COMPUTATION.match(lhs) or is_constant(lhs)):
        return rhs
    if is_label(rhs) and is_constant(lhs) and not is_constant(rhs):
        return lhs
    return None


def _assignments(s: str, depth: int) -> tuple | None:
    """`PQ=6, RS=2` / `y_1 = 3; y_2 = -1` / `x=2, x=-3` / `m=1,n=3; m=2,n=5` -> their values, or None.

    Every top-level item must be `label = value`. One label repeated: the set of its values. Distinct labels:
    ('assign', ((label, value), ...)), compared label by label with another assignment list and in the written
    order with a tuple. Groups separated by `;` that each assign every label are solutions: a set of tuples.
    """
    groups = [g for g in _split_top(s, (";",)) if g.strip()]
    if len(groups) > 1:
        parsed = [_assignments(g, depth) if "," in g else None for g in groups]
        if all(p is not None and p[0] == "assign" for p in parsed):
            return ("list", tuple(("seq", "(", ")", tuple(v for _, v in p[1])) for p in parsed))
    items = [p for p in _split_top(s, (",", ";")) if p.strip()]
    if len(items) < 2:
        return None
    pairs = []
    for it in items:
        parts = _split_top(it, ("=",))
        if len(parts) < 2 or not is_label(parts[0]):
            return None
        pairs.append((parts[0].replace(" ", ""), _structure(parts[-1], depth + 1)))
    if len({lab for lab, _ in pairs}) == 1:
        return ("list", tuple(v for _, v in pairs))
    return ("assign", tuple(pairs))


def _chain(m: re.Match, depth: int) -> tuple | None:
    """`-2 \\leq x < 7` -> the interval [-2, 7); `2 \\le |w| \\le 3` -> [-3, -2] U [2, 3]."""
    lo, op1, var, op2, hi = m.groups()
    if op1 in (">", "\\geq") and op2 in (">", "\\geq"):
        lo, hi, op1, op2 = hi, lo, op2, op1
    if op1 not in ("<", "\\leq") or op2 not in ("<", "\\leq"):
        return None
    a, b = "[" if op1 == "\\leq" else "(", "]" if op2 == "\\leq" else ")"
    lo_t, hi_t = _structure(lo, depth + 1), _structure(hi, depth + 1)
    if not var.startswith("|"):
        return ("seq", a, b, (lo_t, hi_t))
    neg = {"[": "]", "(": ")", "]": "[", ")": "("}
    return ("union", (("seq", neg[b], neg[a], (_structure(f"-({hi})", depth + 1), _structure(f"-({lo})", depth + 1))),
                      ("seq", a, b, (lo_t, hi_t))))


@lru_cache(maxsize=_CACHE)
def _structure(s: str, depth: int = 0) -> tuple:
    """A tree for one normalised answer: ('leaf', str) | ('seq', open, close, items) | ('list', items)
    (unordered: bare comma lists, sets, `\\pm`) | ('union', items) | ('matrix', rows) | ('eq', l, r) |
    ('rel', op, l, r) | ('or', items) (alternatives: `2 or 3`) | ('assign', ((label, item), ...))."""
    s = s.strip()
    if depth > 6 or len(s) > MAX_ANSWER_CHARS:
        return ("leaf", s)
    if s.startswith("\\in "):
        s = s[4:]
    m = re.match(r"^[A-Za-z](?:_\{?\w+\}?)?\s*\\in(?![A-Za-z])\s*", s)
    if m:
        s = s[m.end() :]
    m = re.fullmatch(r"\\\{\s*[A-Za-z](?:_\{?\w+\}?)?\s*(?:\\mid|\||:)(.*)\\\}", s)
    if m:  # set-builder \{x \mid x > 2\}: the condition
        s = m.group(1).strip()
    alts = [a for a in _split_top(s, (" or ",)) if a.strip()]
    if len(alts) > 1:
        return ("or", tuple(_structure(a, depth + 1) for a in alts))
    if s.count("=") > 1:
        if (got := _assignments(s, depth)) is not None:
            return got
    parts = _split_top(s, ("=",))
    if len(parts) >= 2:
        lhs, rhs = parts[0].strip(), parts[-1].strip()
        if len(parts) > 2:
            return _structure(rhs, depth + 1)  # a chain `a = b = 5`: the value is the last side
        value = _equation_value(lhs, rhs)
        return ("eq", lhs, rhs) if value is None else _structure(value, depth + 1)
    cups = _split_top(s, ("\\cup",)) if "\\cup" in s else ()
    if len(cups) > 1 and any(op in c for c in cups for op in _RELS):  # `x < -1 \cup x > 2`: a union of relations
        return ("union", tuple(_structure(c, depth + 1) for c in cups))
    m = _CHAIN.fullmatch(s) if len(s) < 200 else None
    got = _chain(m, depth) if m else None
    if got is not None:
        return got
    for op in _RELS:
        parts = _split_top(s, (op,))
        if len(parts) == 2:
            lhs, rhs = parts[0].strip(), parts[1].strip()
            if op in (">", "\\geq"):  # canonical direction: a < b
                op, lhs, rhs = ("<" if op == ">" else "\\leq"), rhs, lhs
            return ("rel", op, lhs, rhs)
    if (got := _set_algebra(s, depth)) is not None:
        return got
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and s[1:].lstrip().startswith("\\begin{"):
        s = s[1:-1].strip()  # `\left[\begin{array}..\end{array}\right]`: the brackets are the matrix's own
    mm = _MATRIX.fullmatch(s)
    if mm and "\\begin" not in mm.group(2):
        rows = [r for r in mm.group(2).split("\\\\") if r.strip()]
        return ("matrix", tuple(tuple(_structure(c, depth + 1) for c in r.split("&")) for r in rows))
    if "\\begin{" in s:
        from east_ds.grading.matrix_expr import matrix_value

        got = matrix_value(s)
        if got is not None:
            return got
    if len(s) > 2 and s[0] == "{" and s[-1] == "}" and "," in s and _outer_bracket_spans(s):
        s = "\\{" + s[1:-1] + "\\}"  # `{1,2}` inside a larger answer (`{1,2} \cup {3}`): a set, as a whole `{1,2}` is
    if s.startswith("\\{") and s.endswith("\\}") and _set_spans(s):
        inner = s[2:-2].strip()
        items = [p for p in _split_top(inner, (",", ";")) if p.strip()] if inner else []
        return ("list", tuple(x for p in items for x in _expand_pm(p, depth)))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _outer_bracket_spans(s):
        items = _split_top(s[1:-1], (",",))
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(_structure(p, depth + 1) for p in items))
        if s[0] == "(" and s[-1] == ")":
            return _structure(s[1:-1], depth + 1)
    if _THOUSANDS.fullmatch(s):  # `x = 58,500`: one number, as a whole answer `58,500` is
        return ("leaf", s.replace(",", ""))
    rows = _semicolon_rows(s) if ";" in s else None
    if rows is not None:  # `1,2;3,4;5,6`: groups of the same length are tuples, the set of them
        return ("list", tuple(("seq", "(", ")", tuple(_structure(c, depth + 1) for c in r)) for r in rows))
    items = [p for p in _split_top(s, (",", ";")) if p.strip()]
    if len(items) > 1:
        return ("list", tuple(x for p in items for x in _expand_pm(p, depth)))
    if "\\pm" in s:
        return ("list", _expand_pm(s, depth))
    return ("leaf", s)


def _set_algebra(s: str, depth: int) -> tuple | None:
    """`\\setminus`, `\\cap` and `\\cup` at the top of s: evaluated for finite sets, a union otherwise; None when
    s has none of them."""
    parts = _split_top(s, ("\\setminus",))
    if len(parts) == 2:  # finite sets only: \{1,2\} \setminus \{2\} is \{1\}
        keep, drop = (_structure(_operand(p), depth + 1) for p in parts)
        if keep[0] == drop[0] == "list":
            return ("list", tuple(x for x in keep[1] if x not in drop[1]))
        return ("leaf", s)
    parts = _split_top(s, ("\\cap",))
    if len(parts) > 1:  # finite sets only: \{1,2\} \cap \{2,3\} is \{2\}
        items = tuple(_structure(_operand(p), depth + 1) for p in parts)
        if all(t[0] == "list" for t in items):
            return ("list", tuple(x for x in items[0][1] if all(x in t[1] for t in items[1:])))
        return ("leaf", s)
    parts = _split_top(s, ("\\cup",))
    if len(parts) > 1:
        items = tuple(_structure(_operand(p), depth + 1) for p in parts)
        if all(t[0] == "list" for t in items):  # \{1,2\} \cup \{5\} is the finite set \{1,2,5\}
            return ("list", tuple(dict.fromkeys(x for t in items for x in t[1])))
        return ("union", items)
    return None


def _operand(p: str) -> str:
    """An operand of a set operation written with bare braces is a set: `{2}` in `{1,2} \\setminus {2}`."""
    p = p.strip()
    return "\\{" + p[1:-1] + "\\}" if len(p) > 1 and p[0] == "{" and p[-1] == "}" and _outer_bracket_spans(p) else p


def _semicolon_rows(s: str) -> list[list[str]] | None:
    """`1,2;3,4` -> [["1","2"],["3","4"]]: two or more `;` groups, each of the same number (>= 2) of comma items."""
    groups = [g for g in _split_top(s, (";",)) if g.strip()]
    if len(groups) < 2:
        return None
    rows = [[c for c in _split_top(g, (",",)) if c.strip()] for g in groups]
    return rows if len(rows[0]) >= 2 and all(len(r) == len(rows[0]) for r in rows) else None


def _set_spans(s: str) -> bool:
    """True when the `\\{` opening s closes at its very end: `\\{1,2\\}` but not `\\{1,2\\}, \\{3\\}`."""
    depth, i, n = 0, 0, len(s)
    while i < n - 1:
        if s[i] == "\\" and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            if depth == 0:
                return i == n - 2
            i += 2
            continue
        i += 1
    return False


def _expand_pm(s: str, depth: int) -> tuple:
    """`1 \\pm \\sqrt{2}` -> the two answers `1 + \\sqrt{2}`, `1 - \\sqrt{2}` (one \\pm only)."""
    if s.count("\\pm") == 1:
        return (_structure(s.replace("\\pm", "+"), depth + 1), _structure(s.replace("\\pm", "-"), depth + 1))
    return (_structure(s, depth + 1),)
