"""Does every Ray node see a path (the run directory, a local model) as the driver does?

    problems = check_shared_path(run_dir)                # [] when every alive node reads the driver's token

Ray is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_PREFIX = ".east_ds_shared_check_"


class StorageNotShared(RuntimeError):
    """A node cannot see the run directory or the model the driver sees; the message names node and path."""


def _fingerprint(path: str) -> str:
    """What a node sees at `path`: the token's content when there is one, else the directory listing with sizes
    (or the file's size). Runs on the driver and on every node; errors are part of what is seen."""
    p = Path(path)
    try:
        if p.is_dir():
            return "\n".join(f"{c.name} {c.stat().st_size if c.is_file() else '-'}" for c in sorted(p.iterdir()))
        return f"file {p.stat().st_size}"
    except OSError as e:
        return f"error: {e}"


def _read_back(path: str, token_name: str) -> tuple[str, str]:
    """(what this node sees, its IP): the token's content, or the fingerprint when no token was written."""
    import ray

    ip = ray.util.get_node_ip_address()
    if token_name:
        try:
            return (Path(path) / token_name).read_text(), ip
        except OSError as e:
            return f"error: {e}", ip
    return _fingerprint(path), ip


def check_shared_path(path: str | Path, timeout_s: float = 60.0, token: bool = True) -> list[str]:
    """Can every alive Ray node see `path` as the driver does?

    Writes a token file under `path` (a directory) and runs a tiny task pinned to every alive node that reads it
    back; when `path` is a file, cannot be written (read-only model storage) or `token` is false, the nodes
    compare what they see there (listing and sizes) with the driver's view instead. Returns one problem per node
    that cannot see it, naming the node (id and IP) and the path; [] when all see it. Ray must be initialised."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = str(Path(path).resolve())
    if not os.path.exists(path):
        return [f"{path}: does not exist on the driver's node"]
    token_name, expected = "", ""
    if token and os.path.isdir(path):
        token_name, expected = f"{TOKEN_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
        try:
            (Path(path) / token_name).write_text(expected)
        except OSError:
            token_name = ""
    if not token_name:
        expected = _fingerprint(path)
    read = ray.remote(num_cpus=0, max_retries=0)(_read_back)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(path, token_name): n for n in nodes}
    problems = []
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in ready:
            node = refs[ref]
            where = f"node {node['NodeID']} ({node.get('NodeManagerAddress', '?')})"
            try:
                seen, _ = ray.get(ref)
            except Exception as e:
                problems.append(f"{where}: could not check {path}: {type(e).__name__}: {e}")
                continue
            if seen != expected:
                what = ("cannot read the token file the driver wrote there" if token_name
                        else "sees different contents there than the driver")
                problems.append(f"{where} does not see {path} as the driver does: it {what} ({seen[:200]!r}); "
                                "east_ds needs storage shared by every node")
        for ref in late:
            node = refs[ref]
            ray.cancel(ref, force=True)
            problems.append(f"node {node['NodeID']} ({node.get('NodeManagerAddress', '?')}): no answer about "
                            f"{path} within {timeout_s:g} s")
    finally:
        if token_name:
            try:
                (Path(path) / token_name).unlink()
            except OSError:
                pass
    return problems


def storage_problems(run_dir: str | Path, model_path: str) -> dict[Path, list[str]]:
    """What each node fails to see, per path: the run (or output) directory, and the model when it is a local
    path (read only: the nodes compare what they see with the driver's view). Used by `east-ds run` (which stops)
    and `east-ds check` (which lists)."""
    out = {Path(run_dir): check_shared_path(run_dir)}
    if Path(model_path).exists():
        out[Path(model_path)] = check_shared_path(model_path, token=False)
    return out


def check_storage(run_dir: str | Path, model_path: str) -> None:
    """StorageNotShared naming each node and path that fails `storage_problems`."""
    problems = [p for found in storage_problems(run_dir, model_path).values() for p in found]
    if problems:
        raise StorageNotShared("\n".join(problems))
