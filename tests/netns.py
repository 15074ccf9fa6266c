"""Two hosts on one machine, for the tests of multi-node paths: two network namespaces joined by a veth pair.

    with TwoHosts() as hosts:                        # or the `two_hosts` fixture (skips where not allowed)
        hosts.addr["a"], hosts.addr["b"]             # 10.77.N.1 and 10.77.N.2: each namespace's own address
        hosts.popen("b", ["ray", "start", ...])      # a process inside namespace b
        hosts.run("a", ["python", "-c", "..."])      # subprocess.run inside namespace a

Only the network is separate: the filesystem (model, data, run directory, /dev/shm) and the user are shared, as
on a cluster with shared storage. Each namespace has its own loopback and ports, so a port chosen inside one
cannot clash with anything outside it. Traffic stays between the two namespaces: the veth pair is their only
link, with test addresses in 10.77.N.0/24 (N drawn at random); neither can reach the host or the outside.

Cleanup always runs (context exit, fixture teardown, or the next TwoHosts of a later test session): every
process still inside either namespace is killed (SIGTERM, then SIGKILL), then the namespaces are deleted, which
deletes the veth pair, then the directories registered in `dirs` (Ray's temp dirs). Namespaces are named
`e8-<pid>-a|b` after the creating process, so leftovers of a crashed session (its pid gone) are removed without
touching anyone else's.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PREFIX = "e8-"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str:
    """Why namespaces cannot be made here ('' when they can): the reason a test skips with."""
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2), which is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`); this test runs as uid %d" % os.geteuid()
    name = f"{PREFIX}{os.getpid()}-probe"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return ""


def _pids_in(*names: str) -> list[int]:
    pids = []
    for ns in names:
        r = _ip("netns", "pids", ns, check=False)
        pids += [int(p) for p in r.stdout.split()] if r.returncode == 0 else []
    return pids


def _kill_all_in(*names: str, grace: float | None = 10.0) -> None:
    """SIGTERM every process in the namespaces `names` (Ray's --block nodes stop their children on it), then
    after at most `grace` seconds SIGKILL what is left; `grace` None: SIGKILL at once."""
    steps = [(signal.SIGKILL, 5.0)] if grace is None else [(signal.SIGTERM, grace), (signal.SIGKILL, 5.0)]
    for sig, wait in steps:
        pids = _pids_in(*names)
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = _pids_in(*names)
        if not pids:
            return


def _remove_stale() -> None:
    """Delete namespaces left by a test session that died (the pid in their name no longer exists)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"{PREFIX}(\d+)-\w+", line.split()[0]) if line.strip() else None
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _kill_all_in(line.split()[0], grace=2.0)
            _ip("netns", "del", line.split()[0], check=False)


class TwoHosts:
    """Namespaces "a" and "b" with addresses `addr[...]`, linked by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}"
        self.ns = {h: f"{PREFIX}{tag}-{h}" for h in "ab"}
        subnet = random.randint(1, 254)
        self.addr = {"a": f"10.77.{subnet}.1", "b": f"10.77.{subnet}.2"}
        self.dev = {h: f"v{tag[-8:]}{h}" for h in "ab"}  # interface names: at most 15 characters
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[Path] = []  # removed at cleanup, after the processes that used them

    def __enter__(self) -> "TwoHosts":
        _remove_stale()
        try:
            for h in "ab":
                _ip("netns", "add", self.ns[h])
                _ip("-n", self.ns[h], "link", "set", "lo", "up")
            _ip("link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
            for h in "ab":
                _ip("link", "set", self.dev[h], "netns", self.ns[h])
                _ip("-n", self.ns[h], "addr", "add", f"{self.addr[h]}/24", "dev", self.dev[h])
                _ip("-n", self.ns[h], "link", "set", self.dev[h], "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def argv(self, host: str, cmd: list[str]) -> list[str]:
        """`cmd` run inside namespace `host` (environment and working directory inherited)."""
        return ["ip", "netns", "exec", self.ns[host], *cmd]

    def popen(self, host: str, cmd: list[str], **kw) -> subprocess.Popen:
        """A background process in `host`, in a session of its own; killed at cleanup if still running."""
        p = subprocess.Popen(self.argv(host, cmd), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, host: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(host, cmd), **kw)

    def kill_all(self, host: str) -> None:
        """SIGKILL every process inside `host`: a node lost at once, as the other host sees it."""
        _kill_all_in(self.ns[host], grace=None)

    def close(self) -> None:
        _kill_all_in(*self.ns.values(), grace=2.0)  # what is left after 2 s is killed; the namespaces go anyway
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
        for h in "ab":
            _ip("netns", "del", self.ns[h], check=False)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# A Ray cluster over the two hosts. Ports inside a namespace are private to it, so Ray's defaults (6379 for the
# GCS, 8265 for the job API) cannot clash with anything else on the machine.

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
JOB_API = "http://127.0.0.1:8265"  # on node a's own loopback


class RayCluster:
    """A Ray head in namespace a and (with `two_nodes`) a worker in namespace b, each `launch/ray_head.sh ...
    --block` with its own --temp-dir, token authentication on. `resources[host]`: the custom resources that node
    advertises. The job API listens on node a's loopback (JOB_API): run clients there (`hosts.run("a", ...)`)."""

    def __init__(self, hosts: TwoHosts, root: Path, resources: dict[str, dict[str, float]], two_nodes: bool = True,
                 cpus: int = 4):
        self.hosts, self.root, self.resources = hosts, root, resources
        self.job_api = JOB_API
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),  # the same token on both nodes and the client
            "RAY_USAGE_STATS_ENABLED": "0",
            "DASHBOARD_HOST": "127.0.0.1",
            "NUM_CPUS": str(cpus),
            "EAST_DS_NO_TQDM": "1",
            # A lost node is declared dead after 5 missed health checks: 1 s apart here instead of Ray's 3 s,
            # so the driver names it within seconds (a live node still has Ray's 10 s to answer each check).
            "RAY_health_check_period_ms": "1000",
        }
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(k, None)
        self.head = self.start("a")
        self.worker = self.start("b") if two_nodes else None
        self.wait_nodes(2 if two_nodes else 1)

    def start(self, host: str) -> subprocess.Popen:
        """Start node `host` (a: the head, b: a worker)."""
        temp = Path(f"/tmp/e8{os.getpid()}{host}")  # short: Ray's socket paths must stay under 107 characters
        self.hosts.dirs.append(temp)
        role = ["head"] if host == "a" else ["worker", f"{self.hosts.addr['a']}:6379"]
        log = (self.root / f"ray_{host}.log").open("a")
        return self.hosts.popen(host, ["bash", str(REPO / "launch" / "ray_head.sh"), *role, "--block",
                                       f"--temp-dir={temp}", f"--resources={json.dumps(self.resources[host])}"],
                                env={**self.env, "NODE_IP": self.hosts.addr[host]}, stdout=log,
                                stderr=subprocess.STDOUT)

    def node_ids(self) -> dict[str, str]:
        """{address: node id} of the live nodes, asked from inside namespace a ({} while the cluster is not up)."""
        code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); print('NODES', json.dumps("
                "{n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))")
        r = self.hosts.run("a", [sys.executable, "-c", code], env={**self.env, "RAY_ADDRESS":
                                                                   f"{self.hosts.addr['a']}:6379"}, timeout=120)
        lines = [x for x in r.stdout.splitlines() if x.startswith("NODES ")]
        return json.loads(lines[-1][6:]) if lines else {}

    def wait_nodes(self, k: int, timeout: float = 240) -> None:
        """Until `k` nodes are alive and the job API answers (a node process that exits fails the test)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p, h in ((self.head, "a"), (self.worker, "b")):
                if p is not None and p.poll() is not None:
                    pytest.fail(f"ray node {h} exited:\n" + (self.root / f"ray_{h}.log").read_text()[-3000:])
            if len(self.node_ids()) == k:
                ok = self.hosts.run("a", ["ray", "job", "list", "--address", JOB_API], env=self.env, timeout=60)
                if ok.returncode == 0:
                    return
            time.sleep(2)
        pytest.fail(f"the cluster did not reach {k} live nodes in {timeout} s")

    def submit(self, config: Path, job_id: str, log: Path, *overrides: str) -> subprocess.Popen:
        """`launch/ray_job.sh CONFIG [key=value ...]` from node a, following the job's logs into `log` until it
        ends."""
        return self.hosts.popen("a", ["bash", str(REPO / "launch" / "ray_job.sh"), "--address", JOB_API,
                                      "--job-id", job_id, str(config), *overrides],
                                env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture
def two_hosts():
    """A fresh pair of namespaces for one test; skipped, with the reason, where namespaces are not allowed."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with TwoHosts() as hosts:
        yield hosts
