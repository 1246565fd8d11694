"""runtime.embeddings.EncodeBatcher: concurrent callers' inputs share encoder runs, each gets its own vectors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.embeddings import EncodeBatcher


class Encoder:
    """A stand-in encoder: a row's vector is (sum of its ids, its length); runs are recorded.

    With `hold`, the first run waits until `hold` more calls are queued behind it, so a test
    knows those calls arrived while a run was under way.
    """

    def __init__(self, hold: int = 0, fail_on: int | None = None) -> None:
        self.batches: list[list[list[int]]] = []
        self.hold = hold
        self.fail_on = fail_on
        self.batcher: EncodeBatcher | None = None

    def __call__(self, rows: list[list[int]]) -> np.ndarray:
        if self.hold and not self.batches:
            assert self.batcher is not None
            for _ in range(2000):
                if len(self.batcher._queue) >= self.hold:
                    break
                threading.Event().wait(0.005)
        self.batches.append([list(row) for row in rows])
        if self.fail_on is not None and any(self.fail_on in row for row in rows):
            raise RuntimeError(f"the encoder failed on a batch with {self.fail_on}")
        return np.array([[sum(row), len(row)] for row in rows], dtype=np.float32)


def batcher(encoder: Encoder, **limits: int) -> EncodeBatcher:
    encoder.batcher = EncodeBatcher(encoder, 2, **limits)
    return encoder.batcher


def expected(rows: list[list[int]]) -> np.ndarray:
    return np.array([[sum(row), len(row)] for row in rows], dtype=np.float32)


def test_a_lone_call_runs_at_once_shortest_first_and_gets_its_vectors_in_order():
    encoder = Encoder()
    rows = [[1, 2, 3], [4], [5, 6]]
    assert np.array_equal(batcher(encoder).encode(rows), expected(rows))
    assert encoder.batches == [[[4], [5, 6], [1, 2, 3]]]


def test_calls_that_arrive_during_a_run_share_the_next_one():
    encoder = Encoder(hold=6)
    shared = batcher(encoder)
    inputs = [[[i, i + 1]] for i in range(7)]
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = shared.encode(inputs[i])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not encoder.batches and not shared._running:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(10)
    assert all(np.array_equal(results[i], expected(inputs[i])) for i in range(7))
    assert len(encoder.batches) == 2 and len(encoder.batches[1]) == 6  # the six late calls: one run
    stats = shared.stats
    assert (stats.calls, stats.runs, stats.rows, stats.largest_run, stats.shared_runs) == (7, 2, 7, 6, 1)


def test_a_run_holds_at_most_batch_size_rows_and_the_token_budget():
    encoder = Encoder()
    rows = [[1] * n for n in (1, 1, 2, 2, 3, 3, 8)]
    vectors = batcher(encoder, batch_size=3, max_batch_tokens=6).encode(rows)
    assert np.array_equal(vectors, expected(rows))
    assert all(len(batch) <= 3 and len(batch) * max(len(r) for r in batch) <= 6 or len(batch) == 1 for batch in encoder.batches)
    assert [len(batch) for batch in encoder.batches] == [3, 2, 1, 1]  # 1,1,2 | 2,3 | 3 | 8 alone (over the budget by itself)


def test_a_failed_run_fails_only_the_calls_in_it_and_the_next_calls_run():
    encoder = Encoder(hold=2, fail_on=99)
    shared = batcher(encoder, batch_size=1)
    outcomes: dict[str, object] = {}

    def call(name: str, rows: list[list[int]]) -> None:
        try:
            outcomes[name] = shared.encode(rows)
        except RuntimeError as exc:
            outcomes[name] = exc

    first = threading.Thread(target=call, args=("first", [[1]]))
    first.start()
    while not shared._running:
        threading.Event().wait(0.001)
    bad = threading.Thread(target=call, args=("bad", [[99, 1]]))
    good = threading.Thread(target=call, args=("good", [[2, 2, 2]]))
    bad.start()
    good.start()
    for thread in (first, bad, good):
        thread.join(10)
    assert isinstance(outcomes["bad"], RuntimeError) and "99" in str(outcomes["bad"])
    assert np.array_equal(outcomes["good"], expected([[2, 2, 2]]))  # type: ignore[arg-type]
    assert np.array_equal(outcomes["first"], expected([[1]]))  # type: ignore[arg-type]
    assert np.array_equal(shared.encode([[3]]), expected([[3]]))


@pytest.mark.parametrize("limit", [1, 4])
def test_many_threads_each_get_their_own_answer(limit: int):
    encoder = Encoder()
    shared = batcher(encoder, batch_size=limit)
    inputs = [[[i] * (1 + i % 5), [i]] for i in range(40)]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, shared.encode(inputs[i]))) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(np.array_equal(results[i], expected(inputs[i])) for i in range(40))
    assert shared.stats.calls == 40 and shared.stats.rows == 80


def test_a_failure_of_the_batcher_itself_reaches_every_caller_it_took():
    encoder = Encoder()
    shared = batcher(encoder)

    def broken(calls):
        raise MemoryError("no room for the vectors")

    shared._run_all = broken  # type: ignore[method-assign]
    with pytest.raises(MemoryError):
        shared.encode([[1]])
    del shared._run_all  # the class's own again: the batcher still works
    assert np.array_equal(shared.encode([[2]]), expected([[2]]))
