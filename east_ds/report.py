"""`east-ds report RUN_DIR [RUN_DIR ...] [--out DIR]`: plots and a Markdown summary of one or more runs.

Reads only what the driver leaves on disk (`metrics.jsonl`, `iter_<k>/questions.parquet`, `config.yaml`) and
writes into the output directory:

    accuracy.png              evaluation accuracy per iteration, one line per run (legend: name, a, loss)
    entropy_<run>.png         entropy histogram per iteration, kept against dropped questions
    weights_<run>.png         weight against entropy per iteration (kept questions)
    phases_<run>.png          seconds per phase, a stacked bar per iteration
    weight_bands_<run>.png    where the weight goes: share of the weight per band of sampled accuracy, against
                              vanilla's (the share of the questions), per iteration (weighting.diagnosis)
    report.md                 accuracy table (iterations x runs), where the weight goes (a paragraph per run and
                              a comparison table), phase time shares, notes on missing pieces

A partial run (crashed, still running) is reported as far as it got; what is missing is listed under "Notes".
A directory that holds no run at all (no config.yaml, metrics.jsonl or iter_<k>/) is an error (exit status 2).
Default output: RUN_DIR/report for one run, ./report for several.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from east_ds.tables import TableError, read_jsonl, read_table

PHASES = ("rollout", "weigh", "reference", "train", "update_weights", "evaluate")  # the driver's phase order
_ITER_DIR = re.compile(r"^iter_(\d+)$")


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names it."""


# ----------------------------------------------------------------------------------------------------------------
# Loading a run directory


@dataclass
class Run:
    """What the report needs from one run directory. `notes` lists what was missing or unreadable."""

    path: Path
    name: str
    a: float | None = None
    loss: str | None = None
    metrics: dict[int, dict] = field(default_factory=dict)  # iteration -> its metrics.jsonl record
    questions: dict[int, pd.DataFrame] = field(default_factory=dict)  # iteration -> questions.parquet
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Legend text: run name + a + loss, as far as known."""
        parts = [self.name]
        if self.a is not None:
            parts.append(f"a={self.a:g}")
        if self.loss:
            parts.append(self.loss)
        return " ".join(parts)

    @property
    def accuracy(self) -> dict[int, float]:
        """iteration -> eval accuracy, for iterations that have one."""
        out = {}
        for k, m in sorted(self.metrics.items()):
            v = m.get("eval_accuracy")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[k] = float(v)
        return out


def _read_config(path: Path) -> dict:
    """The resolved run config as a dict ({} if absent or unreadable)."""
    p = path / "config.yaml"
    if not p.is_file():
        return {}
    try:
        import yaml  # a dependency of the package (config parsing)

        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def load_run(path: str | Path) -> Run:
    """Read a run directory. Raises ReportError if it is not a directory; anything else missing becomes a note."""
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"{p}: no such run directory")
    cfg = _read_config(p)
    run = Run(path=p, name=str(cfg.get("name") or p.name))
    run.a = _as_float((cfg.get("weighting") or {}).get("a"))
    run.loss = (cfg.get("training") or {}).get("loss")

    records = read_jsonl(p / "metrics.jsonl")
    if not records:
        run.notes.append("no metrics.jsonl records: falling back to iter_<k>/metrics.json")
    for rec in records:
        if isinstance(rec.get("iteration"), int):
            run.metrics[rec["iteration"]] = rec
    iter_dirs = sorted((int(m.group(1)), d) for d in p.iterdir() if d.is_dir() and (m := _ITER_DIR.match(d.name)))
    for k, d in iter_dirs:
        if k not in run.metrics and (d / "metrics.json").is_file():
            try:
                run.metrics[k] = {"iteration": k, **json.loads((d / "metrics.json").read_text(encoding="utf-8"))}
            except (json.JSONDecodeError, TypeError):
                run.notes.append(f"iter_{k}/metrics.json is not valid JSON")
        if k not in run.metrics:
            run.notes.append(f"iteration {k}: no metrics (unfinished?)")
        if k == 0:
            continue
        try:
            run.questions[k] = read_table(d / "questions.parquet", required=("entropy", "kept", "weight"))
        except TableError as e:
            run.notes.append(f"iteration {k}: questions table unusable ({e})")
    # legend fields from the metrics when config.yaml is absent
    for rec in run.metrics.values():
        run.a = run.a if run.a is not None else _as_float(rec.get("a"))
        run.loss = run.loss or rec.get("loss")
        if not cfg.get("name") and rec.get("name"):
            run.name = str(rec["name"])
    if not (cfg or records or iter_dirs):
        raise ReportError(f"{p}: holds no east_ds run (no config.yaml, metrics.jsonl or iter_<k>/ directory)")
    if not run.metrics:
        run.notes.append("no finished iteration")
    return run


def diagnosis(run: Run) -> dict[int, tuple[pd.DataFrame, dict]]:
    """iteration -> (band table, figures) recomputed from the run's questions tables (weighting.diagnosis)."""
    from east_ds.weighting.diagnosis import diagnose

    out = {}
    for k, q in sorted(run.questions.items()):
        if {"n", "n_correct", "accuracy"} <= set(q.columns) and q["kept"].astype(bool).any():
            out[k] = diagnose(q, run.questions.get(k - 1))
    return out


def diagnosis_paragraph(run: Run, diag: dict[int, tuple[pd.DataFrame, dict]]) -> str:
    """A few sentences on where the weight went, iteration by iteration."""
    parts = []
    for k, (_, f) in diag.items():
        s = (f"Iteration {k}: {f['low_weight_share']:.0%} of the weight on questions with {f['low_band']} correct "
             f"(vanilla: {f['low_question_share']:.0%}); entropy against correct samples rho = "
             f"{f['rho_entropy_correct']:+.2f}")
        if not math.isnan(f["rho_weight_gain"]):
            s += (f"; the previous weights against this iteration's gain in sampled accuracy rho = "
                  f"{f['rho_weight_gain']:+.2f} over {f['questions_paired']} questions")
        parts.append(s + ".")
    if not parts:
        return "No weighting tables yet."
    worst = max(f["low_weight_share"] - f["low_question_share"] for _, f in diag.values())
    verdict = ("Weight moved towards questions the model rarely solves." if worst > 0.05 else
               "Weight did not move towards questions the model rarely solves.")
    return " ".join(parts) + " " + verdict


def _as_float(v) -> float | None:
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _unique_labels(runs: list[Run]) -> list[str]:
    """Column names for the runs: the run name, disambiguated by its directory when two runs share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else f"{r.name} ({r.path})" for r in runs]


# ----------------------------------------------------------------------------------------------------------------
# Tables


def accuracy_table(run_dirs: list[str | Path] | list[Run]) -> pd.DataFrame:
    """Eval accuracy side by side: rows = iteration (index named "iteration"), one column per run (its name).

    A run that has no evaluation for an iteration shows NaN there.
    """
    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    cols = {label: pd.Series(r.accuracy, dtype=float) for label, r in zip(_unique_labels(runs), runs)}
    table = pd.DataFrame(cols)
    table.index.name = "iteration"
    return table.sort_index()


def phase_table(run: Run) -> pd.DataFrame:
    """Seconds per phase: rows = iteration, columns = phases (driver order first, then any others), NaN-free."""
    rows = {k: {ph: float(s) for ph, s in (m.get("phase_seconds") or {}).items() if _as_float(s) is not None}
            for k, m in sorted(run.metrics.items())}
    table = pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
    order = [p for p in PHASES if p in table.columns] + sorted(c for c in table.columns if c not in PHASES)
    table = table[order] if order else table
    table.index.name = "iteration"
    return table


def _markdown(df: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    """A pipe table; NaN shows as '-'. (No `tabulate` dependency.)"""
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for idx, row in df.iterrows():
        cells = ["-" if pd.isna(v) else fmt.format(v) for v in row]
        lines.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def plot_accuracy(runs: list[Run], out: Path) -> Path | None:
    """One line per run: eval accuracy against iteration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for r in runs:
        acc = r.accuracy
        if acc:
            ax.plot(list(acc), [100 * v for v in acc.values()], marker="o", label=r.label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("iteration (0 = starting model)")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Evaluation accuracy per iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _grid(n: int):
    plt = _plt()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def plot_entropy(run: Run, out: Path) -> Path | None:
    """Entropy histogram per iteration, kept questions against dropped ones (all-correct/all-wrong have h = 0
    or near it; the filter, not the entropy, drops them)."""
    iters = sorted(run.questions)
    if not iters:
        return None
    plt, fig, axes = _grid(len(iters))
    for ax, k in zip(axes, iters):
        q = run.questions[k]
        kept = q["kept"].astype(bool)
        h = q["entropy"].astype(float)
        top = float(h.max()) if len(h) and h.max() > 0 else 1.0
        bins = [top * i / 20 for i in range(21)]
        ax.hist([h[kept], h[~kept]], bins=bins, stacked=True, color=["tab:blue", "tab:gray"],
                label=[f"kept ({int(kept.sum())})", f"dropped ({int((~kept).sum())})"])
        ax.set_title(f"iteration {k}")
        ax.set_xlabel("entropy h(x)")
        ax.set_ylabel("questions")
        ax.legend(fontsize=8)
    fig.suptitle(f"Answer entropy per question: {run.label}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_weights(run: Run, out: Path) -> Path | None:
    """Weight f(h; a) against entropy per iteration, kept questions only (dropped ones have no weight)."""
    iters = [k for k in sorted(run.questions) if run.questions[k]["kept"].astype(bool).any()]
    if not iters:
        return None
    plt, fig, axes = _grid(len(iters))
    for ax, k in zip(axes, iters):
        q = run.questions[k]
        q = q[q["kept"].astype(bool)]
        ax.scatter(q["entropy"], q["weight"], s=12, alpha=0.7)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")  # weights average 1 over the kept set
        ax.set_title(f"iteration {k} ({len(q)} kept)")
        ax.set_xlabel("entropy h(x)")
        ax.set_ylabel("weight")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Weight against entropy: {run.label}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_phases(run: Run, out: Path) -> Path | None:
    """Seconds per phase as a stacked bar per iteration."""
    table = phase_table(run)
    if table.empty or not table.columns.size:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(table) + 3), 4.5))
    bottom = [0.0] * len(table)
    x = [str(k) for k in table.index]
    for ph in table.columns:
        vals = table[ph].tolist()
        ax.bar(x, vals, bottom=bottom, label=ph)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("iteration")
    ax.set_ylabel("seconds")
    ax.set_title(f"Time per phase: {run.label}")
    handles, labels = ax.get_legend_handles_labels()  # legend top-down in the same order as the stack
    ax.legend(handles[::-1], labels[::-1], fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_weight_bands(run: Run, diag: dict[int, tuple[pd.DataFrame, dict]], out: Path) -> Path | None:
    """Per iteration, the share of the weight in each accuracy band (bars) against the share of the questions
    (vanilla's weight share, markers)."""
    if not diag:
        return None
    plt, fig, axes = _grid(len(diag))
    for ax, (k, (table, _)) in zip(axes, diag.items()):
        x = range(len(table))
        ax.bar(x, table["weight_share"], color="tab:orange", label="weight share")
        ax.plot(x, table["question_share"], "k_", markersize=18, mew=2, label="vanilla (question share)")
        ax.set_xticks(list(x), table["band"])
        ax.set_title(f"iteration {k}")
        ax.set_xlabel("correct samples")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"where the weight goes: {run.label}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The report


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write the plots and `report.md` for `run_dirs` into `out_dir`; return the path of report.md.

    Raises ReportError naming the first run directory that does not exist.
    """
    runs = [load_run(p) for p in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slugs = _unique_labels(runs)
    slugs = [_slug(s) for s in slugs]

    md = ["# EAST run report", "", "Runs:", ""]
    md += [f"- **{r.label}**: `{r.path}`" for r in runs]

    md += ["", "## Eval accuracy per iteration", ""]
    acc = accuracy_table(runs)
    if acc.empty:
        md.append("No evaluation results yet.")
    else:
        md.append(_markdown(acc))
        if plot_accuracy(runs, out / "accuracy.png"):
            md += ["", "![accuracy](accuracy.png)"]

    diags = [diagnosis(r) for r in runs]
    md += ["", "## Where the weight goes", "",
           "Share of the weight on the lowest band of sampled accuracy (vanilla's share in brackets), and the rank "
           "correlations of entropy with correct samples and of the previous weights with the gain "
           "(weighting.diagnosis).", "", "| run | iteration | low band | weight share | rho entropy-correct | "
           "rho weight-gain |", "|---|---|---|---|---|---|"]
    for r, diag in zip(runs, diags):
        for k, (_, f) in diag.items():
            gain = "-" if math.isnan(f["rho_weight_gain"]) else f"{f['rho_weight_gain']:+.2f}"
            md.append(f"| {r.label} | {k} | {f['low_band']} | {f['low_weight_share']:.0%} "
                      f"({f['low_question_share']:.0%}) | {f['rho_entropy_correct']:+.2f} | {gain} |")

    for r, slug, diag in zip(runs, slugs, diags):
        md += ["", f"## {r.label}", "", diagnosis_paragraph(r, diag)]
        png = plot_weight_bands(r, diag, out / f"weight_bands_{slug}.png")
        if png:
            md += ["", f"![weight bands]({png.name})", ""]
        phases = phase_table(r)
        if not phases.empty:
            total = float(phases.to_numpy().sum())
            shares = phases.sum() / total * 100 if total > 0 else phases.sum() * 0
            md += ["Phase time shares (all iterations):", "",
                   "| phase | seconds | share |", "|---|---|---|"]
            md += [f"| {ph} | {phases[ph].sum():.1f} | {shares[ph]:.1f}% |" for ph in phases.columns]
            md.append(f"| total | {total:.1f} | 100% |")
        for kind, fn in (("phases", plot_phases), ("entropy", plot_entropy), ("weights", plot_weights)):
            png = fn(r, out / f"{kind}_{slug}.png")
            if png:
                md += ["", f"![{kind}]({png.name})"]
        if r.questions:
            md += ["", "| iteration | questions | kept | mean entropy (kept) | weight min | weight max |",
                   "|---|---|---|---|---|---|"]
            for k, q in sorted(r.questions.items()):
                kq = q[q["kept"].astype(bool)]
                md.append(f"| {k} | {len(q)} | {len(kq)} | {kq['entropy'].mean():.3f} | "
                          f"{kq['weight'].min():.3f} | {kq['weight'].max():.3f} |" if len(kq) else
                          f"| {k} | {len(q)} | 0 | - | - | - |")
        if r.notes:
            md += ["", "Notes:", ""] + [f"- {n}" for n in r.notes]

    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots and a Markdown summary of one or more run directories",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output directory (RUN_DIR/report or ./report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.run_dirs if not Path(p).is_dir()]
    if missing:
        print(f"east-ds report: error: no such run directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.out or (args.run_dirs[0] / "report" if len(args.run_dirs) == 1 else Path("report"))
    try:
        path = write_report(list(args.run_dirs), out)
    except ReportError as e:
        print(f"east-ds report: error: {e}", file=sys.stderr)
        return 2
    print(path)
    print(accuracy_table(list(args.run_dirs)).to_string(float_format=lambda v: f"{v:.3f}"))
    return 0
