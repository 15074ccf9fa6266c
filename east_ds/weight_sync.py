"""Weights in bounded buckets: the unit in which new policy weights travel to the rollout engines.

A bucket is a list of `(name, tensor)` pairs whose tensors together take at most `bucket_bytes` (a tensor larger
than the limit travels alone). Buckets are what go through Ray's object store (in-memory updates, no shared file
system) and what trainer rank 0 broadcasts over NCCL on GPU machines. Under ZeRO-3 the trainer gathers one bucket
of partitioned parameters at a time (`gathered_buckets`), so no rank ever holds the whole unsharded model.

This module imports torch only: no Ray, vLLM or DeepSpeed (the ZeRO-3 gather context is passed in).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterable, Iterator

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


def gathered_buckets(
    model: torch.nn.Module,
    bucket_bytes: int,
    gather: Callable[[list[torch.nn.Parameter]], AbstractContextManager] | None = None,
    numel_of: Callable[[torch.nn.Parameter], int] | None = None,
) -> Iterator[Bucket]:
    """Yield the model's parameters in buckets, gathering each bucket's parameters only while it is yielded.

    `gather` is the trainer's gather context for a list of parameters (under ZeRO-3:
    `lambda ps: deepspeed.zero.GatheredParameters(ps)`), or None for a model whose parameters are whole.
    `numel_of` gives a parameter's full size before gathering (ZeRO-3: `p.ds_numel`). The yielded tensors are
    CPU copies, valid after the gather context exits. The consumer must finish with a bucket (send or broadcast
    it) before asking for the next one; every rank must iterate in step, since gathering is collective.
    """
    numel_of = numel_of or (lambda p: getattr(p, "ds_numel", p.numel()))
    group: list[tuple[str, torch.nn.Parameter]] = []
    size = 0

    def flush(group):
        params = [p for _, p in group]
        if gather is None:
            yield [(n, p.detach().to("cpu").contiguous()) for n, p in group]
            return
        with gather(params):
            out = [(n, p.detach().to("cpu").clone()) for n, p in group]
        yield out

    for name, p in model.named_parameters():
        nbytes = numel_of(p) * p.element_size()
        if group and size + nbytes > bucket_bytes:
            yield from flush(group)
            group, size = [], 0
        group.append((name, p))
        size += nbytes
    if group:
        yield from flush(group)


def checkpoint_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` of every weight in a Hugging Face checkpoint directory's safetensors files, one file
    at a time (what the object-store update sends when the engines should not read the checkpoint themselves)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights to send")
    for f in files:
        yield from load_file(str(f)).items()
