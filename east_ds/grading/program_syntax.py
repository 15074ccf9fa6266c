"""Answers written the way programs print them, and the decoration a model's text carries around an answer.

Used by `east_ds.grading.extract`. Pure string work, linear in the input, nothing evaluated: a program-syntax
answer (`-1 + sqrt(3)`, `(3*sqrt(5))/7`, `2**(1/4)`) is only *found* here; `latex_math.parse_math`, the bounded
parser, reads `sqrt(..)`, `*` and `**` itself.

    strip_special_tokens(text)      end-of-text tokens end the response; other chat tokens are dropped
    last_program_expression(text)   the program-syntax expression around the last number of a text, or None
    answer_phrase_prefix            a leading "The answer is" / "答案是" on a bare answer (see extract.normalize)
"""

from __future__ import annotations

import re

# Names a program prints inside an expression (Python, sympy, numpy): the only words such an expression holds.
FUNCTION_NAMES = frozenset({"sqrt", "cbrt", "pi", "exp", "log", "ln", "sin", "cos", "tan", "asin", "acos", "atan",
                            "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "abs"})

# Chat-template tokens: `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<｜end▁of▁sentence｜>`, `</s>`, `<eos>`.
_SPECIAL = re.compile(r"<\|[^<>|\s]{1,40}\|>|<｜[^<>｜]{1,40}｜>|</s>|<eos>|<end_of_turn>|<start_of_turn>")
_END = re.compile(r"im_end|endoftext|end_?of_?text|eot(?:_id)?|eos|end_of_turn|end▁of▁sentence|/s")


def strip_special_tokens(text: str) -> str:
    """Text up to the first end-of-text token that follows some content, with other chat tokens removed.

    What comes after `<|im_end|>` or `<|endoftext|>` (a next turn the model wrote by itself, a user question
    with its own numbers) is not the model's answer; a leading `<|im_start|>` is only noise."""
    if "<" not in text:
        return text
    out, last, content = [], 0, False
    for m in _SPECIAL.finditer(text):
        piece = text[last : m.start()]
        out.append(piece)
        content = content or bool(piece.strip())  # each piece looked at once: linear in the text
        last = m.end()
        if content and _END.fullmatch(m.group(0).strip("<>|｜").lower()):
            return "".join(out)
        out.append(" ")
    out.append(text[last:])
    return "".join(out)


_EXPR_CHARS = frozenset("0123456789.+-*/^() ")
_WORD = re.compile(r"[A-Za-z]+")


def _extend(text: str, i: int, step: int) -> int:
    """From index i, move by step (+1 right, -1 left) over expression characters and function names; return
    the first index outside the expression (exclusive bound in the direction of travel)."""
    n = len(text)
    while 0 <= i < n:
        c = text[i]
        if c in _EXPR_CHARS:
            i += step
            continue
        if c.isalpha():
            j = i
            while 0 <= j < n and text[j].isalpha():
                j += step
            word = text[j + 1 : i + 1] if step < 0 else text[i:j]
            if word.lower() not in FUNCTION_NAMES:
                break
            i = j
            continue
        break
    return i


def _balanced(span: str) -> str:
    """span without operators or spaces at its ends and without unmatched brackets at either end."""
    for _ in range(len(span)):
        s0 = span
        span = span.strip(" ").rstrip("+-*/^(.").lstrip("+*/^)").strip(" ")
        depth, low = 0, 0
        for c in span:
            depth += (c == "(") - (c == ")")
            low = min(low, depth)
        if low < 0 and span.startswith(")"):
            span = span[1:]
        elif depth > 0 and span.startswith("("):
            span = span[1:]
        elif depth < 0 and span.endswith(")"):
            span = span[:-1]
        if span == s0:
            break
    return span


def last_program_expression(text: str) -> str | None:
    """The expression around the last number of text when it is written in program syntax: a function call
    (`sqrt(3)`), a power (`**`, `^`) or brackets, joined by at least one operator. `-1 + sqrt(3)` rather than
    `3`; plain arithmetic in prose (`9 * 2 = 18`, `10 - 3`) is left to the last-number rule."""
    tail = text[-2000:]
    k = max(tail.rfind(d) for d in "0123456789")
    if k < 0:
        return None
    right = _extend(tail, k, 1)
    left = _extend(tail, k, -1) + 1
    if right - left > 400:  # longer than any answer: not one (and keeps the trimming below cheap)
        return None
    span = _balanced(tail[left:right])
    if len(span) > 200 or not re.search(r"\d", span):
        return None
    depth = 0
    for c in span:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            return None
    if depth != 0 or not re.search(r"[-+*/^]", span.lstrip("-")):
        return None
    words = _WORD.findall(span)
    if not (words or "**" in span or "^" in span or "(" in span):
        return None
    return span
