"""Generated grading cases: MATH golds rewritten into equivalent and non-equivalent forms.

Each gold answer yields (kind, pred, gold, expected, shape) rows, kind "eq" for is_equivalent(pred, gold) and
"grade" for grade(pred, gold) with pred a whole response. The rewrites are the shapes public graders' suites test
and the issue lists: \\dfrac / a/b / decimals, spacing commands, doubled (JSON-escaped) backslashes, named
assignments, boxes joined by "and", "or"-joined lists, reordered sets, inequalities for intervals, units,
thousands separators, a whole response that is only the answer. Non-equivalent rows change a number, swap a
tuple, move an interval end or drop a list member. Only rewrites whose verdict is certain from the gold's
shape are made (a tuple is swapped only when its members differ as strings *and* are plain numbers).

    rows(golds, seed) -> list of rows         (tests/test_grading_generated.py, benchmarks/public_cases_vs_math_verify.py)
    python tests/grading_variants.py OUT.jsonl N   samples N golds from data/ (MATH500 + MATH train, as
                                                   `east-ds data math500` and `east-ds data math` write them)
"""

from __future__ import annotations

import json
import random
import re
import sys
from fractions import Fraction
from pathlib import Path

E, G = "eq", "grade"
_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_NUM = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_INTERVAL = re.compile(r"([(\[])([^,()\[\]]+),([^,()\[\]]+)([)\]])")
_SAFE_DIGIT = re.compile(r"(?<![\^_\d{])\d")  # a digit that starts a number, not an exponent or subscript


def _top_items(g: str) -> list[str] | None:
    """Items of a bare comma list at bracket depth 0 (`1, 2, 3`), or None (`10,\\!000` is one number)."""
    if re.search(r",\\!|\{,\}", g) or re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", g):
        return None
    depth, parts, last = 0, [], 0
    for i, c in enumerate(g):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0 and g[i - 1 : i] != "\\":
            parts.append(g[last:i].strip())
            last = i + 1
    parts.append(g[last:].strip())
    parts = [re.sub(r"^(?:\\[,;!]|\\text\{\s*and\s*\}|\s)+", "", p) for p in parts]  # `5,\,-11`, `3, \text{ and } 4`
    return parts if len(parts) > 1 and all(parts) else None


def _terminating(q: Fraction) -> bool:
    d = q.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _perturb(g: str, rng: random.Random) -> str | None:
    """g with one leading digit of a number changed (never inside \\text, an exponent or a subscript)."""
    if "\\text" in g or "\\mbox" in g:
        return None
    spots = [m.start() for m in _SAFE_DIGIT.finditer(g)]
    if not spots:
        return None
    i = rng.choice(spots)
    return g[:i] + str((int(g[i]) + rng.randint(1, 8)) % 10) + g[i + 1 :]


def _equivalent(g: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, pred, shape) rows that must grade equal to gold g."""
    out = [(E, g.replace("\\", "\\\\"), "doubled backslashes"),
           (G, f"So the final answer is $\\boxed{{{g}}}$.", "boxed in a sentence")]
    if "\\frac" in g:
        out.append((E, g.replace("\\frac", "\\dfrac"), "\\dfrac"))
    if "\n" not in g and len(g) < 100 and "\\text" not in g:
        out.append((G, g, "whole response is the answer"))
    if "=" not in g and "<" not in g and ">" not in g and "\\le" not in g and "\\ge" not in g:
        out.append((E, f"x = {g}", "named assignment"))
        out.append((G, f"Hence $y = {g}$.", "named assignment in a sentence"))
    if "," in g and _top_items(g):
        out.append((E, g.replace(",", ",\\,"), "thin spaces"))
        out.append((E, g.replace(",", ",\\;"), "medium spaces"))
    out.append((E, f"\\quad {g}", "\\quad"))
    if _INT.fullmatch(g):
        v = int(g)
        out += [(E, f"{v}.0", "trailing .0"), (E, f"{v} \\text{{ cm}}", "unit"), (E, f"\\$ {v}", "currency")]
        if abs(v) >= 1000:
            out += [(E, f"{v:,}", "thousands comma"), (E, f"{v:,}".replace(",", "\\,"), "thousands thin space"),
                    (G, f"{v:,}".replace(",", " "), "whole response with a thousands space")]
    out += _round_two_equivalent(g)
    m = _FRAC.fullmatch(g)
    if m:
        q = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        out += [(E, f"{q.numerator}/{q.denominator}", "a/b"), (E, f"\\frac{{{2 * q.numerator}}}{{{2 * q.denominator}}}", "unreduced")]
        if _terminating(q):
            out.append((E, str(float(q)), "decimal"))
            out.append((G, str(float(q)).replace("0.", ".", 1) if abs(q) < 1 else str(float(q)), "whole response decimal"))
    m = re.fullmatch(r"\(([^,()]+),([^,()]+)\)", g)
    if m:
        out.append((E, f"(x, y) = {g}", "named tuple"))
        out.append((E, f"x = {m.group(1).strip()}, y = {m.group(2).strip()}", "assignments for a tuple"))
    if m is None and "," not in g:
        out.append((G, f"We get $\\boxed{{{g}}}$.\n\n**Final Answer**\n$\\boxed{{{g}}}$", "repeated box"))
        out.append((E, f"{g} or {g}", "'or' of equal alternatives"))
    items = _top_items(g)
    if items:
        out.append((E, ", ".join(reversed(items)), "reordered list"))
        out.append((E, ", ".join(items[:-1]) + " and " + items[-1], "'and' list"))
        out.append((E, ", ".join(items[:-1]) + " or " + items[-1], "'or' list"))
        out.append((G, " and ".join(f"\\boxed{{{x}}}" for x in items), "boxes joined by and"))
        out.append((E, "\\{" + ", ".join(items) + "\\}", "as a set"))
    m = _INTERVAL.fullmatch(g)
    if m and "\\infty" not in g and m.group(1) + m.group(4) != "()":  # `(a, b)` could be a point: leave it
        lo, hi = m.group(2).strip(), m.group(3).strip()
        op1 = "\\le" if m.group(1) == "[" else "<"
        op2 = "\\le" if m.group(4) == "]" else "<"
        out.append((E, f"{lo} {op1} x {op2} {hi}", "inequality for an interval"))
    if m and m.group(3).strip() == "\\infty" and m.group(1) == "(":
        out.append((E, f"x > {m.group(2).strip()}", "ray as an inequality"))
    if m and m.group(2).strip() == "-\\infty" and m.group(4) in ")]":
        op = "<" if m.group(4) == ")" else "\\le"
        out.append((E, f"x {op} {m.group(3).strip()}", "ray as an inequality"))
    return out


_RADICAL = re.compile(r"(\d*)\\sqrt\{(\d+)\}")


def _round_two_equivalent(g: str) -> list[tuple[str, str, str]]:
    """Issue 26's shapes that must grade equal: program syntax, mixed numbers, a reversed assignment, decoration
    after the answer (an approximation, end-of-text tokens, a trailing backslash, a glued unit), a phrase in
    another language."""
    out = []
    m = _RADICAL.fullmatch(g)
    if m:
        out.append((E, f"{m.group(1) or 1}*sqrt({m.group(2)})", "program syntax"))
        out.append((G, f"print gives {m.group(1) or 1}*sqrt({m.group(2)})", "program syntax in a response"))
    m = _FRAC.fullmatch(g)
    if m:
        q = Fraction(int(m.group(2)), int(m.group(3)))
        if q.numerator > q.denominator > 1:
            whole, rest = divmod(q.numerator, q.denominator)
            out.append((E, f"{m.group(1)}{whole}\\frac{{{rest}}}{{{q.denominator}}}", "mixed number"))
        out.append((E, f"{g} \\approx {float(q) * (-1 if m.group(1) else 1):.3f}", "approximation after the value"))
    if _INT.fullmatch(g) or _FRAC.fullmatch(g) or _RADICAL.fullmatch(g):
        out.append((E, f"{g} = x", "reversed assignment"))
    if _INT.fullmatch(g):
        out += [(E, f"{g}\\", "trailing backslash"), (E, f"{g}weeks", "glued unit")]
    if "$" not in g and "\n" not in g:
        out.append((G, f"所以，答案是 ${g}$。", "answer phrase in Chinese"))
        out.append((G, f"The answer is $\\boxed{{{g}}}$.<|im_end|>\n<|im_start|>user\nNow 12345 + 1?", "end-of-text token"))
    return out


def _round_two_different(g: str, p: str) -> list[tuple[str, str, str]]:
    """The same shapes with a changed digit p of the gold g: they must grade different."""
    out = [(G, f"所以，答案是 ${p}$。", "answer phrase in Chinese, changed digit")] if "$" not in p else []
    m = _RADICAL.fullmatch(p)
    if m:
        out.append((E, f"{m.group(1) or 1}*sqrt({m.group(2)})", "program syntax, changed digit"))
    if _FRAC.fullmatch(g) or _INT.fullmatch(g):
        out.append((E, f"{p} = x", "reversed assignment, changed digit"))
    return out


def _different(g: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, pred, shape) rows that must grade different from gold g."""
    out = []
    p = _perturb(g, rng)
    if p is not None and p != g:
        out += [(E, p, "changed digit"), (E, p.replace("\\", "\\\\"), "changed digit, doubled backslashes"),
                (G, f"The answer is $\\boxed{{{p}}}$.", "changed digit in a box")]
        out += _round_two_different(g, p)
        if "=" not in g and "<" not in g and ">" not in g:
            out.append((E, f"x = {p}", "named assignment, changed digit"))
            if "," not in g:
                out.append((E, f"{g} or {p}", "'or' of different alternatives"))
    m = re.fullmatch(r"\(([^,()]+),([^,()]+)\)", g)
    if m and _NUM.fullmatch(m.group(1).strip()) and _NUM.fullmatch(m.group(2).strip()) and \
            Fraction(m.group(1).strip()) != Fraction(m.group(2).strip()):
        out.append((E, f"({m.group(2).strip()}, {m.group(1).strip()})", "swapped tuple"))
    m = _INTERVAL.fullmatch(g)
    if m and (m.group(1) == "[" or m.group(4) == "]" or "\\infty" in g):
        flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
        side = 1 if "\\infty" not in m.group(2) and (m.group(1) == "[" or "\\infty" in m.group(3)) else 4
        if "\\infty" not in m.group(3 if side == 4 else 2):
            w = list(m.groups())
            w[side - 1] = flip[w[side - 1]]
            out.append((E, f"{w[0]}{w[1]},{w[2]}{w[3]}", "wrong interval end"))
    items = _top_items(g)
    if items and len(set(items)) == len(items):
        out.append((E, ", ".join(items[:-1]), "list member dropped"))
    return out


def rows(golds: list[str], seed: int = 0) -> list[tuple[str, str, str, bool, str]]:
    """(kind, pred, gold, expected, shape) for every gold; deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for g in golds:
        g = g.strip()
        if not g:
            continue
        out += [(k, p, g, True, s) for k, p, s in _equivalent(g, rng)]
        out += [(k, p, g, False, s) for k, p, s in _different(g, rng)]
    return out


def sample_golds(n: int, seed: int = 0, data: Path = Path(__file__).resolve().parents[1] / "data") -> list[str]:
    """n golds: half MATH500 `answer`, half the boxed answer of MATH train solutions; from each, half are drawn
    from the golds with structure (a comma, bracket, interval or set), which plain sampling rarely meets."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from east_ds.grading import extract_answer

    rng = random.Random(seed)
    m500 = [json.loads(x)["answer"] for x in (data / "math500_test.jsonl").read_text().splitlines() if x.strip()]
    train = [extract_answer(json.loads(x)["solution"]) for x in (data / "math_train.jsonl").read_text().splitlines()
             if x.strip()]
    train = [a for a in train if a and "\\boxed" not in a and "\\approx" not in a]  # nested-box leftovers
    out: list[str] = []
    for pool, k in ((m500, min(n // 2, len(m500))), (train, min(n - n // 2, len(train)))):
        rich = [g for g in pool if re.search(r",|\\infty|[(\[]|\\\{", g)]
        pick = rng.sample(rich, min(k // 2, len(rich)))
        rest = [g for g in pool if g not in set(pick)]
        out += pick + rng.sample(rest, k - len(pick))
    return out


if __name__ == "__main__":
    out_path, n = Path(sys.argv[1]), int(sys.argv[2])
    out_path.write_text("".join(json.dumps({"gold": g}) + "\n" for g in sample_golds(n)))
    print(f"wrote {n} golds to {out_path}")
