"""Live weight updates into running vLLM-CPU engines: from a checkpoint path, from in-memory buckets and by
broadcast from trainer rank 0.

Greedy output after an update must equal that of a fresh engine built from the same checkpoint, with prefix
caching on and the prompts already cached under the old weights (so a stale cache would show). The engine being
updated runs vLLM's engine core in a process of its own, as on GPUs (VLLM_ENABLE_V1_MULTIPROCESSING=1), so
everything an update sends crosses that process boundary the way it does there; the fresh engine it is compared
with runs in-process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from east_ds.config import ModelConfig, RolloutConfig  # noqa: E402
from east_ds.rollout.engine_pool import EnginePool, Sampling  # noqa: E402
from east_ds.cluster.ray_utils import init_ray  # noqa: E402
from east_ds.data.tiny import build_tiny_model  # noqa: E402

CFG = RolloutConfig(num_engines=1, max_model_len=512, enable_prefix_caching=True, shard_size=4)
MODEL = ModelConfig(dtype="float32")
GREEDY = Sampling(n=1, temperature=0.0, max_new_tokens=16)


def perturbed_state_dict(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_weights")
    base = str(build_tiny_model(root / "base"))
    new = root / "perturbed"
    model = perturbed_state_dict(base)
    model.save_pretrained(new)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (root / "base" / f).exists():
            shutil.copy(root / "base" / f, new / f)
    return base, str(new), {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def prompts(dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dirs[0])
    # Long shared prefixes (several KV blocks), so the prefix cache holds them between calls.
    prefix = "Please reason step by step. " * 12
    return [tok.encode(f"<|bos|><|user|>{prefix}Ava has {i} apples.<|end|><|assistant|>", add_special_tokens=False)
            for i in range(3)]


def start_pool(model_dir: str, engine_core_in_process: bool) -> EnginePool:
    """An engine pool whose actors get VLLM_ENABLE_V1_MULTIPROCESSING as asked (read from the environment when
    the actors are created: device_plan.engine_actor_plan)."""
    import os

    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if engine_core_in_process else "1"
    try:
        return EnginePool(model_dir, CFG, MODEL)
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before


@pytest.fixture(scope="module")
def pools(dirs):
    init_ray()
    live = start_pool(dirs[0], engine_core_in_process=False)
    try:
        fresh = start_pool(dirs[1], engine_core_in_process=True)
    except BaseException:
        live.shutdown()
        raise
    assert live.locations[0]["engine_core_in_process"] is False  # the GPU layout
    yield live, fresh
    live.shutdown()
    fresh.shutdown()


def greedy(pool, prompts):
    return [s[0]["response"] for s in pool.generate(prompts, GREEDY)]


def test_update_from_path_matches_fresh_engine(dirs, pools, prompts):
    live, fresh = pools
    live.update_weights_from_path(dirs[0])
    old = greedy(live, prompts)  # cached under the old weights
    assert greedy(live, prompts) == old
    expected = greedy(fresh, prompts)
    assert expected != old
    live.update_weights_from_path(dirs[1])
    assert greedy(live, prompts) == expected


def test_update_from_state_dict_buckets_matches_fresh_engine(dirs, pools, prompts):
    live, fresh = pools
    live.update_weights_from_path(dirs[0])
    old = greedy(live, prompts)
    sd = dirs[2]
    info = live.update_weights_from_state_dict(sd, bucket_mb=1)  # ~1.8 MB of fp32 weights -> several buckets
    assert info["buckets"] > 1
    assert greedy(live, prompts) == greedy(fresh, prompts) != old
    # A generator of (name, tensor) pairs works as well as a dict.
    live.update_weights_from_path(dirs[0])
    assert greedy(live, prompts) == old
    live.update_weights_from_state_dict(((k, v) for k, v in sd.items()), bucket_mb=1)
    assert greedy(live, prompts) == greedy(fresh, prompts)
    live.sleep()  # no-ops on CPU
    live.wake()


def test_update_by_broadcast_matches_fresh_engine(dirs, pools, prompts):
    """Trainer rank 0's broadcast (the TCP-store stand-in for NCCL on CPU): bucket metadata, group ranks, order
    and the lazy reload run for real, and the engine ends up with exactly the checkpoint's weights."""
    from east_ds.cluster.weight_sync import by_broadcast
    from east_ds.training.actors import TrainRank

    live, fresh = pools
    live.update_weights_from_path(dirs[0])
    old = greedy(live, prompts)
    sender = TrainRank.options(num_cpus=0).remote(0, 1, 0)  # rank 0 without a training process group
    try:
        info = by_broadcast(live, sender, dirs[1], bucket_mb=1)
        assert info["buckets"] > 1
        assert greedy(live, prompts) == greedy(fresh, prompts) != old
        live.update_weights_from_path(dirs[0])
        by_broadcast(live, sender, dirs[1], bucket_mb=1)  # a new group per update
        assert greedy(live, prompts) == greedy(fresh, prompts)
    finally:
        ray.kill(sender)


def test_update_from_checkpoint_tensors_matches_fresh_engine(dirs, pools, prompts):
    """The object_store weight sync: the driver reads the checkpoint's safetensors and sends them in buckets."""
    from east_ds.cluster.weight_sync import checkpoint_tensors

    live, fresh = pools
    live.update_weights_from_path(dirs[0])
    old = greedy(live, prompts)
    live.update_weights_from_state_dict(checkpoint_tensors(dirs[1]), bucket_mb=1)
    assert greedy(live, prompts) == greedy(fresh, prompts) != old
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        next(checkpoint_tensors(dirs[1] + "/missing"))

# ----------------------------------------------------------------------------------------------------------------
# Tensor parallel on the CPU: two vLLM workers in processes of the engine actor, threads bound by the engine.


def test_cpu_thread_binding_gives_each_tp_worker_its_own_cores():
    """Tensor parallel on the CPU (run for real by `east-ds check --smoke`, tests/test_smoke.py): each vLLM-CPU
    worker of an engine gets its own share of the cores the engine's process may use."""
    from east_ds.rollout.vllm_engine import cpu_thread_binding

    assert cpu_thread_binding([0, 1, 2, 3], 2) == "0,1|2,3"
    assert cpu_thread_binding([3, 1, 2], 2) == "1|2"
    with pytest.raises(ValueError, match=r"needs a core per TP rank, but this process may use only 1 core\(s\): \[0\]"):
        cpu_thread_binding([0], 2)


def test_a_failed_broadcast_names_the_participant_and_stops_the_others(dirs, pools, prompts, tmp_path):
    """An engine whose reload fails (here: a weight its model does not have) fails its task while trainer rank 0
    waits at the group's barrier for it. The update stops at the first failure, naming the engine and its error,
    and kills rank 0 rather than waiting out the timeout (set short here, so the old wait-for-all would end in a
    different error, not hang). The engine itself survives, and the next update works."""
    import torch
    from safetensors.torch import load_file, save_file

    from east_ds.cluster.ray_utils import WeightSyncError
    from east_ds.cluster.weight_sync import by_broadcast
    from east_ds.training.actors import TrainRank

    live, fresh = pools
    bad = tmp_path / "bad"
    bad.mkdir()
    weights = load_file(str(next(Path(dirs[1]).glob("*.safetensors"))))
    weights["model.layers.7.mlp.not_a_weight"] = torch.zeros(4)
    save_file(weights, str(bad / "model.safetensors"))
    sender = TrainRank.options(num_cpus=0).remote(0, 1, 0)
    with pytest.raises(WeightSyncError, match=r"engine 0 \(receiving\) failed: .*stopped trainer rank 0"):
        by_broadcast(live, sender, str(bad), bucket_mb=1, timeout_s=300)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(sender.where.remote(), timeout=60)  # killed, not left waiting in the collective
    live.update_weights_from_path(dirs[1])
    assert greedy(live, prompts) == greedy(fresh, prompts)


def test_shards_are_fed_into_a_running_batch_across_the_engine_core_boundary(pools, prompts):
    """`LLMEngine.feed` with vLLM's engine core in its own process (the GPU layout): it enqueues requests and steps
    `llm_engine` from the actor, and matches finished outputs to requests by the names vLLM's LLM gives them. A
    short shard queued after a long one finishes first (they share the batch), and the seeded samples equal one
    blocking generate of the same requests."""
    import ray

    live, _ = pools
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=30)
    long = dict(live.request(prompts[0], sampling, 5), ignore_eos=True)
    short = dict(live.request(prompts[1], sampling, 6), ignore_eos=True, max_tokens=3)
    engine = live.engines[0]
    first = ray.get(engine.feed.remote([("long", [long]), ("short", [short])]))["finished"]
    rest = ray.get(engine.feed.remote([]))["finished"]
    assert [k for k, _, _ in first] == ["short"] and [k for k, _, _ in rest] == ["long"]
    alone, _ = ray.get(engine.generate.remote([long, short]))
    assert [[s["response"] for s in r] for r in alone] == [[s["response"] for s in rest[0][1][0]],
                                                           [s["response"] for s in first[0][1][0]]]
    assert [s["num_tokens"] for s in rest[0][1][0]] == [30, 30]
