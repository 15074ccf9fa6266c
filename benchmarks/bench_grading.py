"""Grading throughput and agreement: east_ds.grading against math-verify on a rollout-shaped workload.

Workload: for each question (MATH500 golds + a GSM8K sample), 16 responses with few distinct final answers,
as a sampled rollout has: the gold, equivalent rewrites (`\\frac{1}{2}` / `0.5` / `1/2`, thousands commas,
`\\dfrac`, `\\text{}` units), 2-3 plausible wrong variants, and a response without an answer.

Timed passes (each starts with empty memo caches):
  east (rollout): per question, extract the 16 answers, cluster them by answer_key, and compare each
                  distinct key with the gold once (what the EAST core does);
  east (plain):   grade(response, gold) for every response, caches cleared before every call;
  math-verify:    parse(response) + verify(parse(gold), ...) for every response (gold parsed once).
Agreement: per response, east grade == math-verify verify; disagreements are printed for inspection.

    python benchmarks/bench_grading.py [MATH500.jsonl] [GSM8K.jsonl] [--gsm N] [--show K] [--min-rounds R]

The files default to data/math500_test.jsonl and data/gsm8k_test.jsonl, which `east-ds data math500` and
`east-ds data gsm8k` write.

Rounds repeat (at least --min-rounds) until the spread (max - min) of the rollout-mode ratio is below its margin
over the --target ratio; the median, min and max ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from pathlib import Path

from east_ds import grading
from east_ds.grading import answer_key, extract_answer, grade, is_equivalent

DATA = Path(__file__).resolve().parents[1] / "data"  # what `east-ds data math500` and `east-ds data gsm8k` write
N_PER_Q = 16


def _rewrites(g: str) -> list[str]:
    """Equivalent spellings of the gold answer g."""
    out = [g]
    m = re.fullmatch(r"-?\d+", g)
    if m:
        v = int(g)
        out += [f"{v:,}", f"{v}.0", f"\\text{{{v}}}", f"{v} \\text{{ units}}"]
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", g)
    if m:
        a, b = int(m.group(2)), int(m.group(3))
        out += [f"{m.group(1)}{a}/{b}", f"{m.group(1)}\\dfrac{{{a}}}{{{b}}}"]
        d = b
        for p in (2, 5):
            while d % p == 0:
                d //= p
        if d == 1:
            out.append(f"{m.group(1)}{a / b:g}")
    if "\\sqrt{" in g:
        out.append(re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", g))
    if "^\\circ" in g:
        out.append(g.replace("^\\circ", ""))
    return out


def _wrongs(g: str, rng: random.Random) -> list[str]:
    """Plausible wrong answers: a nearby number, a changed digit, a sign flip."""
    m = re.fullmatch(r"-?\d+", g)
    if m:
        v = int(g)
        return [str(v + rng.choice([1, -1, 2, 10])), str(v * 2), str(-v if v else 1)]
    digits = [i for i, c in enumerate(g) if c.isdigit()]
    out = []
    for _ in range(3):
        if digits:
            i = rng.choice(digits)
            out.append(g[:i] + str((int(g[i]) + rng.randint(1, 8)) % 10) + g[i + 1 :])
        else:
            out.append(g + "+1")
    return out + ["-(" + g + ")"]


def build(math_path: Path, gsm_path: Path, n_gsm: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    golds = [json.loads(x)["answer"] for x in math_path.read_text().splitlines() if x.strip()]
    gsm = [json.loads(x)["answer"] for x in gsm_path.read_text().splitlines() if x.strip()]
    golds += [a.rsplit("#### ", 1)[-1].replace(",", "").strip() for a in rng.sample(gsm, min(n_gsm, len(gsm)))]
    work = []
    for g in golds:
        good, bad = _rewrites(g), _wrongs(g, rng)
        answers = [rng.choice(good) for _ in range(8)] + [bad[0]] * 4 + [bad[1]] * 3
        rng.shuffle(answers)
        texts = [f"Step by step: we compute the value carefully.\nSo the final answer is $\\boxed{{{a}}}$."
                 for a in answers]
        texts.append("I am not sure how to finish this one.")  # no extractable answer
        work.append((g, texts))
    return work


def run_east_rollout(work) -> list[list[bool]]:
    grading.clear_caches()
    out = []
    for gold, texts in work:
        answers = [extract_answer(t) for t in texts]
        keys = [answer_key(a) for a in answers]
        verdict: dict[str, bool] = {}
        for k, a in zip(keys, answers):
            if k not in verdict:
                verdict[k] = a is not None and is_equivalent(a, gold)
        out.append([verdict[k] for k in keys])
    return out


def run_east_plain(work) -> list[list[bool]]:
    res = []
    for gold, texts in work:
        row = []
        for t in texts:
            grading.clear_caches()  # no memo hits at all: the cost of one isolated call
            row.append(grade(t, gold))
        res.append(row)
    return res


def run_math_verify(work) -> list[list[bool]]:
    from math_verify import parse, verify

    out = []
    for gold, texts in work:
        g = parse(f"${gold}$")
        out.append([bool(verify(g, parse(t))) for t in texts])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("math500", nargs="?", default=str(DATA / "math500_test.jsonl"))
    ap.add_argument("gsm8k", nargs="?", default=str(DATA / "gsm8k_test.jsonl"))
    ap.add_argument("--gsm", type=int, default=300, help="GSM8K questions to add (default 300)")
    ap.add_argument("--show", type=int, default=40, help="disagreements to print (default 40)")
    ap.add_argument("--min-rounds", type=int, default=3, help="timed rounds at least (default 3)")
    ap.add_argument("--max-rounds", type=int, default=8, help="rounds at most, until the spread of the rollout "
                    "ratio is below its margin over --target (default 8)")
    ap.add_argument("--target", type=float, default=30.0, help="rollout-mode ratio to beat (default 30)")
    args = ap.parse_args()
    work = build(Path(args.math500), Path(args.gsm8k), args.gsm)
    # Import cost is paid once per process, not per response: import both graders' dependencies first.
    import math_verify  # noqa: F401

    import east_ds.grading.latex_math  # noqa: F401
    n = sum(len(t) for _, t in work)
    names = ("east (rollout, answer_key)", "east (plain grade)", "math-verify parse+verify")
    fns = (run_east_rollout, run_east_plain, run_math_verify)
    results: dict = {}
    ratios: dict[str, list[float]] = {nm: [] for nm in names[:2]}
    rps_all: dict[str, list[float]] = {nm: [] for nm in names}
    for rnd in range(args.max_rounds):  # each round times all three graders back to back
        rps = {}
        for name, fn in zip(names, fns):
            t0 = time.perf_counter()
            results[name] = fn(work)
            rps[name] = n / (time.perf_counter() - t0)
            rps_all[name].append(rps[name])
        for nm in names[:2]:
            ratios[nm].append(rps[nm] / rps[names[2]])
        r = ratios[names[0]]
        spread, margin = max(r) - min(r), statistics.median(r) - args.target
        print(f"round {rnd + 1}: rollout {r[-1]:.1f}x, plain {ratios[names[1]][-1]:.1f}x math-verify")
        if rnd + 1 >= args.min_rounds and spread < margin:
            break
    print(f"{len(work)} questions x {N_PER_Q + 1} responses = {n} responses, {len(r)} rounds")
    print(f"{'grader':<30}{'resp/s (median)':>16}{'vs math-verify: median [min, max]':>38}")
    for name in names:
        q = ratios.get(name, [1.0] * len(r))
        print(f"{name:<30}{statistics.median(rps_all[name]):>16.0f}"
              f"{statistics.median(q):>20.1f}x [{min(q):.1f}, {max(q):.1f}]")
    print(f"rollout ratio spread (max - min) {spread:.1f}x; margin over the {args.target:.0f}x target "
          f"{margin:.1f}x: {'spread below the margin' if spread < margin else 'NOT below the margin'}")
    east, mv = results["east (rollout, answer_key)"], results["math-verify parse+verify"]
    plain = results["east (plain grade)"]
    same_modes = sum(a == b for qa, qb in zip(east, plain) for a, b in zip(qa, qb))
    print(f"east rollout vs plain grade agree: {same_modes}/{n}")
    dis = [(g, t, e, m) for (g, ts), qe, qm in zip(work, east, mv) for t, e, m in zip(ts, qe, qm) if e != m]
    print(f"agreement with math-verify: {n - len(dis)}/{n} = {100 * (n - len(dis)) / n:.2f}%")
    seen = set()
    for g, t, e, m in dis:
        a = extract_answer(t)
        if (g, a) in seen:
            continue
        seen.add((g, a))
        if len(seen) > args.show:
            break
        print(f"  gold={g!r:40} answer={a!r:40} east={e} math-verify={m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
