"""Value of a small matrix expression: `2\\begin{pmatrix}..\\end{pmatrix}`, a sum, difference or product of
matrices written out, as an answer may give it before simplifying.

Bounded: at most 4 matrices of at most 6 x 6 entries, each entry and scalar parsed by `latex_math.parse_math`
(no eval), every product checked for conforming shapes. Anything else returns None (the caller compares text).
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"\\begin\{([pbvBV]?matrix)\}(.{0,800}?)\\end\{\1\}", re.S)
_CHUNK = re.compile(r"\s*([+-])?\s*(.*?)\s*(\\cdot|\\times)?\s*", re.S)
_MAX_MATRICES, _MAX_SIDE = 4, 6


def _entries(body: str):
    """A sympy Matrix from the body of a matrix environment, or None."""
    import sympy

    from east_ds.grading.latex_math import MathParseError, parse_math

    rows = [r for r in body.split("\\\\") if r.strip()]
    cells = [r.split("&") for r in rows]
    if not cells or len(cells) > _MAX_SIDE or any(len(r) != len(cells[0]) or len(r) > _MAX_SIDE for r in cells):
        return None
    try:
        return sympy.Matrix([[parse_math(c.strip()) for c in r] for r in cells])
    except MathParseError:
        return None


def _scalar(text: str):
    import sympy

    from east_ds.grading.latex_math import MathParseError, parse_math

    if not text:
        return sympy.Integer(1)
    try:
        return parse_math(text)
    except MathParseError:
        return None


def matrix_value(s: str) -> tuple | None:
    """('matrix', rows of ('value', sympy expr)) for `c1 M1 (+|-|\\cdot|juxtaposed) c2 M2 ...`, else None."""
    blocks = list(_BLOCK.finditer(s))
    if not blocks or len(blocks) > _MAX_MATRICES or s[blocks[-1].end() :].strip():
        return None
    total, term, last = None, None, 0
    try:
        for k, m in enumerate(blocks):
            chunk = _CHUNK.fullmatch(s[last : m.start()])
            mat = _entries(m.group(2))
            scalar = _scalar(chunk.group(2)) if chunk else None
            if mat is None or scalar is None or (k == 0 and chunk.group(3)):
                return None
            sign = -1 if chunk.group(1) == "-" else 1
            if k > 0 and chunk.group(1) is None:  # juxtaposed or \cdot: a product with the term so far
                term = term * (scalar * mat)
            else:
                total = term if total is None else total + term
                term = sign * scalar * mat
            last = m.end()
        total = term if total is None else total + term
    except (ValueError, TypeError, ArithmeticError, AttributeError):  # sympy's ShapeError is a ValueError
        return None
    if total is None or not hasattr(total, "tolist"):
        return None
    return ("matrix", tuple(tuple(("value", e) for e in row) for row in total.tolist()))
