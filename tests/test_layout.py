"""The package's layout is the pipeline: a folder per stage, and no stage imports one above it.

Layers, bottom to top (a module may import its own layer and those below it, never one above):
    base       config, schema, tables, metrics, rundir   what every stage shares
    grading    answer extraction and equivalence (pure)  used by data (gold answers), rollout (eval), weighting
    data       questions in, prompts and gold answers    (+ the synthetic task and tiny models built on the fly)
    cluster    Ray, placement, what differs on GPUs
    rollout    vLLM engines: rollouts.parquet
    weighting  graded -> entropy -> weights -> examples.parquet
    training   DeepSpeed: examples.parquet -> a checkpoint
    checks     preflight, smoke check, bench of a whole setup
    driver     the iteration loop, reports
    commands   the CLI, the demo, the deepspeed entry point
Imports are read with `ast` from the source (module level and inside functions alike)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "east_ds"
LAYERS = ["base", "grading", "data", "cluster", "rollout", "weighting", "training", "checks", "driver", "commands"]
TOP = {"config": "base", "schema": "base", "tables": "base", "metrics": "base", "rundir": "base",
       "driver": "driver", "report": "driver", "compare": "driver", "preflight": "checks",
       "cli": "commands", "demo": "commands", "train": "commands", "__init__": "base"}
HEAVY = ("vllm", "deepspeed", "ray")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    return parts[1] if (PKG / parts[1]).is_dir() else TOP[parts[1]]


def imports(f: Path, known: dict) -> set[str]:
    """east_ds modules that file `f` imports (resolved to the longest known module name)."""
    out = set()
    for node in ast.walk(ast.parse(f.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.startswith("east_ds"):
                while n not in known and "." in n:
                    n = n.rsplit(".", 1)[0]
                out.add(n)
    return out


def test_no_stage_imports_one_above_it():
    known = modules()
    bad = [f"{m} ({layer(m)}) imports {i} ({layer(i)})" for m, f in known.items() for i in imports(f, known)
           if LAYERS.index(layer(i)) > LAYERS.index(layer(m))]
    assert not bad, "\n".join(bad)


def test_training_and_rollout_do_not_import_each_other():
    """They meet only through the layers below (cluster.weight_sync holds both ends of a weight update)."""
    known = modules()
    bad = [f"{m} imports {i}" for m, f in known.items() for i in imports(f, known)
           if {layer(m), layer(i)} == {"training", "rollout"}]
    assert not bad, "\n".join(bad)


def test_no_function_over_80_lines():
    long = {}
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long[f"{f.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, long


def test_no_import_cycles_between_modules():
    known = modules()
    graph = {m: {i for i in imports(f, known) if i != m and not m.startswith(i + ".")} for m, f in known.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for i in graph.get(m, ()):
            visit(i)
        stack.pop()

    for m in graph:
        visit(m)
    assert not cycles, cycles


def test_layout_sizes():
    top = [f for f in PKG.glob("*.py")]
    assert len(top) <= 12, sorted(f.name for f in top)
    long = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > 500}
    assert not long, long
    for d in [d for d in PKG.iterdir() if d.is_dir() and d.name != "__pycache__"]:
        doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text()))
        assert doc and "reads" in doc.lower() and "writes" in doc.lower(), f"{d.name}/__init__.py: say what it reads and writes"


def test_importing_the_stage_packages_loads_no_heavy_framework():
    """In one fresh process, each stage package in turn: the first whose import brings in Ray, vLLM or DeepSpeed
    is named."""
    packages = sorted(d.name for d in PKG.iterdir() if d.is_dir() and d.name != "__pycache__")
    code = ("import importlib, json, sys\n"
            f"for p in ['east_ds'] + ['east_ds.' + n for n in {packages!r}]:\n"
            "    importlib.import_module(p)\n"
            f"    heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "    print(json.dumps([p, heavy]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = [json.loads(line) for line in out.stdout.splitlines()]
    assert [p for p, _ in loaded] == ["east_ds"] + [f"east_ds.{n}" for n in packages]
    assert all(not heavy for _, heavy in loaded), [(p, h) for p, h in loaded if h][:1]


# The method spec and platform notes that once sat beside the repository, and the data folder beside it. Written so
# that this file does not match itself.
OUTSIDE = re.compile(rb"(?:EAST|PLATFORM).md|[.][.]/shared")


def test_no_tracked_file_points_outside_the_repository():
    """A clone stands alone: no tracked file cites a document or data folder that lived beside the repository.
    The method is docs/method.md; a platform fact is stated in the comment that relies on it; benchmarks read the
    files `east-ds data` writes under data/."""
    assert all(OUTSIDE.search(name) for name in (b"EAST" b".md", b"PLATFORM" b".md", b".." b"/shared/data"))
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    except FileNotFoundError:
        pytest.skip("git is not installed: no list of tracked files")
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files")
    paths = [ROOT / name.decode() for name in listed.stdout.split(b"\0") if name]
    bad = [f"{p.relative_to(ROOT)}:{n}" for p in paths if p.is_file()
           for n, line in enumerate(p.read_bytes().splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "tracked files point outside the repository:\n" + "\n".join(bad)
