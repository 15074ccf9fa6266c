"""Shared fixtures. Heavy ones (models, Ray) are session-scoped and built on the fly: nothing is downloaded."""

import os

import pytest

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
