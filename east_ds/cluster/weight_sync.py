"""Weights in bounded buckets: the unit in which new policy weights travel to the rollout engines.

A bucket is a list of `(name, tensor)` pairs whose tensors together take at most `bucket_bytes` (a tensor larger
than the limit travels alone). Buckets are what go through Ray's object store (`rollout.weight_sync:
object_store`) and what trainer rank 0 broadcasts (`broadcast`); both read the exported checkpoint one
safetensors file at a time (`checkpoint_tensors`).

Where an engine's vLLM workers are not the engine actor's own process (the engine core in a process of its own,
as on GPUs, or tensor-parallel workers), tensors cannot ride on vLLM's `collective_rpc`: its arguments are
msgpack-encoded and a tensor arrives as a plain list. The actor then hands buckets over as safetensors files in
a directory both sides can read (`write_bucket_files`, `read_bucket_files`); only their paths cross the boundary.

This module imports torch (and safetensors) only: no Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import torch

Bucket = list[tuple[str, torch.Tensor]]


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[Bucket]:
    """Group `(name, tensor)` pairs, in order, into buckets of at most `bucket_bytes` (CPU, contiguous, detached).

    Order is kept, so a receiver that knows the names can rebuild the state dict bucket by bucket.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: Bucket = []
    size = 0
    for name, t in named_tensors:
        t = t.detach().to("cpu").contiguous()
        nbytes = tensor_bytes(t)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


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

    files = _weight_files(path)
    metas: list[list[tuple[str, str, tuple[int, ...]]]] = []
    bucket: list[tuple[str, str, tuple[int, ...]]] = []
    size = 0
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():  # the order checkpoint_tensors yields
                sl = sf.get_slice(name)
                dtype = _SAFETENSORS_DTYPES[sl.get_dtype()]
                shape = tuple(sl.get_shape())
                nbytes = math.prod(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
                if bucket and size + nbytes > bucket_bytes:
                    metas.append(bucket)
                    bucket, size = [], 0
                bucket.append((name, dtype, shape))
                size += nbytes
    if bucket:
        metas.append(bucket)
    return metas


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


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
