"""Structure of one normalised answer: tuples, sets, intervals, unions, matrices, equations, relations.

Pure string work on the output of `east_ds.grading.extract.normalize`; the leaves are compared by
`east_ds.grading`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from east_ds.grading.extract import MAX_ANSWER_CHARS

_CACHE = 8192

# ---- structure: split an answer into tuples, sets, intervals, matrices, equations ---------------------------

_OPEN, _CLOSE = "([{", ")]}"


def _split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split s on any of seps at bracket depth 0 (brackets of any kind, `\\{` included)."""
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
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)
_CHAIN = re.compile(r"([^<>=\\]+?)\s*(<|>|\\leq|\\geq)\s*([A-Za-z])\s*(<|>|\\leq|\\geq)\s*([^<>=]+)")
_RELS = ("\\leq", "\\geq", "\\neq", "<", ">")


@lru_cache(maxsize=_CACHE)
def _structure(s: str, depth: int = 0) -> tuple:
    """A tree for one normalised answer: ('leaf', str) | ('seq', open, close, items) | ('list', items)
    (unordered: bare comma lists, sets, `\\pm`) | ('union', items) | ('matrix', rows) | ('eq', l, r) |
    ('rel', op, l, r)."""
    s = s.strip()
    if depth > 6 or len(s) > MAX_ANSWER_CHARS:
        return ("leaf", s)
    if s.startswith("\\in "):
        s = s[4:]
    m = re.match(r"^[A-Za-z](?:_\{?\w+\}?)?\s*\\in\s", s)
    if m:
        s = s[m.end() :]
    parts = _split_top(s, ("=",))
    if len(parts) >= 2:
        lhs, rhs = parts[0].strip(), parts[-1].strip()
        if _SIMPLE_LHS.fullmatch(lhs) or len(parts) > 2:
            return _structure(rhs, depth + 1)
        return ("eq", lhs, rhs)
    m = _CHAIN.fullmatch(s) if len(s) < 200 else None
    if m:  # -2 \leq x < 7 is the interval [-2, 7)
        lo, op1, op2, hi = m.group(1), m.group(2), m.group(4), m.group(5)
        if op1 in (">", "\\geq") and op2 in (">", "\\geq"):
            lo, hi, op1, op2 = hi, lo, op2, op1
        if op1 in ("<", "\\leq") and op2 in ("<", "\\leq"):
            return ("seq", "[" if op1 == "\\leq" else "(", "]" if op2 == "\\leq" else ")",
                    (_structure(lo, depth + 1), _structure(hi, depth + 1)))
    for op in _RELS:
        parts = _split_top(s, (op,))
        if len(parts) == 2:
            lhs, rhs = parts[0].strip(), parts[1].strip()
            if op in (">", "\\geq"):  # canonical direction: a < b
                op, lhs, rhs = ("<" if op == ">" else "\\leq"), rhs, lhs
            return ("rel", op, lhs, rhs)
    parts = _split_top(s, ("\\cup",))
    if len(parts) > 1:
        return ("union", tuple(_structure(p, depth + 1) for p in parts))
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and s[1:].lstrip().startswith("\\begin{"):
        s = s[1:-1].strip()  # `\left[\begin{array}..\end{array}\right]`: the brackets are the matrix's own
    mm = _MATRIX.fullmatch(s)
    if mm:
        rows = [r for r in mm.group(2).split("\\\\") if r.strip()]
        return ("matrix", tuple(tuple(_structure(c, depth + 1) for c in r.split("&")) for r in rows))
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2].strip()
        items = [p for p in _split_top(inner, (",", ";")) if p.strip()] if inner else []
        return ("list", tuple(x for p in items for x in _expand_pm(p, depth)))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _outer_bracket_spans(s):
        items = _split_top(s[1:-1], (",",))
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(_structure(p, depth + 1) for p in items))
        if s[0] == "(" and s[-1] == ")":
            return _structure(s[1:-1], depth + 1)
    items = [p for p in _split_top(s, (",", ";")) if p.strip()]
    if len(items) > 1:
        return ("list", tuple(x for p in items for x in _expand_pm(p, depth)))
    if "\\pm" in s:
        return ("list", _expand_pm(s, depth))
    return ("leaf", s)


def _expand_pm(s: str, depth: int) -> tuple:
    """`1 \\pm \\sqrt{2}` -> the two answers `1 + \\sqrt{2}`, `1 - \\sqrt{2}` (one \\pm only)."""
    if s.count("\\pm") == 1:
        return (_structure(s.replace("\\pm", "+"), depth + 1), _structure(s.replace("\\pm", "-"), depth + 1))
    return (_structure(s, depth + 1),)
