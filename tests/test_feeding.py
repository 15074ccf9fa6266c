"""How the pool hands shards to engines (rollout.feeding.hand_out): pure bookkeeping, no engines."""

from __future__ import annotations

from collections import deque

from east_ds.rollout.feeding import hand_out, samples


def shard(key, prompts: int, n: int = 4):
    return key, [{"n": n}] * prompts


def test_idle_engines_take_turns_from_the_front_of_the_queue():
    pending = deque(shard(k, 2) for k in range(6))
    new = hand_out(pending, {0: {}, 1: {}, 2: {}}, {0: 0, 1: 0, 2: 0}, [0, 1, 2], lambda i: 100)
    assert [[k for k, _ in new[i]] for i in range(3)] == [[0, 3], [1, 4], [2, 5]]
    assert not pending


def test_an_engine_keeps_two_shards_and_its_target_of_samples_but_no_more():
    # 8 samples a shard; target 20 samples: three shards reach it (24), a fourth would not be needed.
    pending = deque(shard(k, 2) for k in range(10))
    new = hand_out(pending, {0: {}}, {0: 0}, [0], lambda i: 20)
    assert [k for k, _ in new[0]] == [0, 1, 2] and len(pending) == 7
    # A big shard meets the target alone but an engine still holds two shards while any remain.
    pending = deque([shard("big", 50), shard("next", 1), shard("later", 1)])
    new = hand_out(pending, {0: {}}, {0: 0}, [0], lambda i: 20)
    assert [k for k, _ in new[0]] == ["big", "next"] and [k for k, _ in pending] == ["later"]


def test_shards_an_engine_already_holds_count_and_busy_engines_take_none():
    held = {0: dict([shard("a", 5)]), 1: {}, 2: dict([shard("b", 1)])}
    left = {0: 20, 1: 0, 2: 4}  # unfinished sequences each engine reported
    pending = deque(shard(k, 1) for k in range(4))
    new = hand_out(pending, held, left, [0, 1], lambda i: 8)  # engine 2 is busy stepping
    assert 2 not in new
    assert [k for k, _ in new[1]] == [0, 1]  # the fewest samples first; 8 samples in two shards: full
    assert samples(dict(new[1])) == 8
    assert [k for k, _ in new[0]] == [2]  # holds one shard: takes a second although over the target
    assert [k for k, _ in pending] == [3]


def test_nothing_pending_hands_out_nothing():
    assert hand_out(deque(), {0: {}}, {0: 0}, [0], lambda i: 8) == {0: []}


def test_what_counts_is_what_an_engine_has_left_unfinished():
    # Engine 0 holds two big shards but reported only 3 sequences left (their stragglers): it takes a shard
    # first although it holds far more samples than engine 1.
    held = {0: dict([shard("a", 50), shard("b", 50)]), 1: dict([shard("c", 1)])}
    pending = deque(shard(k, 2) for k in range(3))
    new = hand_out(pending, held, {0: 3, 1: 4}, [0, 1], lambda i: 10)
    assert [k for k, _ in new[0]] == [0] and [k for k, _ in new[1]] == [1]  # 11 and 12 of 10: both full
    assert [k for k, _ in pending] == [2]
