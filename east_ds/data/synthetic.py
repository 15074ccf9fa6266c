"""A deterministic set of multi-step arithmetic word problems in the GSM8K format.

The CPU demo and the tests need a task a 0.5M-parameter model can half-learn in minutes, so that its sampled
answers disagree often enough for entropy to matter. Each problem chains two or three small operations; the
reference solution shows the steps and ends in `\\boxed{N}` and `#### N`, like a GSM8K answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_NAMES = ("Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Leo", "Mia")
_ITEMS = ("apples", "pens", "books", "coins", "cards", "shells", "stamps", "marbles")


@dataclass(frozen=True)
class Problem:
    question_id: str
    question: str
    solution: str  # worked steps, ending in "#### N"
    answer: str  # the gold answer, a bare integer


@dataclass(frozen=True)
class Tier:
    """A difficulty level of the mixed task (`make_mixed_problems`)."""

    name: str  # appears in the question id: <prefix>-<name>-<i>
    steps: tuple[int, int]  # number of operations, inclusive range
    start: tuple[int, int]  # the starting quantity, inclusive range
    operand_max: int  # largest number added or taken away in one step
    mult_below: int  # "times as many" only while the quantity is below this
    forms: int  # sentence forms per operation: 1 is the demo's wording only, up to 3
    share: float  # fraction of the mixed set


# Certain on some, unsure on many, hopeless on some (the regime EAST needs); see benchmarks/STUDY.md.
TIERS = (
    Tier("easy", (1, 1), (2, 9), 9, 30, 1, 0.20),
    Tier("medium", (2, 3), (2, 9), 9, 30, 3, 0.35),
    Tier("hard", (3, 4), (10, 30), 20, 30, 3, 0.30),
    Tier("hopeless", (5, 6), (20, 99), 50, 100, 3, 0.15),
)
_FORMS = {  # operation -> sentence forms; the first of each is the demo's wording
    "+": ("{name} gets {k} more.", "{name} buys {k} more.", "{name} finds {k} more."),
    "-": ("{name} gives away {k}.", "{name} loses {k}.", "{name} sells {k}."),
    "*": ("{name} ends up with {times} as many.", "{name} now has {times} as many.",
          "{name} gets {times} as many as before."),
}


def _chain(rng: random.Random, question_id: str, steps: int, start: tuple[int, int], operand_max: int,
           mult_below: int, forms: int) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(*start)
    sentences = [f"{name} has {value} {item}."]
    lines = []
    for _ in range(steps):
        ops = ["+"] + (["-"] if value >= 2 else []) + (["*"] if value < mult_below else [])
        op = rng.choice(ops)
        if op == "+":
            k = rng.randint(1, operand_max)
            new = value + k
        elif op == "-":
            k = rng.randint(1, min(operand_max, value - 1))  # keep at least one
            new = value - k
        else:
            k = rng.randint(2, 3)
            new = value * k
        form = _FORMS[op][rng.randrange(forms) if forms > 1 else 0]  # one form: no draw (the demo's sequence)
        sentences.append(form.format(name=name, k=k, times="twice" if k == 2 else "three times"))
        lines.append(f"{value} {op} {k} = {new}")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    solution = "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}.\n#### {value}"
    return Problem(question_id, " ".join(sentences), solution, str(value))


def make_problem(rng: random.Random, question_id: str, steps: int) -> Problem:
    """One problem of `steps` operations (1-3) on small non-negative integers (the demo's task)."""
    return _chain(rng, question_id, steps, (2, 9), 9, 30, 1)


def make_problems(count: int, seed: int = 0, prefix: str = "syn", max_steps: int = 3) -> list[Problem]:
    """`count` problems, the same for the same (count, seed, prefix, max_steps)."""
    rng = random.Random(seed)
    return [make_problem(rng, f"{prefix}-{i}", rng.randint(1, max_steps)) for i in range(count)]


def to_gsm8k_rows(problems: list[Problem]) -> list[dict]:
    """Rows with GSM8K's fields (`question`, `answer` = solution ending in `#### N`) plus an `id`."""
    return [{"id": p.question_id, "question": p.question, "answer": p.solution} for p in problems]


def make_mixed_problems(count: int, seed: int = 0, prefix: str = "mix", tiers: tuple[Tier, ...] = TIERS
                        ) -> list[Problem]:
    """`count` problems of mixed difficulty, each tier's share of the count (rounded, the rest to the last
    tier), shuffled; question ids name the tier. The same arguments give the same problems."""
    rng = random.Random(seed)
    sizes = [round(t.share * count) for t in tiers[:-1]]
    sizes.append(count - sum(sizes))
    plan = [t for t, n in zip(tiers, sizes) for _ in range(n)]
    rng.shuffle(plan)
    return [_chain(rng, f"{prefix}-{t.name}-{i}", rng.randint(*t.steps), t.start, t.operand_max, t.mult_below,
                   t.forms) for i, t in enumerate(plan)]


def tier_of(question_id: str) -> str:
    """The tier name inside a `make_mixed_problems` question id (`<prefix>-<tier>-<i>`), or "" if none."""
    parts = str(question_id).rsplit("-", 2)
    return parts[1] if len(parts) == 3 and parts[1] in {t.name for t in TIERS} else ""
