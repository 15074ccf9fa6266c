"""Weight sync: how a trained checkpoint reaches the running rollout engines (`rollout.weight_sync`).

One entry point, `sync_weights(method, pool, sender, checkpoint, bucket_mb)`, and one function per transport:

    path          every engine reloads the exported HF checkpoint from shared storage (`by_path`)
    object_store  the driver reads the checkpoint and puts it in Ray's object store in buckets; each engine
                  loads them in one in-place reload (`by_object_store`)
    broadcast     trainer rank 0 reads its export and broadcasts it bucket by bucket to every engine worker,
                  NCCL between GPUs, a TCP-store stand-in without CUDA (`by_broadcast`)

A bucket is a list of `(name, tensor)` pairs whose tensors together take at most `bucket_bytes` (a tensor larger
than the limit travels alone); the split is written once (`_split`), for tensors and for the sizes read from
safetensors headers alike.

Where an engine's vLLM workers are not the engine actor's own process (the engine core in a process of its own,
as on GPUs, or tensor-parallel workers), tensors cannot ride on vLLM's `collective_rpc`: its arguments are
msgpack-encoded and a tensor arrives as a plain list. The actor then hands buckets over as safetensors files in
a directory both sides can read (`write_bucket_files`, `read_bucket_files`); only their paths cross the boundary.

A LoRA run (training.lora) exports a peft adapter as its checkpoint (`adapter_config.json` and
`adapter_model.safetensors`: `is_adapter_checkpoint`). The engines keep their base weights and only the adapter
moves, by the same three transports: `path` has every engine load the adapter directory; `object_store` and
`broadcast` send the adapter's tensors (and its config as a small dict), and the engine side writes them as a
peft directory on its own node (`write_adapter_dir`) for vLLM's adapter loader. The figures name the tensors and
bytes that moved.

Both ends of the broadcast live here (`WeightBroadcast`, `TrainerWeightBroadcaster`), so that the rollout and
training stages share the protocol without importing each other. This module imports torch at the top; Ray
and vLLM's process-group classes only inside the functions that use them (the broadcast group is vLLM's, the
same on both ends).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch

Bucket = list[tuple[str, torch.Tensor]]


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _split(items: Iterable, nbytes, bucket_bytes: int) -> Iterator[list]:
    """Group `items`, in order, into lists whose `nbytes(item)` sum to at most `bucket_bytes`; an item larger
    than the limit goes alone. The one bucket split: tensors (`iter_buckets`) and header sizes
    (`checkpoint_metas`) go through it, so a broadcast's receivers allocate exactly what the sender sends."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list = []
    size = 0
    for item in items:
        n = nbytes(item)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(item)
        size += n
    if bucket:
        yield bucket


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[Bucket]:
    """Group `(name, tensor)` pairs, in order, into buckets of at most `bucket_bytes` (CPU, contiguous, detached).

    Order is kept, so a receiver that knows the names can rebuild the state dict bucket by bucket.
    """
    tensors = ((name, t.detach().to("cpu").contiguous()) for name, t in named_tensors)
    yield from _split(tensors, lambda item: tensor_bytes(item[1]), bucket_bytes)


def bucket_meta(bucket: Bucket) -> list[tuple[str, str, tuple[int, ...]]]:
    """`(name, dtype, shape)` of each tensor: what a receiver needs to allocate buffers before a broadcast."""
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in bucket]


def checkpoint_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` of every weight in a Hugging Face checkpoint directory's safetensors files, one tensor at
    a time, files in name order and tensors in each file's key order (`checkpoint_metas` follows the same order):
    what the object-store and broadcast updates send."""
    from safetensors import safe_open

    for f in _weight_files(path):
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


def _weight_files(path: str | Path) -> list[Path]:
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights to send")
    return files


def checkpoint_metas(path: str | Path, bucket_bytes: int) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """`bucket_meta` of each bucket that `iter_buckets(checkpoint_tensors(path), bucket_bytes)` yields, read from the
    safetensors headers alone (no tensor is loaded): what broadcast receivers allocate, bucket by bucket."""
    from safetensors import safe_open

    metas = []
    for f in _weight_files(path):
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():  # the order checkpoint_tensors yields
                sl = sf.get_slice(name)
                metas.append((name, _SAFETENSORS_DTYPES[sl.get_dtype()], tuple(sl.get_shape())))
    return list(_split(metas, _meta_bytes, bucket_bytes))


def _meta_bytes(meta: tuple[str, str, tuple[int, ...]]) -> int:
    _, dtype, shape = meta
    return math.prod(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


ADAPTER_CONFIG = "adapter_config.json"  # peft's names (peft.utils.constants CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_checkpoint(path: str | Path) -> bool:
    """Whether a checkpoint is a peft adapter (a LoRA run's export) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path: str | Path) -> dict:
    """The adapter's peft config (adapter_config.json) as a dict: what travels with its tensors."""
    import json

    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())


def write_adapter_dir(named_tensors: Iterable[tuple[str, torch.Tensor]], config: dict, directory: str | Path) -> str:
    """Write an adapter's tensors and config as a peft directory (the layout vLLM's adapter loader reads); returns
    its path. The adapter is small (megabytes), so its tensors are gathered into one file."""
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: t.detach().to("cpu").contiguous() for name, t in named_tensors}, str(directory / ADAPTER_WEIGHTS))
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))
    return str(directory)


def moved(metas: list[list[tuple[str, str, tuple[int, ...]]]]) -> dict:
    """The tensors and bytes that buckets described by `metas` (checkpoint_metas) hold."""
    return {"tensors": sum(len(m) for m in metas), "bytes": sum(_meta_bytes(x) for m in metas for x in m)}


# ----------------------------------------------------------------------------------------------------------------
# Handing buckets to vLLM workers in other processes: safetensors files, paths in the RPC.


def write_bucket_files(buckets: Iterable[Bucket], directory: str | Path) -> list[str]:
    """Write each bucket as `bucket_<i>.safetensors` in `directory`; returns the paths, in order.

    Tensors that share memory (tied weights in a state dict) are written as copies: safetensors refuses shared
    storage. The files hold exactly the bucket's names, dtypes, shapes and values."""
    from safetensors.torch import save_file

    directory = Path(directory)
    paths = []
    for i, bucket in enumerate(buckets):
        seen: set[int] = set()
        tensors = {}
        for name, t in bucket:
            t = t.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr() if t.numel() else -1 - len(seen)
            tensors[name] = t.clone() if ptr in seen else t
            seen.add(ptr)
        path = directory / f"bucket_{i:05d}.safetensors"
        save_file(tensors, str(path))
        paths.append(str(path))
    return paths


def read_bucket_files(paths: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` of every weight in the bucket files, a tensor at a time, in file and key order: the
    lazy iterator a vLLM worker's `reload_weights` consumes."""
    from safetensors import safe_open

    for path in paths:
        with safe_open(str(path), framework="pt") as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


# ----------------------------------------------------------------------------------------------------------------
# The two ends of a weight broadcast (engine workers receive; trainer rank 0 sends).


class WeightBroadcast:
    """One end of the weight-broadcast group: trainer rank 0 (group rank 0) sends, every engine worker receives.

    The group is vLLM's StatelessProcessGroup (a TCP store at rank 0's host:port, apart from any
    torch.distributed state). Tensors go over NCCL (PyNcclCommunicator) when this process's device is a CUDA
    GPU; without CUDA a stand-in sends them through the group's TCP store, so the protocol (group ranks, bucket
    metadata, order, the lazy reload) runs on CPU machines. Both ends must be of the same kind: rank 0 announces
    its kind, and a receiver of the other kind fails instead of hanging.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, device, listen_socket=None):
        """`listen_socket` (rank 0): a socket already bound and listening at host:port, so no other process can
        take the port between its pick and the store's start; the store takes it over."""
        import torch
        from vllm.distributed.utils import StatelessProcessGroup

        self.device = torch.device(device)
        self.group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                                  listen_socket=listen_socket)
        self.kind = kind = "nccl" if self.device.type == "cuda" else "tcp-store"
        sender = self.group.broadcast_obj(kind if rank == 0 else None, src=0)
        if sender != kind:
            raise RuntimeError(f"weight broadcast: rank 0 sends over {sender} but rank {rank} ({self.device}) "
                               f"receives over {kind}; trainer rank 0 and the engines need the same kind of device")
        self.comm = None
        if kind == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

            self.comm = PyNcclCommunicator(self.group, device=self.device)

    def broadcast(self, t):
        """Send `t` (rank 0) or receive into `t` (the others); returns `t`."""
        import torch

        if self.comm is not None:
            self.comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
        else:
            received = self.group.broadcast(t, src=0)
            if received is not t:
                t.copy_(received)
        return t

    def finish(self) -> None:
        """Every rank, after the last bucket, in device_plan.broadcast_finish_steps' order: wait until the
        device has run every enqueued collective (NCCL calls only enqueue them on the stream), then a barrier
        (rank 0 keeps the group's store up until all have read it), then destroy the NCCL communicator: a group
        is formed per update, and PyNcclCommunicator frees its buffers, proxy thread and sockets only in
        destroy() (it has no __del__). Destroying it with collectives still queued could cut off the last
        buckets silently."""
        import torch

        from east_ds.cluster.device_plan import broadcast_finish_steps

        for step in broadcast_finish_steps(self.comm is not None):
            if step == "synchronize stream":
                torch.cuda.current_stream(self.device).synchronize()
            elif step == "barrier":
                self.group.barrier(timeout=3600)
            elif step == "destroy communicator":
                self.comm.destroy()
                self.comm = None


class TrainerWeightBroadcaster:
    """Trainer rank 0's end of the weight-broadcast group (see WeightBroadcast).

    Rank 0 of the group is the trainer; engine e's worker w is rank 1 + e * tp + w. Create it on the trainer while
    the engines call `init_weight_group` (both sides block until everyone has joined), then
    `pool.update_weights_broadcast(metas)` on the engines (async) and `broadcast(bucket)` here for each bucket in order.
    """

    def __init__(self, host: str, port: int, world_size: int, device=None, listen_socket=None):
        import torch

        from east_ds.cluster.device_plan import communicator_device

        if device is None:
            cuda = torch.cuda.is_available()
            device = communicator_device(cuda, torch.cuda.current_device() if cuda else 0)
        self.comm = WeightBroadcast(host, port, 0, world_size, device, listen_socket)

    def broadcast(self, bucket) -> None:
        for _, t in bucket:
            self.comm.broadcast(t.to(self.comm.device))

    def finish(self) -> None:
        self.comm.finish()


# ----------------------------------------------------------------------------------------------------------------
# The transports, and the one entry point the driver calls.


def sync_weights(method: str, pool, sender, checkpoint: str, bucket_mb: int) -> dict:
    """Load `checkpoint` into every engine of `pool` by `method` (`rollout.weight_sync`); returns the update's
    figures (seconds; buckets and bytes where the transport counts them). `sender`: trainer rank 0's actor,
    used by `broadcast` only."""
    if method not in TRANSPORTS:
        raise ValueError(f"rollout.weight_sync={method!r}: expected one of {', '.join(TRANSPORTS)}")
    if method == "broadcast":
        return by_broadcast(pool, sender, checkpoint, bucket_mb)
    if is_adapter_checkpoint(checkpoint):
        return ADAPTER_TRANSPORTS[method](pool, checkpoint, bucket_mb)
    return TRANSPORTS[method](pool, checkpoint, bucket_mb)


def by_path(pool, checkpoint: str, bucket_mb: int = 0) -> dict:
    """Every engine reloads the HF checkpoint directory from storage it shares with the trainer."""
    return pool.update_weights_from_path(str(checkpoint))


def by_object_store(pool, checkpoint: str, bucket_mb: int) -> dict:
    """The driver reads the checkpoint one tensor at a time and puts it in Ray's object store in buckets of at
    most `bucket_mb` MiB; the engines need no shared storage."""
    return pool.update_weights_from_state_dict(checkpoint_tensors(checkpoint), bucket_mb)


def adapter_by_path(pool, checkpoint: str, bucket_mb: int = 0) -> dict:
    """LoRA: every engine loads the adapter directory in place of its current adapter (vLLM's `load_inplace`)."""
    return {**pool.load_adapter(str(checkpoint)), **moved(checkpoint_metas(checkpoint, 2**62))}


def adapter_by_object_store(pool, checkpoint: str, bucket_mb: int) -> dict:
    """LoRA: the driver puts the adapter's tensors, in buckets, and its config in Ray's object store."""
    return pool.load_adapter_from_state_dict(checkpoint_tensors(checkpoint), adapter_config(checkpoint), bucket_mb)


def by_broadcast(pool, sender, checkpoint: str, bucket_mb: int, timeout_s: float = 3600.0) -> dict:
    """`sender` (a TrainRank actor: trainer rank 0) reads `checkpoint` (its own export) and broadcasts it to every
    engine of `pool` in buckets of at most `bucket_mb` MiB, through a group formed for this update (NCCL between
    GPUs, the TCP-store stand-in without CUDA; docs/rollout.md). Returns seconds and bucket count.

    The participants are watched one completion at a time: as soon as one fails, the others (blocked in a
    collective that will never complete) are killed and WeightSyncError names the one that failed and its error.
    Not all finished within `timeout_s` (a hang, not a failure): WeightSyncError naming those still pending."""
    import ray

    from east_ds.cluster.ray_utils import WeightSyncError

    t0 = time.perf_counter()
    nbytes = bucket_mb * 2**20
    host, port = ray.get(sender.master.remote())
    metas = ray.get(sender.weight_metas.remote(str(checkpoint), nbytes))
    joined, world = pool.init_weight_group(host, port)
    sent = sender.send_weights.remote(host, port, world, str(checkpoint), nbytes)
    received = (pool.update_adapter_broadcast(metas, str(checkpoint), adapter_config(checkpoint))
                if is_adapter_checkpoint(checkpoint) else pool.update_weights_broadcast(metas, str(checkpoint)))
    who = {sent: ("trainer rank 0 (sending)", sender)}
    for i, (j, r) in enumerate(zip(joined, received)):
        who[j] = (f"engine {i} (joining the group)", pool.engines[i])
        who[r] = (f"engine {i} (receiving)", pool.engines[i])
    pending = list(who)
    deadline = time.monotonic() + timeout_s
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            _stop(who, pending)
            raise WeightSyncError(
                f"weight broadcast of {checkpoint} not finished within {timeout_s:g} s; still waiting for: "
                + ", ".join(who[r][0] for r in pending) + "; they were stopped. " + _RERUN)
        try:
            ray.get(done[0])
        except Exception as e:
            _stop(who, pending)
            cause = getattr(e, "cause", None) or e
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]
            others = sorted({who[r][0].split(" (")[0] for r in pending})
            raise WeightSyncError(
                f"weight broadcast of {checkpoint}: {who[done[0]][0]} failed: {type(cause).__name__}: {first}"
                + (f"; stopped {', '.join(others)}" if others else "") + ". " + _RERUN) from e
    return {"seconds": time.perf_counter() - t0, "buckets": len(metas), "kind": ray.get(sent)["kind"], **moved(metas)}


_RERUN = "Rerun the same command: a new run's engines load the published checkpoint from its path."


def _stop(who: dict, pending: list) -> None:
    """Kill the actors of the pending participants: they wait in a collective that will not complete."""
    import ray

    for actor in {id(who[r][1]): who[r][1] for r in pending}.values():
        try:
            ray.kill(actor)
        except Exception:
            pass


TRANSPORTS = {"path": by_path, "object_store": by_object_store, "broadcast": by_broadcast}
ADAPTER_TRANSPORTS = {"path": adapter_by_path, "object_store": adapter_by_object_store, "broadcast": by_broadcast}
