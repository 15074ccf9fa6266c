"""A small, bounded LaTeX/ASCII math parser that builds sympy objects directly.

Model output is hostile text, so nothing here calls `eval`, `sympify`, `parse_expr` or `parse_latex`. The
grammar is a precedence-climbing parser over a hand-written tokenizer, with hard limits on everything that
could make a call slow or large: input length, nesting depth, node count, integer size, exponent size and
factorial size. Anything over a limit (or outside the grammar) raises `MathParseError`; the caller then
falls back to comparing strings.

    expr    := term (('+' | '-' | '\\pm') term)*
    term    := unary (('*' | '/' | '\\cdot' | '\\times' | '\\div' | <juxtaposition>) power)*
    unary   := ('-' | '+') unary | power
    power   := postfix ('^' exponent)?
    postfix := atom '!'*
    atom    := number | letter | '(' expr ')' | '{' expr '}' | '|' expr '|' | \\frac | \\sqrt | \\pi | f(x) ...
"""

from __future__ import annotations

import math
import random
import re

import sympy

MAX_CHARS = 400  # longer expressions are not parsed (compared as strings instead)
MAX_DEPTH = 40  # nesting of brackets / fractions / exponents
MAX_NODES = 300  # atoms + operators built
MAX_DIGITS = 2000  # digits of any integer literal or integer result we agree to build
MAX_FACTORIAL = 500  # n! is built only for integer n up to this
MAX_SYMBOLIC_EXP = 100  # x^n with symbolic x: |n| at most this (keeps expand/evalf cheap)


class MathParseError(ValueError):
    """The text is not in the supported math subset, or it is over a size limit."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+|\\.)|(?P<word>[a-zA-Z]+)|(?P<op>\*\*|[-+*/^_()\[\]{}!|,'<>=]))"
)

_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
    "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc, "cot": sympy.cot,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log, "exp": sympy.exp,
}
# Commands whose single argument is kept as-is (styling or decoration).
_WRAPPERS = {"mathbf", "mathrm", "mathit", "boldsymbol", "bm", "vec", "overline", "hat", "bar", "operatorname",
             "mathbb", "mathcal", "textbf", "text", "textrm", "mbox", "displaystyle"}
_MULT = {"*", "\\cdot", "\\times", "\\ast"}
# Words that mean the answer is prose, not a product of single-letter variables.
_MAX_PRODUCT_WORD = 3


def tokenize(text: str) -> list[tuple[str, str]]:
    """Split `text` into (kind, value) tokens; kind is num, cmd, word or op. Raises on anything else."""
    if len(text) > MAX_CHARS:
        raise MathParseError("too long")
    out: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise MathParseError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.toks = tokens
        self.i = 0
        self.depth = 0
        self.nodes = 0
        self.in_abs = 0  # inside |..|, a `|` closes; outside, it opens another absolute value (`|x||y|`)

    # -- token helpers -----------------------------------------------------------------------------------------
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise MathParseError("unexpected end")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise MathParseError(f"expected {value!r}, got {tok[1]!r}")

    def count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise MathParseError("too many nodes")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MathParseError("too deep")

    # -- grammar -----------------------------------------------------------------------------------------------
    def parse(self):
        e = self.expr()
        if self.i != len(self.toks):
            raise MathParseError(f"trailing token {self.toks[self.i][1]!r}")
        return e

    def expr(self):
        self.enter()
        left = self.term()
        while (tok := self.peek()) is not None and tok[1] in ("+", "-"):
            self.take()
            right = self.term()
            self.count()
            left = left + right if tok[1] == "+" else left - right
        self.depth -= 1
        return left

    def term(self):
        left = self.unary()
        while (tok := self.peek()) is not None:
            if tok[1] in _MULT:
                self.take()
                right = self.unary()
            elif tok[1] in ("/", "\\div"):
                self.take()
                right = self.unary()
                if right == 0:
                    raise MathParseError("division by zero")
                right = 1 / right
            elif self.starts_atom(tok):
                right = self.power()
            else:
                break
            self.count()
            left = left * right
        return left

    def unary(self):
        tok = self.peek()
        if tok is not None and tok[1] in ("-", "+"):
            self.take()
            self.enter()
            v = self.unary()
            self.depth -= 1
            return -v if tok[1] == "-" else v
        return self.power()

    def power(self):
        base = self.postfix()
        if (tok := self.peek()) is not None and tok[1] in ("^", "**"):  # `**`: program syntax for a power
            self.take()
            self.enter()
            exp = self.exponent()
            self.depth -= 1
            base = safe_pow(base, exp)
            self.count()
        return base

    def exponent(self):
        # `x^2y` is x^2 * y: an unbraced exponent is one sign plus one atom (right-associative for towers).
        tok = self.peek()
        if tok is not None and tok[1] in ("-", "+"):
            self.take()
            v = self.exponent()
            return -v if tok[1] == "-" else v
        # LaTeX would render x^23 as x^2 3, but people and models who write it mean x^23.
        return self.power()

    def postfix(self):
        v = self.atom()
        while (tok := self.peek()) is not None and tok[1] in ("!", "'"):
            self.take()
            if tok[1] == "'":
                raise MathParseError("prime")
            v = safe_factorial(v)
            self.count()
        return v

    def starts_atom(self, tok: tuple[str, str]) -> bool:
        kind, val = tok
        if kind in ("num", "word"):
            return True
        if kind == "cmd":
            return val[1:] in _GREEK or val[1:] in _FUNCS or val in (
                "\\frac", "\\sqrt", "\\pi", "\\infty", "\\binom", "\\left", "\\{") or val[1:] in _WRAPPERS
        return val in ("(", "{", "[") or (val == "|" and self.in_abs == 0)

    def group(self, close: str):
        v = self.expr()
        self.expect(close)
        return v

    def arg(self):
        """One macro argument: `{...}`, or a single digit/letter/atom as in `\\frac12`, `\\sqrt2`."""
        tok = self.take()
        kind, val = tok
        if val == "{":
            return self.group("}")
        if kind in ("num", "word") and len(val) > 1:
            self.i -= 1
            self.toks[self.i] = (kind, val[1:])
            tok = (kind, val[0])
        else:
            self.i -= 1
            return self.atom()
        return self.leaf(tok)

    def leaf(self, tok: tuple[str, str]):
        kind, val = tok
        self.count()
        if kind == "num":
            digits = len(val.replace(".", ""))
            if digits > MAX_DIGITS:
                raise MathParseError("number too long")
            return sympy.Rational(val) if "." in val else sympy.Integer(int(val))
        return letter_symbol(val)

    def atom(self):
        tok = self.take()
        kind, val = tok
        if kind == "num":
            return self.leaf(tok)
        if kind == "word":
            return self.word(val)
        if val in ("(", "[", "{"):
            self.enter()
            v = self.group({"(": ")", "[": "]", "{": "}"}[val])
            self.depth -= 1
            return v
        if val == "|":
            self.enter()
            self.in_abs += 1
            v = self.group("|")
            self.in_abs -= 1
            self.depth -= 1
            return sympy.Abs(v)
        if kind == "cmd":
            return self.command(val[1:])
        raise MathParseError(f"unexpected {val!r}")

    def word(self, val: str):
        if val in _FUNCS:
            return self.function(val)
        if val == "pi":
            return sympy.pi
        if val == "sqrt":
            return safe_pow(self.arg(), sympy.Rational(1, 2))
        if len(val) > _MAX_PRODUCT_WORD:
            raise MathParseError("prose")
        if len(val) > 1 and (tok := self.peek()) is not None and tok[1] in ("^", "**", "!"):
            # `xy^2` is x * y^2: a power or factorial binds the last letter only, so it is read again on its own
            self.toks.insert(self.i, ("word", val[-1]))
            val = val[:-1]
        # `ab` is a*b; a trailing `_k` subscripts the last letter.
        syms = [letter_symbol(c) for c in val]
        if (tok := self.peek()) is not None and tok[1] == "_":
            self.take()
            sub = self.take()
            if sub[1] == "{":
                parts = []
                while (t := self.take())[1] != "}":
                    parts.append(t[1])
                    if len(parts) > 10:
                        raise MathParseError("long subscript")
                sub = ("word", "".join(parts))
            syms[-1] = sympy.Symbol(f"{val[-1]}_{sub[1]}")
        for _ in syms:
            self.count()
        out = syms[0]
        for s in syms[1:]:
            out = out * s
        return out

    def function(self, name: str):
        power = None
        base = None
        if (tok := self.peek()) is not None and tok[1] == "_" and name == "log":
            self.take()
            base = self.arg()
        if (tok := self.peek()) is not None and tok[1] == "^":
            self.take()
            power = self.exponent()
        tok = self.peek()
        if tok is None:
            raise MathParseError("function without argument")
        if tok[1] in ("(", "{", "["):
            arg = self.atom()
        else:
            arg = self.power()
        self.count()
        f = _FUNCS[name]
        v = f(arg, base) if base is not None else f(arg)
        if power is not None:
            if power == -1:  # \sin^{-1} x is arcsin
                inverse = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}.get(name)
                if inverse is None:
                    raise MathParseError("inverse function")
                return inverse(arg)
            v = safe_pow(v, power)
        return v

    def command(self, name: str):
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            num = self.arg()
            den = self.arg()
            if den == 0:
                raise MathParseError("division by zero")
            self.count()
            return num / den
        if name in ("binom", "dbinom", "tbinom"):
            n, k = self.arg(), self.arg()
            if not (n.is_Integer and k.is_Integer and 0 <= n <= MAX_FACTORIAL):
                raise MathParseError("binomial")
            return sympy.binomial(n, k)
        if name == "sqrt":
            index = None
            if (tok := self.peek()) is not None and tok[1] == "[":
                self.take()
                index = self.group("]")
                if index == 0:
                    raise MathParseError("zeroth root")
            radicand = self.arg()
            self.count()
            return safe_pow(radicand, 1 / index if index is not None else sympy.Rational(1, 2))
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            self.count()
            return sympy.Symbol(name)
        if name in _FUNCS:
            return self.function(name)
        if name in _WRAPPERS:
            return self.arg()
        if name == "left":
            return self.atom()
        if name == "{":
            raise MathParseError("set")
        raise MathParseError(f"unknown command \\{name}")


def letter_symbol(c: str):
    """A single letter as sympy: `i` is the imaginary unit and `e` Euler's number, as in MATH answers."""
    if c == "i":
        return sympy.I
    if c == "e":
        return sympy.E
    return sympy.Symbol(c)


def _int_digits(x) -> float:
    """log10 of the largest of numerator and denominator of a sympy Rational."""
    p, q = abs(int(x.p)), abs(int(x.q))
    return max(p.bit_length(), q.bit_length()) * 0.30103


def safe_pow(base, exp):
    """base**exp, refused when the result would be huge (2^(10^10), x^100000, a 10^6-th root)."""
    if exp.has(sympy.oo, sympy.zoo, sympy.nan):
        raise MathParseError("infinite exponent")
    if exp.is_Rational:
        if exp.q > 1000:
            raise MathParseError("root index too large")
        if base.is_Rational:
            if abs(base) not in (0, 1) and (abs(exp) > 10**6 or abs(exp) * _int_digits(base) > MAX_DIGITS):
                raise MathParseError("power too large")
        elif abs(exp) > MAX_SYMBOLIC_EXP:
            raise MathParseError("symbolic exponent too large")
    return sympy.Pow(base, exp)


def safe_factorial(v):
    """v! for a small non-negative integer, or an unevaluated factorial of a symbol."""
    if v.is_Number:
        if not v.is_Integer or v < 0 or v > MAX_FACTORIAL:
            raise MathParseError("factorial out of range")
        return sympy.factorial(v)
    return sympy.factorial(v)


# An integer written right before a proper fraction of integers is a mixed number, as MATH writes them:
# `2\frac58` and `2\frac{5}{8}` are 21/8, not 2 * 5/8. Not after a digit, letter, `.`, `^`, `_` or `}` (then the
# integer belongs to something else: `x^2\frac12`, `\sqrt2\frac12`).
_MIXED = re.compile(r"(?<![\w.^_}])(\d{1,12})\s*\\[dtc]?frac\s*"
                    r"(?:\{\s*(\d{1,12})\s*\}|(\d))\s*(?:\{\s*(\d{1,12})\s*\}|(\d))")


def _mixed_numbers(text: str) -> str:
    """`2\\frac58` -> `(2+\\frac{5}{8})` when the fraction is proper; anything else is left as written."""
    def one(m: re.Match) -> str:
        num, den = m.group(2) or m.group(3), m.group(4) or m.group(5)
        if not 0 < int(num) < int(den):
            return m.group(0)
        return f"({m.group(1)}+\\frac{{{num}}}{{{den}}})"

    return _MIXED.sub(one, text) if "frac" in text else text


def parse_math(text: str):
    """Parse a normalised LaTeX/ASCII expression into a sympy expression, or raise MathParseError."""
    if len(text) > MAX_CHARS:
        raise MathParseError("too long")
    tokens = tokenize(_mixed_numbers(text))
    if not tokens:
        raise MathParseError("empty")
    try:
        return _Parser(tokens).parse()
    except (RecursionError, OverflowError, ZeroDivisionError, TypeError, AttributeError) as err:
        raise MathParseError(str(err)) from None


# ---- comparison ---------------------------------------------------------------------------------------------

_RNG_POINTS = 3


def _points(symbols) -> list[dict]:
    """A few deterministic evaluation points in (0.3, 2.7): positive so sqrt/log of a symbol stay real."""
    names = sorted(symbols, key=str)
    rng = random.Random(",".join(map(str, names)))
    return [{s: sympy.Float(rng.uniform(0.3, 2.7), 30) for s in names} for _ in range(_RNG_POINTS)]


def numeric(expr, subs: dict | None = None) -> complex | None:
    """expr evaluated to a complex number (30 digits, then to Python complex), or None if not finite."""
    try:
        v = expr.evalf(30, subs=subs) if subs else expr.evalf(30)
        c = complex(v)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError, RecursionError):
        return None
    if not (math.isfinite(c.real) and math.isfinite(c.imag)):
        return None
    return c


def close(a: complex, b: complex, rel: float = 1e-9) -> bool:
    """Equal up to a relative tolerance (absolute near zero)."""
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def sympy_equal(a, b, rel: float = 1e-9) -> bool:
    """Mathematical equality of two parsed expressions: structural, then numeric at a few points."""
    if a == b:
        return True
    inf = (sympy.oo, -sympy.oo, sympy.zoo)
    if a.has(*inf) or b.has(*inf):
        return False
    if a.is_Rational and b.is_Rational:
        return False
    syms = a.free_symbols | b.free_symbols
    if syms != a.free_symbols or syms != b.free_symbols:
        # x+1 vs y+1: different variables are different answers, unless one side's extra variable cancels.
        pass
    pts = _points(syms) if syms else [None]
    for p in pts:
        va, vb = numeric(a, p), numeric(b, p)
        if va is None or vb is None or not close(va, vb, rel):
            return False
    return True


def fingerprint(expr) -> str:
    """A hashable key for expr: equal expressions (numerically at fixed points) share it."""
    if expr.is_Rational:
        return f"q:{expr.p}/{expr.q}"
    if expr.has(sympy.oo, -sympy.oo, sympy.zoo):
        return "x:" + str(expr)
    syms = expr.free_symbols
    pts = _points(syms) if syms else [None]
    vals = []
    for p in pts:
        v = numeric(expr, p)
        if v is None:
            return "x:" + str(expr)
        vals.append(f"{_round_sig(v.real)},{_round_sig(v.imag)}")
    return "n:" + ",".join(sorted(map(str, syms))) + ":" + ";".join(vals)


def _round_sig(x: float) -> str:
    if abs(x) < 1e-12:
        return "0"
    return f"{x:.9e}"
