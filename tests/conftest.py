"""Shared fixtures. Heavy ones (models, Ray) are session-scoped and built on the fly: nothing is downloaded."""

import os

import pytest



def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if not _cuda():  # on a GPU machine DeepSpeed picks CUDA itself; the `gpu`-marked tests need it
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from east_ds.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory):
    """A tiny model warm-started on the synthetic problems until it is right about a third of the time:
    its samples disagree, so entropy is informative and the filters keep questions."""
    from east_ds.demo import warm_start
    from east_ds.synthetic import make_problems
    from east_ds.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("warm")
    base = build_tiny_model(root / "base", size="tiny", seed=0)
    warm_start(base, root / "warm", make_problems(2000, seed=3, prefix="warm"),
               make_problems(8, seed=4, prefix="probe"), max_steps=200, check_every=10**9)
    return root / "warm"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, bound to 127.0.0.1."""
    import ray

    from east_ds.ray_utils import init_ray

    init_ray()
    yield ray
    ray.shutdown()
