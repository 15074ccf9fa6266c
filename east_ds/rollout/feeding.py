"""How an EnginePool's shards reach its engines (`rollout.feed`), and what happens when a shard finishes or its
engine dies.

continuous  Each engine holds several shards in its running vLLM batch (`LLMEngine.feed`). It returns as soon as
            one of them has finished, or when fewer than 1.5 decode steps' worth of sequences (`refill_below`:
            1.5 x its max_num_seqs) are left unfinished while shards wait; the pool then hands it the next shards
            in the same call that resumes stepping, topping it up to two steps' worth (`queue_target`) and at
            least two shards. So the engine decodes the stragglers of older shards beside the requests of newer
            ones and its batch stays full until the rollout's last shard; shards go to the idle engine holding
            the fewest unfinished sequences.
shard       One blocking `LLMEngine.generate` per shard, at most two shards queued per engine. The batch drains at
            the end of every shard: with long-tailed answer lengths the engine decodes the last few answers of a
            shard nearly alone (benchmarks/rollout_tail.py measures the cost). Kept as the baseline.

Both finish shards one at a time (the rollout stage writes each to disk as it arrives) and retry the shards of
a dead engine on a replacement, at the front of the queue and in their order. With per-request seeds a shard's
samples do not depend on which engine ran it or what ran beside it.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Mapping

Shard = tuple[Any, list[dict]]  # (key, requests)


class ShardRun:
    """The bookkeeping of one `EnginePool.run_shards` call (`pool`, the EnginePool): shards pending, retry
    counts, results, the progress bar; what happens when a shard finishes and when an engine is lost."""

    def __init__(self, pool, pending: deque, on_done, bar):
        self.pool, self.pending, self.on_done, self.bar = pool, pending, on_done, bar
        self.attempts: Counter = Counter()
        self.out: dict[Any, list[list[dict]]] = {}

    def finished(self, i: int, key, reqs: list[dict], results: list[list[dict]], seconds: float) -> None:
        """Shard `key` came back from engine i: label its samples, keep them, tell `on_done`."""
        for sample_list in results:
            for s in sample_list:
                s.update(engine=i, seconds=seconds, skip_reason="")
        self.out[key] = results
        if self.on_done is not None:
            self.on_done(key, results)
        self.bar.update(len(reqs))

    def lost(self, i: int, generation: int, shards: list[Shard], error: Exception) -> None:
        """Engine i died with `shards` unfinished: raise NodeLostError if its node is gone, or RuntimeError once
        a shard has failed more than max_shard_retries times; else replace the engine (unless an earlier call
        already did: `generation`) and put the shards back at the front of the queue, in their order."""
        pool = self.pool
        pool._check_node_alive(i, error)
        for key, _ in shards:
            self.attempts[key] += 1
            if self.attempts[key] > pool.cfg.max_shard_retries:
                raise RuntimeError(f"shard {key!r} failed {self.attempts[key]} times; last error: {error}") from error
        if generation == pool._generation[i]:
            pool._replace_actor(i)
        self.pending.extendleft(reversed(shards))


def samples(shards: Mapping[Any, list[dict]]) -> int:
    """Samples asked for by the requests of `shards` (n per request)."""
    return sum(int(r.get("n", 1)) for reqs in shards.values() for r in reqs)


def queue_target(pool, i: int) -> int:
    """Unfinished sequences the pool keeps on engine i while shards remain: two decode steps' worth (vLLM's
    max_num_seqs, as the engine reported it when it was built), so the next shards fill the batch while older
    shards' stragglers decode. The engine asks for more below three quarters of it (`feed`'s refill_below)."""
    return 2 * int(pool.locations[i].get("max_num_seqs") or 256)


def hand_out(pending: deque, held: dict[int, dict], left: dict[int, int], idle: list[int],
             target) -> dict[int, list[Shard]]:
    """Which pending shards each idle engine takes now: one at a time to the idle engine with the fewest
    unfinished sequences (`left`, as it last reported, plus what it takes now) among those holding fewer than two
    shards or `target(i)` sequences, until none is or nothing is pending."""
    new: dict[int, list[Shard]] = {i: [] for i in idle}
    count = {i: left[i] for i in idle}
    while pending:
        hungry = [i for i in idle if len(held[i]) + len(new[i]) < 2 or count[i] < target(i)]
        if not hungry:
            break
        i = min(hungry, key=lambda j: (count[j], j))
        key, reqs = pending.popleft()
        new[i].append((key, reqs))
        count[i] += samples({key: reqs})
    return new


def feed_continuously(run: ShardRun) -> None:
    """See the module docstring. One `feed` call in flight per engine; an engine with shards in its batch is
    called again (with no new shards when none are left) until its shards are done. When the rollout fails,
    every engine still holding shards drops them (`LLMEngine.abort`)."""
    pool = run.pool
    held: dict[int, dict[Any, list[dict]]] = {i: {} for i in range(pool.serving)}
    left = {i: 0 for i in held}  # unfinished sequences each engine reported last
    calls: dict[Any, tuple[int, int]] = {}
    try:
        _feed_loop(run, held, left, calls)
    except BaseException:
        for i in (i for i in held if held[i]):  # queued behind the engine's call in flight, if any
            pool.engines[i].abort.remote()
        raise


def _feed_loop(run: ShardRun, held: dict[int, dict[Any, list[dict]]], left: dict[int, int],
               calls: dict[Any, tuple[int, int]]) -> None:
    import ray

    pool = run.pool
    while run.pending or any(held.values()):  # an engine holding shards always has a call in flight
        busy = {i for i, _ in calls.values()}
        idle = [i for i in held if i not in busy and (run.pending or held[i])]
        for i, new in hand_out(run.pending, held, left, idle, lambda j: queue_target(pool, j)).items():
            if new or held[i]:
                held[i].update(new)
                left[i] += samples(dict(new))
                refill = 3 * queue_target(pool, i) // 4 if run.pending else 0
                calls[pool.engines[i].feed.remote(new, refill)] = (i, pool._generation[i])
        [ref], _ = ray.wait(list(calls), num_returns=1)
        i, generation = calls.pop(ref)
        try:
            reply = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            lost, held[i], left[i] = list(held[i].items()), {}, 0
            run.lost(i, generation, lost, e)
            continue
        left[i] = reply["unfinished"]
        for key, results, seconds in reply["finished"]:
            run.finished(i, key, held[i].pop(key), results, seconds)


def feed_by_shard(run: ShardRun) -> None:
    """See the module docstring: one blocking `generate` per shard, two shards queued per engine."""
    import ray

    pool = run.pool
    slots = deque(i for _ in range(2) for i in range(pool.serving))
    inflight: dict[Any, tuple[int, int, Any, list[dict]]] = {}
    while run.pending or inflight:
        while run.pending and slots:
            i = slots.popleft()
            key, reqs = run.pending.popleft()
            inflight[pool.engines[i].generate.remote(reqs)] = (i, pool._generation[i], key, reqs)
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        i, generation, key, reqs = inflight.pop(ref)
        slots.append(i)
        try:
            results, seconds = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            run.lost(i, generation, [(key, reqs)], e)
            continue
        run.finished(i, key, reqs, results, seconds)
