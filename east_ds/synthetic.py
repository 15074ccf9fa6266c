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


def make_problem(rng: random.Random, question_id: str, steps: int) -> Problem:
    """One problem of `steps` operations (1-3) on small non-negative integers."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(2, 9)
    sentences = [f"{name} has {value} {item}."]
    lines = []
    for _ in range(steps):
        ops = ["+"] + (["-"] if value >= 2 else []) + (["*"] if value < 30 else [])
        op = rng.choice(ops)
        if op == "+":
            k = rng.randint(1, 9)
            sentences.append(f"{name} gets {k} more.")
            lines.append(f"{value} + {k} = {value + k}")
            value += k
        elif op == "-":
            k = rng.randint(1, min(9, value - 1))  # keep at least one
            sentences.append(f"{name} gives away {k}.")
            lines.append(f"{value} - {k} = {value - k}")
            value -= k
        else:
            k = rng.randint(2, 3)
            sentences.append(f"{name} ends up with {'twice' if k == 2 else 'three times'} as many.")
            lines.append(f"{value} * {k} = {value * k}")
            value *= k
    sentences.append(f"How many {item} does {name} have now?")
    solution = "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}.\n#### {value}"
    return Problem(question_id, " ".join(sentences), solution, str(value))


def make_problems(count: int, seed: int = 0, prefix: str = "syn", max_steps: int = 3) -> list[Problem]:
    """`count` problems, the same for the same (count, seed, prefix, max_steps)."""
    rng = random.Random(seed)
    return [make_problem(rng, f"{prefix}-{i}", rng.randint(1, max_steps)) for i in range(count)]


def to_gsm8k_rows(problems: list[Problem]) -> list[dict]:
    """Rows with GSM8K's fields (`question`, `answer` = solution ending in `#### N`) plus an `id`."""
    return [{"id": p.question_id, "question": p.question, "answer": p.solution} for p in problems]
