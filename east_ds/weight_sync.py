"""Weights in bounded buckets: the unit in which new policy weights travel to the rollout engines.

A bucket is a list of `(name, tensor)` pairs whose tensors together take at most `bucket_bytes` (a tensor larger
than the limit travels alone). Buckets are what go through Ray's object store (`rollout.weight_sync:
object_store`) and what trainer rank 0 broadcasts (`broadcast`); both read the exported checkpoint one
safetensors file at a time (`checkpoint_tensors`).

This module imports torch (and safetensors) only: no Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

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
    """`(name, tensor)` of every weight in a Hugging Face checkpoint directory's safetensors files, one file
    at a time (what the object-store update sends when the engines should not read the checkpoint themselves)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights to send")
    for f in files:
        yield from load_file(str(f)).items()
