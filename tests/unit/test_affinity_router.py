"""The direct path's replica choice (api/scaleout/router.py): the key's replica while it has room, else the least loaded."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

pytest.importorskip("ray", reason="the Ray path is an extra: pip install -e '.[ray]' (make install does)")

from api.scaleout.affinity import rank
from api.scaleout.router import AffinityRouter


@dataclass
class FakeReplica:
    """What the router reads of a replica: its id and its ongoing requests (None: it does not answer)."""

    unique_id: str
    ongoing: int | None
    probes: list[str] = field(default_factory=list)
    delay_s: float = 0.0

    @property
    def replica_id(self) -> SimpleNamespace:
        return SimpleNamespace(unique_id=self.unique_id)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.probes.append(self.unique_id)
        await asyncio.sleep(self.delay_s)
        if self.ongoing is None:
            raise RuntimeError("the actor died")
        return self.ongoing


def router(overflow_at: int) -> AffinityRouter:
    # The policy alone: Ray's constructor (its controller, its event loop) is not needed for it.
    chooser = AffinityRouter.__new__(AffinityRouter)
    chooser.initialize_state(overflow_at=overflow_at)
    return chooser


def choose(chooser: AffinityRouter, replicas: list[FakeReplica], key: str | None) -> str:
    pending = SimpleNamespace(kwargs={"affinity": key})
    ranks = asyncio.run(chooser.choose_replicas(replicas, pending))  # type: ignore[arg-type]
    assert len(ranks) == 1 and len(ranks[0]) == 1  # one replica named: HAProxy sends the request there
    return ranks[0][0].unique_id


def test_a_conversation_stays_on_its_replica_while_it_has_a_free_slot() -> None:
    replicas = [FakeReplica("a", 1), FakeReplica("b", 0), FakeReplica("c", 0)]
    home = rank("k", ["a", "b", "c"])[0]
    for replica in replicas:
        replica.ongoing = 1 if replica.unique_id == home else 0
    assert choose(router(overflow_at=2), replicas, "k") == home  # one of two slots busy: still home
    assert [r for replica in replicas for r in replica.probes] == [home]  # one probe, the home's


def test_a_full_replica_overflows_to_the_least_loaded() -> None:
    ids = ["a", "b", "c"]
    home = rank("k", ids)[0]
    loads = dict(zip([i for i in ids if i != home], (3, 1), strict=True)) | {home: 2}
    replicas = [FakeReplica(i, loads[i]) for i in ids]
    least = min(loads, key=lambda i: loads[i])
    assert choose(router(overflow_at=2), replicas, "k") == least


def test_a_replica_that_does_not_answer_is_passed_over() -> None:
    ids = ["a", "b"]
    home, other = rank("k", ids)
    replicas = [FakeReplica(home, None), FakeReplica(other, 5)]
    assert choose(router(overflow_at=2), replicas, "k") == other  # busy, but alive
    replicas = [FakeReplica(home, None), FakeReplica(other, None)]
    assert choose(router(overflow_at=2), replicas, "k") == home  # none answered: the key's own (HAProxy retries elsewhere)


def test_a_burst_spreads_before_the_probes_see_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests routed a moment ago count on top of a replica's probed load: ten requests without
    # a key, while every probe still says 0, do not all go to one replica.
    monkeypatch.setattr("api.scaleout.router.IN_FLIGHT_S", 60.0)  # "a moment" however slow this machine is
    chooser = router(overflow_at=4)
    replicas = [FakeReplica("a", 0), FakeReplica("b", 0)]
    picks = [choose(chooser, replicas, None) for _ in range(10)]
    assert picks.count("a") == picks.count("b") == 5


def test_the_relay_path_returns_ranks_for_ray_to_weigh() -> None:
    replicas = [FakeReplica("a", 0), FakeReplica("b", 0)]
    home, other = rank("k", ["a", "b"])
    ranks = asyncio.run(router(overflow_at=0).choose_replicas(replicas, SimpleNamespace(kwargs={"affinity": "k"})))  # type: ignore[arg-type]
    assert [[r.unique_id for r in group] for group in ranks] == [[home], [other]]
    assert not any(replica.probes for replica in replicas)  # Ray probes on that path


def test_a_busy_replica_is_not_waited_for_once_it_has_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A replica busy decoding answers its probe late; routing goes on with its last answer.
    monkeypatch.setattr("api.scaleout.router.PROBE_TTL_S", 0.0)  # every request asks again
    chooser = router(overflow_at=2)
    home = FakeReplica("a", 0)
    assert choose(chooser, [home], "k") == "a"
    home.delay_s, home.ongoing = 2.0, 0
    started = time.monotonic()
    assert choose(chooser, [home], "k") == "a"
    assert time.monotonic() - started < 1.0  # not the 2 s the probe takes


def test_a_quick_next_turn_is_not_moved_by_turns_already_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests routed since the last answer count as ongoing; before a conversation leaves its
    # replica on that estimate, the replica is asked again.
    monkeypatch.setattr("api.scaleout.router.PROBE_TTL_S", 60.0)  # the last answer would serve every turn
    monkeypatch.setattr("api.scaleout.router.IN_FLIGHT_S", 0.0)
    chooser = router(overflow_at=2)
    replicas = [FakeReplica("a", 0), FakeReplica("b", 0)]
    home = rank("k", ["a", "b"])[0]
    assert [choose(chooser, replicas, "k") for _ in range(5)] == [home] * 5  # each turn over before the next
    assert len([p for replica in replicas for p in replica.probes]) >= 2  # asked again when the estimate said full


def test_replicas_that_went_away_are_forgotten() -> None:
    chooser = router(overflow_at=2)
    for name in "abcdefgh":
        choose(chooser, [FakeReplica(name, 0)], None)
    choose(chooser, [FakeReplica("a", 0)], None)
    # Forgotten as they pile up: never more than twice as many remembered as there are.
    assert "a" in chooser._routed and len(chooser._routed) <= 2 and len(chooser._answers) <= 2


def test_a_conversation_waits_for_a_slow_answer_before_it_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    # The estimate says full only because it counts finished turns; the replica answers slowly
    # (busy), and is waited for rather than left: its answer (nothing running) keeps the turn home.
    monkeypatch.setattr("api.scaleout.router.PROBE_TTL_S", 60.0)
    monkeypatch.setattr("api.scaleout.router.IN_FLIGHT_S", 0.0)
    chooser = router(overflow_at=2)
    replicas = [FakeReplica("a", 0), FakeReplica("b", 0)]
    home = rank("k", ["a", "b"])[0]
    assert [choose(chooser, replicas, "k") for _ in range(2)] == [home] * 2
    for replica in replicas:
        replica.delay_s = 0.2  # slower than PROBE_WAIT_S, within PROBE_DEADLINE_S
    assert choose(chooser, replicas, "k") == home
