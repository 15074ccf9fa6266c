"""Tables and plots of the study (benchmarks/study/study.py) from what it recorded, and STUDY.md's results block.

    python benchmarks/study/study.py --analyze-only [--results benchmarks/study]

Reads <results>/results.jsonl, <results>/questions/*.parquet and <results>/eval/*.parquet; writes into <results>:
accuracy.png, paired_diff.png, entropy_iter1.png, mechanism.png and tables.md, and replaces the text between
the markers below in STUDY.md. Works on a partial study: it reports the seeds recorded so far and says so.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.study.study_stats import (discordance, mde_paired, mechanism, paired_differences, summarize)
from east_ds.report import _plt

BEGIN, END = "<!-- study-results:begin -->", "<!-- study-results:end -->"
# STUDY.md's learnability block: learn_a1_section over <results>/learn_rebuilt (its own warm starts, see there)
LEARN_BEGIN, LEARN_END = "<!-- learn-a1:begin -->", "<!-- learn-a1:end -->"
LEARN_DIR = "learn_rebuilt"


def load_results(results: Path) -> pd.DataFrame:
    from east_ds.tables import read_jsonl

    rows = read_jsonl(results / "results.jsonl")
    if not rows:
        raise SystemExit(f"study: {results / 'results.jsonl'} has no rows yet")
    df = pd.DataFrame(rows).drop_duplicates(["arm", "seed", "iteration"], keep="last")
    return df.sort_values(["arm", "seed", "iteration"]).reset_index(drop=True)


def _load_parquets(folder: Path) -> pd.DataFrame:
    from east_ds.tables import read_table

    frames = []
    for f in sorted(folder.glob("seed*_*.parquet")):
        m = re.match(r"seed(\d+)_(.+)\.parquet$", f.name)
        if m:
            frames.append(read_table(f).assign(seed=int(m.group(1)), arm=m.group(2)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def complete_seeds(df: pd.DataFrame, arms: list[str]) -> list[int]:
    """Seeds with every arm recorded up to the study's last iteration."""
    last = int(df["iteration"].max())
    done = df[df["iteration"] == last].groupby("seed")["arm"].apply(set)
    return sorted(int(s) for s, a in done.items() if set(arms) <= a)


def reference_of(arm: str, reference: str) -> str:
    """The arm `arm` is paired with: a DPO arm with dpo_vanilla (same loss, only the weights differ), every other
    arm, dpo_vanilla included (the loss against SFT), with the study's reference."""
    return "dpo_vanilla" if arm.startswith("dpo_") and arm != "dpo_vanilla" else reference


def paired(frame: pd.DataFrame, reference: str, fn) -> pd.DataFrame:
    """fn(rows of one arm and its partner, partner) for every arm but the reference, with an `against` column."""
    out = []
    for arm in sorted(set(frame["arm"]) - {reference}):
        ref = reference_of(arm, reference)
        part = fn(frame[frame["arm"].isin([arm, ref])], ref)
        if not part.empty:
            out.append(part.assign(against=ref))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _interval(lo: float, hi: float, scale: float = 100.0) -> str:
    return f"[{scale * lo:+.1f}, {scale * hi:+.1f}]"


def _fmt(mean: float, lo: float, hi: float, scale: float = 100.0) -> str:
    return f"{scale * mean:+.1f} {_interval(lo, hi, scale)}"


def _md(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def accuracy_table(df: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """arm x iteration: mean accuracy over seeds (%) with its bootstrap interval; rows in the order of `arms`."""
    s = summarize(df, ["arm", "iteration"], "accuracy")
    s["cell"] = [f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for m, lo, hi in zip(s["mean"], s["lo"], s["hi"])]
    table = s.pivot(index="arm", columns="iteration", values="cell").rename_axis(None, axis=1)
    return table.reindex([a for a in arms if a in table.index]).reset_index()


def diff_table(diffs: pd.DataFrame) -> pd.DataFrame:
    s = summarize(diffs, ["arm", "against", "iteration"], "diff")
    return pd.DataFrame({"arm": s["arm"], "against": s["against"], "iteration": s["iteration"], "seeds": s["seeds"],
                         "difference (points) [95% CI]": [_fmt(m, lo, hi) for m, lo, hi in
                                                          zip(s["mean"], s["lo"], s["hi"])],
                         "t 95% CI": [_interval(lo, hi) for lo, hi in zip(s["t_lo"], s["t_hi"])],
                         "seeds above": s["positive"], "sign test p": s["sign_p"].round(3)})


def gain_table(df: pd.DataFrame, last: int) -> pd.DataFrame:
    """Per arm: final accuracy minus the warm start's, over seeds."""
    wide = df.pivot_table(index=["arm", "seed"], columns="iteration", values="accuracy").reset_index()
    if last not in wide.columns or 0 not in wide.columns:
        return pd.DataFrame()
    wide["gain"] = wide[last] - wide[0]
    s = summarize(wide.dropna(subset=["gain"]), ["arm"], "gain")
    return pd.DataFrame({"arm": s["arm"], "seeds": s["seeds"],
                         f"gain 0 -> {last} (points) [95% CI]": [_fmt(m, lo, hi) for m, lo, hi in
                                                                 zip(s["mean"], s["lo"], s["hi"])],
                         "t 95% CI": [_interval(lo, hi) for lo, hi in zip(s["t_lo"], s["t_hi"])]})


def mde_lines(evals: pd.DataFrame, diffs: pd.DataFrame, reference: str, last: int, n_seeds: int) -> list[str]:
    """The minimal detectable difference, from the observed discordance and the seed-to-seed spread."""
    if evals.empty:
        return ["(no per-question evaluations recorded)"]
    d = []
    final = evals[evals["iteration"] == last]
    for (arm, seed), g in final.groupby(["arm", "seed"]):
        ref = final[(final["arm"] == reference_of(arm, reference)) & (final["seed"] == seed)]
        if arm != reference and not ref.empty:
            d.append(discordance(g, ref))
    n = int(final.groupby(["arm", "seed"]).size().max())
    if not d:
        return ["(no paired evaluations yet)"]
    dbar = float(np.mean(d))
    out = [f"- Test set: {n} questions. Observed discordance at iteration {last} (share of test questions where "
           f"an arm and its partner ({reference}, or dpo_vanilla for a DPO arm) of the same seed disagree, one "
           f"right and one wrong): mean {dbar:.3f} "
           f"(range {min(d):.3f}-{max(d):.3f}).",
           f"- Test-set MDE (two-sided 5%, power 80%, McNemar normal approximation, "
           f"`mde_paired`): {100 * mde_paired(dbar, n):.1f} points for one seed, "
           f"{100 * mde_paired(dbar, n, max(n_seeds, 1)):.1f} points for the mean over {n_seeds} seeds."]
    fin = diffs[diffs["iteration"] == last].groupby("arm")["diff"].std()
    if len(fin.dropna()):
        sd = float(fin.dropna().mean())
        out.append(f"- Seed-to-seed: the standard deviation over seeds of an arm's final paired difference is "
                   f"{100 * sd:.1f} points on average over arms, so training noise gives an MDE of about "
                   f"{100 * 2.8 * sd / math.sqrt(max(n_seeds, 1)):.1f} points for the mean over {n_seeds} seeds "
                   f"(2.8 sd / sqrt(seeds), normal approximation; optimistic with so few seeds).")
    return out


def entropy_table(questions: pd.DataFrame, reference: str) -> pd.DataFrame:
    from east_ds.data.synthetic import tier_of

    q = questions[(questions["arm"] == reference) & (questions["iteration"] == 1)].copy()
    if q.empty:
        return pd.DataFrame()
    q["tier"] = q["question_id"].map(tier_of)
    rows = []
    for tier, g in q.groupby("tier", sort=False):
        rows.append({"tier": tier, "questions": len(g), "sampled accuracy": round(g["accuracy"].mean(), 3),
                     "all correct": f"{(g['n_correct'] == g['n']).mean():.0%}",
                     "all wrong": f"{(g['n_correct'] == 0).mean():.0%}", "kept": f"{g['kept'].mean():.0%}",
                     "mean entropy (kept)": round(g.loc[g["kept"], "entropy"].mean(), 3)})
    order = {"easy": 0, "medium": 1, "hard": 2, "hopeless": 3}
    return pd.DataFrame(rows).sort_values("tier", key=lambda s: s.map(order)).reset_index(drop=True)


def tier_accuracy_table(evals: pd.DataFrame, arms: list[str], last: int) -> pd.DataFrame:
    """Test accuracy at the last iteration by difficulty tier (%, mean over seeds), and the warm start's."""
    from east_ds.data.synthetic import tier_of

    e = evals[evals["iteration"].isin([0, last])].copy()
    if e.empty:
        return pd.DataFrame()
    e["tier"] = e["question_id"].map(tier_of)
    per_seed = e.groupby(["arm", "seed", "iteration", "tier"])["correct"].mean().reset_index()
    mean = per_seed.groupby(["arm", "iteration", "tier"])["correct"].mean().unstack("tier")
    order = [t for t in ("easy", "medium", "hard", "hopeless") if t in mean.columns]
    rows = [{"model": "warm start (iteration 0)", **{t: round(100 * mean.loc[(arms[0], 0), t], 1) for t in order}}]
    rows += [{"model": f"{arm}, iteration {last}", **{t: round(100 * mean.loc[(arm, last), t], 1) for t in order}}
             for arm in arms if (arm, last) in mean.index]
    return pd.DataFrame(rows) if (arms[0], 0) in mean.index else pd.DataFrame()


def weight_band_table(questions: pd.DataFrame, arms: list[str], iteration: int = 1) -> pd.DataFrame:
    """Per arm, the mean over seeds of its weight share in each diagnosis band at `iteration`, in %; first row
    `questions`, the share of the kept questions (vanilla's weight share)."""
    from east_ds.weighting.diagnosis import band_table

    q = questions[questions["iteration"] == iteration]
    rows = []
    for (arm, seed), g in q.groupby(["arm", "seed"]):
        t = band_table(g)
        rows += [{"arm": arm, "seed": seed, "band": r.band, "lo": r.lo, "weight": 100 * r.weight_share,
                  "questions": 100 * r.question_share} for r in t.itertuples()]
    if not rows:
        return pd.DataFrame()
    b = pd.DataFrame(rows)
    labels = list(dict.fromkeys(b.sort_values("lo")["band"]))
    share = b.groupby(["arm", "band"])[["weight", "questions"]].mean()
    first = b["arm"].iloc[0]
    table = [{"arm": "questions", **{lab: f"{share.loc[(first, lab), 'questions']:.1f}" for lab in labels}}]
    table += [{"arm": arm, **{lab: f"{share.loc[(arm, lab), 'weight']:.1f}" for lab in labels}}
              for arm in arms if arm in share.index.get_level_values("arm")]
    return pd.DataFrame(table)


def mechanism_table(mech: pd.DataFrame) -> pd.DataFrame:
    # an arm whose weights are all equal (dpo_vanilla against vanilla) has no slope: nothing to predict with
    mech = mech.dropna(subset=["slope"])
    if mech.empty:
        return pd.DataFrame()
    mech = mech.assign(top_minus_bottom=mech["top_quartile"] - mech["bottom_quartile"])
    s = summarize(mech, ["arm", "against"], "slope")
    t = summarize(mech, ["arm", "against"], "top_minus_bottom")
    c = mech.groupby("arm")["corr_own"].mean()
    return pd.DataFrame({
        "arm": s["arm"], "against": s["against"], "seeds": s["seeds"],
        "slope: excess change per unit weight (points) [95% CI]": [_fmt(m, lo, hi) for m, lo, hi in
                                                                  zip(s["mean"], s["lo"], s["hi"])],
        "top - bottom weight quartile, excess change (points) [95% CI]": [
            _fmt(m, lo, hi) for m, lo, hi in zip(t["mean"], t["lo"], t["hi"])],
        "sign test p (slope)": s["sign_p"].round(3),
        "corr(weight, own change)": [round(float(c[a]), 3) for a in s["arm"]]})


# ---------------------------------------------------------------------------------------------------------------
# plots


def _save(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label the axes, add the legend, write the PNG and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(df: pd.DataFrame, out: Path) -> None:
    plt = _plt()

    s = summarize(df, ["arm", "iteration"], "accuracy")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, g in s.groupby("arm", sort=False):
        ax.plot(g["iteration"], 100 * g["mean"], marker="o", label=arm)
        ax.fill_between(g["iteration"], 100 * g["lo"], 100 * g["hi"], alpha=0.15)
    ax.set_xticks(sorted(s["iteration"].unique()))
    _save(plt, fig, ax, out / "accuracy.png",
          "iteration (0 = warm start)",
          "test accuracy (%)",
          "Test accuracy: mean over seeds, bootstrap 95% band\n(bands hold seed-to-seed spread; "
          "the paired differences remove it)")


def plot_diffs(diffs: pd.DataFrame, out: Path, reference: str) -> None:
    plt = _plt()

    s = summarize(diffs, ["arm", "against", "iteration"], "diff")
    arms = list(dict.fromkeys(s["arm"]))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        g = s[s["arm"] == arm]
        x = g["iteration"] + (i - (len(arms) - 1) / 2) * width
        against = g["against"].iloc[0]
        ax.errorbar(x, 100 * g["mean"], yerr=[100 * (g["mean"] - g["lo"]), 100 * (g["hi"] - g["mean"])],
                    fmt="o", capsize=3, label=arm if against == reference else f"{arm} - {against}")
        seeds = diffs[diffs["arm"] == arm]
        ax.scatter(seeds["iteration"] + (i - (len(arms) - 1) / 2) * width, 100 * seeds["diff"], s=8, alpha=0.4,
                   color="grey")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(sorted(s["iteration"].unique()))
    _save(plt, fig, ax, out / "paired_diff.png",
          "iteration",
          "accuracy minus partner (points)",
          f"Paired difference against {reference} (DPO arms: dpo_vanilla):\nmean, bootstrap 95% CI, seeds (grey)")


def plot_entropy(questions: pd.DataFrame, out: Path, reference: str) -> None:
    plt = _plt()

    from east_ds.data.synthetic import TIERS, tier_of

    q = questions[(questions["arm"] == reference) & (questions["iteration"] == 1)]
    if q.empty:
        return
    tiers = q["question_id"].map(tier_of)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, max(float(q["entropy"].max()), 0.1), 21)
    ax.hist([q.loc[tiers == t.name, "entropy"] for t in TIERS], bins=bins, stacked=True,
            label=[t.name for t in TIERS])
    _save(plt, fig, ax, out / "entropy_iter1.png",
          "answer entropy at iteration 1 (nats; 0 = every sample gives the same answer)",
          "training questions (all seeds)",
          "Entropy of iteration 1's answers, by difficulty tier")


def plot_mechanism(questions: pd.DataFrame, out: Path, reference: str) -> None:
    """Mean change of sampled accuracy from iteration 1 to 2, by quintile of iteration 1's entropy, per arm."""
    plt = _plt()

    q = questions[questions["iteration"].isin([1, 2])]
    wide = q.pivot_table(index=["arm", "seed", "question_id"], columns="iteration", values="accuracy")
    if 2 not in wide.columns:
        return
    change = (wide[2] - wide[1]).rename("change").reset_index()
    first = q[(q["iteration"] == 1) & q["kept"]][["arm", "seed", "question_id", "entropy"]]
    change = change.merge(first, on=["arm", "seed", "question_id"])
    # quintiles within each run (at iteration 1 every arm of a seed has the same kept questions and entropies)
    change["bin"] = change.groupby(["arm", "seed"])["entropy"].transform(
        lambda e: np.minimum(4, (e.rank(method="first") - 1) * 5 // len(e)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, g in change.groupby("arm", sort=False):
        m = g.groupby("bin")["change"].mean()
        ax.plot(m.index + 1, 100 * m.to_numpy(), marker="o", label=arm, lw=2.5 if arm == reference else 1.2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(1, 6))
    _save(plt, fig, ax, out / "mechanism.png",
          "quintile of iteration 1's answer entropy (1 = most certain kept questions)",
          "change of sampled accuracy, 1 -> 2 (points)",
          "Per-question change after one iteration, by entropy")


# ---------------------------------------------------------------------------------------------------------------


def analyze(results: Path, reference: str = "vanilla", study_md: Path | None = None) -> str:
    """Write tables.md and the plots into `results`; rewrite STUDY.md's results block if given (and its
    learnability block when `results` holds the learn_rebuilt folder). Returns the Markdown of the results."""
    df = load_results(results)
    arms = list(dict.fromkeys([reference, *sorted(df["arm"].unique())]))
    last = int(df["iteration"].max())
    seeds = complete_seeds(df, arms)
    questions = _load_parquets(results / "questions")
    evals = _load_parquets(results / "eval")
    diffs = paired(df[df["iteration"] > 0], reference, paired_differences)  # iteration 0: the same model in all
    plot_accuracy(df, results)
    if not diffs.empty:
        plot_diffs(diffs, results, reference)
    if not questions.empty:
        plot_entropy(questions, results, reference)
        plot_mechanism(questions, results, reference)
    recorded = df.groupby("seed")["arm"].nunique()
    parts = [
        f"Recorded: {len(df)} rows, arms {', '.join(arms)}; seeds with every arm through iteration {last}: "
        f"{', '.join(map(str, seeds)) or 'none'} ({len(seeds)} of {len(recorded)} seeds started).",
        "", "### Test accuracy (%), mean over seeds [bootstrap 95% interval]", "", _md(accuracy_table(df, arms)), "",
        "![accuracy](study/accuracy.png)", ""]
    if not diffs.empty:
        parts += [f"### Paired difference against {reference}, per iteration", "",
                  f"Arm minus its partner (`against`: {reference}; dpo_vanilla for a DPO arm) on the same seed "
                  "(same warm start, same test set), in accuracy points; [95% CI]: exact bootstrap of the mean over "
                  "seeds; t 95% CI: the Student-t interval over seeds (with few seeds the bootstrap runs narrow, the "
                  "t interval is the conservative one); sign test: two-sided exact, over seeds.", "",
                  _md(diff_table(diffs)), "", "![paired differences](study/paired_diff.png)", ""]
    cap = df[(df["iteration"] > 0) & df["arm"].isin(["east_a1_cap2", "east_a1"])]
    if set(cap["arm"]) == {"east_a1_cap2", "east_a1"}:  # the diagnosis arm against EAST itself
        vs = paired_differences(cap, "east_a1").assign(against="east_a1")
        parts += ["### The diagnosis arm against east_a1, per iteration", "",
                  "east_a1_cap2 keeps EAST's weights (a = 1) but caps at 1 the weight of a question with at most 2 "
                  "of 16 correct samples (`weighting.cap_at_most_correct=2`, a departure from the paper); the "
                  "same paired difference as above, against east_a1 instead of vanilla.", "",
                  _md(diff_table(vs)), ""]
    learn = df[(df["iteration"] > 0) & df["arm"].isin(["learn_a1", "east_a1"])]
    if set(learn["arm"]) == {"learn_a1", "east_a1"}:  # learnability against EAST itself
        vs = paired_differences(learn, "east_a1").assign(against="east_a1")
        parts += ["### Learnability against east_a1, per iteration", "",
                  "learn_a1 weighs each kept question by p(1 - p), p its share of correct samples (docs/method.md "
                  "section 4); the same paired difference as above, against east_a1 instead of vanilla.", "",
                  _md(diff_table(vs)), ""]
    bands = weight_band_table(questions, arms) if not questions.empty else pd.DataFrame()
    if not bands.empty:
        parts += ["### Where the weight went at iteration 1 (%, mean over seeds)", "",
                  "Share of each arm's training weight on the kept questions with 1-2, 3-5, 6-10 and 11-15 correct "
                  "samples of 16 (weighting.diagnosis bands); `questions` is the share of the kept questions, "
                  "which is vanilla's weight share. Iteration 1's rollouts are shared, so every arm weighs the "
                  "same questions.", "", _md(bands), ""]
    gains = gain_table(df, last)
    if not gains.empty:
        parts += [f"### Gain over the warm start (iteration 0 -> {last})", "", _md(gains), ""]
    tiers = tier_accuracy_table(evals, arms, last) if not evals.empty else pd.DataFrame()
    if not tiers.empty:
        parts += ["### Test accuracy by difficulty tier (%, mean over seeds)", "", _md(tiers), ""]
    parts += ["### Minimal detectable difference", "",
              *mde_lines(evals, diffs, reference, last, len(seeds) or int(df["seed"].nunique())), ""]
    ent = entropy_table(questions, reference) if not questions.empty else pd.DataFrame()
    if not ent.empty:
        parts += ["### The task's regime: iteration 1 by difficulty tier (the reference arm, all seeds)", "",
                  _md(ent), "", "![entropy at iteration 1](study/entropy_iter1.png)", ""]
    mech = paired(questions, reference, lambda q, ref: mechanism(q, ref, 1)) if not questions.empty \
        else pd.DataFrame()
    mt = mechanism_table(mech)
    if not mt.empty:
        parts += ["### Mechanism: does the weight predict the next iteration's change? (iteration 1 -> 2)", "",
                  f"Per question kept at iteration 1 (shared rollouts, so same start for every arm): excess change "
                  f"= the arm's change of sampled accuracy from iteration 1 to 2 minus its partner's (`against`) "
                  f"change on the same question. Slope of excess change on the arm's weight, and the top minus "
                  f"bottom weight quartile, per seed; mean over seeds with bootstrap interval.", "", _md(mt), "",
                  "![mechanism](study/mechanism.png)", ""]
    text = "\n".join(parts)
    (results / "tables.md").write_text(text + "\n")
    if study_md is not None:
        write_block(study_md, text)
        if (results / LEARN_DIR / "results.jsonl").is_file():  # the learnability runs, paired among themselves
            write_block(study_md, learn_a1_section(results / LEARN_DIR), LEARN_BEGIN, LEARN_END)
    print(text)
    return text


def learn_a1_section(results: Path) -> str:
    """STUDY.md's learnability block: learn_a1 against vanilla and east_a1 re-run on the same rebuilt warm starts
    (recorded apart in `results`), over the seeds with all three arms through the last iteration."""
    from east_ds.weighting.paired import paired_differences as paired_diffs

    arms = ["vanilla", "east_a1", "learn_a1"]
    df = load_results(results)
    seeds = complete_seeds(df[df["arm"].isin(arms)], arms)
    df = df[df["seed"].isin(seeds) & df["arm"].isin(arms)]
    q, ev = (_load_parquets(results / sub) for sub in ("questions", "eval"))
    q, ev = q[q["seed"].isin(seeds)], ev[ev["seed"].isin(seeds)]
    d = df[df["iteration"] > 0]
    vs_v = paired_diffs(d, "vanilla").assign(against="vanilla")
    vs_e = paired_diffs(d[d["arm"] != "vanilla"], "east_a1").assign(against="east_a1")
    last = int(df["iteration"].max())
    return "\n".join([
        f"Seeds with all three arms through iteration {last}: {', '.join(map(str, seeds))} ({len(seeds)} of 5).", "",
        "Test accuracy (%), mean over those seeds [bootstrap interval]:", "", _md(accuracy_table(df, arms)), "",
        "Paired differences (points; the t 95% interval needs at least 2 seeds):", "",
        _md(diff_table(pd.concat([vs_v, vs_e], ignore_index=True))), "",
        "Where the weight went at iteration 1 (% of each arm's weight per band of correct samples of 16; the three "
        "arms weigh the same questions):", "", _md(weight_band_table(q, arms)), "",
        *mde_lines(ev, vs_v, "vanilla", last, len(seeds))])


def write_block(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the markers `begin` and `end` in `path` with `text`."""
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"study: {path} lacks the markers {begin} ... {end}")
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
