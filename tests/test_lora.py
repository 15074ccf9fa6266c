"""LoRA (training.lora) with the real components on a tiny model: peft adapters trained by the DeepSpeed engine,
exported and resumed as adapters, served by vLLM-CPU engines through each weight sync (only the adapter's
tensors move), merged into a plain Hugging Face model, and two-iteration runs of the driver for SFT and DPO.

"Same answers" is checked against a fresh transformers + peft model with the same adapter (greedy decoding), and
for the merged model against the engine serving the adapter.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from sft_examples import write_sft_examples

from east_ds.config import LoraConfig, ModelConfig, RolloutConfig, TrainConfig, load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
MC = ModelConfig(dtype="float32")
LORA = LoraConfig(r=8, alpha=16.0)
TRAIN = TrainConfig(loss="sft", lr=2e-2, epochs=2, global_batch_size=4, micro_batch_size=2,
                    gradient_accumulation_steps=2, warmup_ratio=0.0, max_len=96,
                    deepspeed_config="ds_configs/zero2.json", gradient_checkpointing=False, save_every_steps=2,
                    lora=LORA)
LAYERS, TARGETS = 2, 7  # the tiny model's decoder layers; q, k, v, o, gate, up, down
ADAPTER_TENSORS = 2 * TARGETS * LAYERS  # lora_A and lora_B of every adapted linear layer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny base model, SFT examples, and two adapters: trained from the base, and trained further from it."""
    from transformers import AutoTokenizer

    from east_ds.data.load import render_prompt
    from east_ds.data.tiny import build_tiny_model
    from east_ds.training.engine import fit

    root = tmp_path_factory.mktemp("lora")
    base = str(build_tiny_model(root / "base"))
    tok = AutoTokenizer.from_pretrained(base)
    examples = write_sft_examples(tok, root / "examples.parquet", 16, (0.2, 2))
    fit(base, TRAIN, MC, examples, str(root / "a1"), progress=False)
    fit(str(root / "a1" / "hf"), dataclasses.replace(TRAIN, epochs=1), MC, examples, str(root / "a2"), progress=False)
    prompts = [tok.encode(render_prompt(tok, f"What is {i} + {2 * i}?"), add_special_tokens=False) for i in range(3)]
    return {"root": root, "base": base, "examples": examples, "a1": str(root / "a1" / "hf"),
            "a2": str(root / "a2" / "hf"), "prompts": prompts, "tok": tok}


def hf_greedy(model_dir: str, prompts, adapter: str | None = None, max_new_tokens: int = 16) -> list[str]:
    """Greedy answers of a fresh transformers model (with `adapter` through peft)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = []
    for ids in prompts:
        g = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(g[0, len(ids):], skip_special_tokens=True))
    return out


def tensors_of(adapter: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter) / "adapter_model.safetensors"))


def test_training_exports_the_adapter_and_resumes_it(setup):
    """The export is the adapter in peft's format (no base weights), naming its base; a call stopped mid-way
    keeps only the adapter's state in its DeepSpeed checkpoint and, resumed, ends with the uninterrupted
    adapter; training from an adapter continues it."""
    from east_ds.training.engine import fit

    a1 = Path(setup["a1"])
    assert (a1 / "adapter_config.json").is_file() and not (a1 / "model.safetensors").exists()
    assert json.loads((a1 / "adapter_config.json").read_text())["base_model_name_or_path"] == setup["base"]
    full = tensors_of(setup["a1"])
    assert len(full) == ADAPTER_TENSORS and all("lora_" in k for k in full)
    assert any(v.abs().max() > 0 for k, v in full.items() if "lora_B" in k)  # trained (B starts at zero)

    part = setup["root"] / "part"
    fit(setup["base"], dataclasses.replace(TRAIN, max_steps=3), MC, setup["examples"], str(part), progress=False)
    states = sum(f.stat().st_size for f in (part / "ds_checkpoint").rglob("*model_states.pt"))
    assert 0 < states < os.path.getsize(Path(setup["base"]) / "model.safetensors") / 4  # frozen base left out
    summary = fit(setup["base"], TRAIN, MC, setup["examples"], str(part), progress=False)
    assert summary["start_step"] == 3
    resumed = tensors_of(str(part / "hf"))
    assert max((resumed[k] - full[k]).abs().max().item() for k in full) < 1e-6
    a2 = tensors_of(setup["a2"])
    assert a2.keys() == full.keys() and any((a2[k] - full[k]).abs().max() > 0 for k in full)


def test_dpo_reference_is_the_policy_with_its_adapter(setup):
    """DPO's reference log-probs from an adapter directory are the policy at the iteration's start, adapter on:
    equal to a transformers + peft model's summed response log-probs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from east_ds.training.engine import reference_logprobs

    tok = setup["tok"]
    df = pd.read_parquet(setup["examples"]).head(4)
    df = df.assign(chosen=df["response"], rejected="It is \\boxed{0}")
    df.to_parquet(setup["root"] / "dpo.parquet")
    cfg = dataclasses.replace(TRAIN, loss="dpo")
    reference_logprobs(setup["a1"], cfg, MC, str(setup["root"] / "dpo.parquet"), str(setup["root"] / "ref.parquet"))
    ref = pd.read_parquet(setup["root"] / "ref.parquet")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32),
                                      setup["a1"]).eval()
    row = ref.iloc[0]
    prompt = tok.encode(row["prompt"], add_special_tokens=False)
    answer = tok.encode(row["chosen"], add_special_tokens=False) + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
    logp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(answer)[:, None]).sum().item()
    assert row["ref_chosen_logp"] == pytest.approx(logp, abs=1e-3)


def test_engines_serve_the_adapter_each_transport_moves(setup, ray_session):
    """An engine with LoRA (engine core in a process of its own, as on GPUs) serves the base until the first
    adapter; after each update, by path, object store and broadcast, its greedy answers equal a fresh
    transformers + peft model's with that adapter, and only the adapter's tensors moved. The merged model loads
    in plain transformers and answers as the engine with the adapter."""
    import ray

    from east_ds.cluster.weight_sync import sync_weights
    from east_ds.rollout.engine_pool import EnginePool, Sampling
    from east_ds.training.actors import TrainRank
    from east_ds.training.lora import merge

    prompts = setup["prompts"]
    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    try:
        pool = EnginePool(setup["base"], RolloutConfig(num_engines=1, max_model_len=256, shard_size=4), MC,
                          lora_rank=LORA.r)
    finally:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before if before is not None else "0"
    sender = TrainRank.options(num_cpus=0).remote(0, 1, 0)  # trainer rank 0, without a training process group

    def greedy():
        return [s[0]["response"] for s in pool.generate(prompts, Sampling(n=1, temperature=0.0, max_new_tokens=16))]

    try:
        assert greedy() == hf_greedy(setup["base"], prompts)  # iteration 1 samples the base model
        expected = {a: hf_greedy(setup["base"], prompts, setup[a]) for a in ("a1", "a2")}
        assert expected["a1"] != expected["a2"]
        adapter_bytes = sum(t.numel() * t.element_size() for t in tensors_of(setup["a1"]).values())
        for method, a in (("path", "a1"), ("object_store", "a2"), ("broadcast", "a1")):
            info = sync_weights(method, pool, sender, setup[a], bucket_mb=1)
            assert (info["tensors"], info["bytes"]) == (ADAPTER_TENSORS, adapter_bytes), (method, info)
            assert greedy() == expected[a], method
        merged = merge(setup["a1"], setup["root"] / "merged")  # the adapter the engine serves now
        assert not (merged / "adapter_config.json").exists()
        assert hf_greedy(str(merged), prompts) == greedy()
    finally:
        ray.kill(sender)
        pool.shutdown()


def _run_config(tmp: Path, model: Path, name: str, **training) -> Path:
    """The demo config (configs/demo_cpu.yaml) with LoRA, cut to seconds: 12 questions x 4 samples, 4 test."""
    import yaml

    from east_ds.data.synthetic import make_problems, to_gsm8k_rows
    from east_ds.tables import write_table

    data = tmp / "data"
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(12, seed=11, prefix="tr"))), data / "train.jsonl")
    write_table(pd.DataFrame(to_gsm8k_rows(make_problems(4, seed=12, prefix="te"))), data / "test.jsonl")
    cfg = yaml.safe_load((ROOT / "configs" / "demo_cpu.yaml").read_text())
    cfg.update(name=name, output_dir=str(tmp / "runs"), iterations=2)
    cfg["model"]["path"] = str(model)
    cfg["data"].update(train=str(data / "train.jsonl"), test=str(data / "test.jsonl"))
    cfg["rollout"].update(n=4, max_new_tokens=32, shard_size=12)
    cfg["evaluation"]["max_new_tokens"] = 32
    cfg["training"].update(epochs=1, global_batch_size=4, micro_batch_size=2, gradient_accumulation_steps=2,
                           deepspeed_config=str(ROOT / "ds_configs" / "zero2.json"), lr=1e-3,
                           lora={"r": 8, "alpha": 16.0}, **training)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_driver_runs_two_lora_iterations(loss, tmp_path, warm_model, ray_session):
    """`training.lora.r=8` on the demo config: two iterations end to end. SFT: iteration 1 synced by path, then,
    resumed with iterations=2, iteration 2 by the object store (the resumed run's engines load iteration 1's
    adapter at start); DPO: both by path in one call, through the reference phase. Each checkpoint is an
    adapter, each update moved only its tensors, and a call's last iteration has a merged model; for SFT its
    greedy answers are the evaluation's (the engine with the adapter)."""
    from east_ds.driver import run

    path = _run_config(tmp_path, warm_model, f"lora_{loss}", loss=loss, **({"beta": 0.1} if loss == "dpo" else {}))
    if loss == "sft":
        first = run(load_config(path, ["iterations=1", "rollout.weight_sync=path"]))
        assert [m["iteration"] for m in first] == [0, 1]
        assert (load_config(path).run_dir / "iter_1" / "merged").is_dir()  # the first call's last iteration
    cfg = load_config(path, ["rollout.weight_sync=object_store" if loss == "sft" else "rollout.weight_sync=path"])
    log = run(cfg)
    assert [m["iteration"] for m in log] == [0, 1, 2]
    for k in (1, 2):
        it = cfg.run_dir / f"iter_{k}"
        assert (it / "checkpoint" / "adapter_model.safetensors").is_file()
        assert not (it / "checkpoint" / "model.safetensors").exists()
        assert log[k]["update_weights"]["tensors"] == 2 * 7 * 2  # the warm model's 2 layers x 7 linear layers
        assert ("reference" in log[k]["phase_seconds"]) == (loss == "dpo")
    merged = cfg.run_dir / "iter_2" / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    if loss == "sft":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(merged))
        ev = pd.read_parquet(cfg.run_dir / "iter_2" / "eval.parquet")
        prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ev["prompt"]]
        assert hf_greedy(str(merged), prompts, max_new_tokens=32) == ev["response"].tolist()
