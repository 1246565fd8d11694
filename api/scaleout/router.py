"""The replicas' request router: prefix affinity first (api/scaleout/affinity.py), load after."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from api.scaleout.affinity import rank

# A replica's load is asked of the replica itself (its ongoing requests). A busy replica may
# answer slowly, and every request waits for the answer: one answer serves the requests routed
# within PROBE_TTL_S of it, and once a replica has answered, routing waits at most PROBE_WAIT_S
# for a fresh answer before it goes on with the last one (the probe finishes in the background).
PROBE_TTL_S = 0.05
PROBE_WAIT_S = 0.05
# A replica that has never answered gets this long; one that fails (its actor died) is passed over.
PROBE_DEADLINE_S = 0.5
# Requests routed this shortly before an answer may not have reached the replica yet (HAProxy
# connects and sends in a few ms): they count on top of it, with every request routed after
# it, so a burst of new conversations spreads instead of piling on one replica.
IN_FLIGHT_S = 0.02
# Routing times older than this are forgotten (every answer is younger).
ROUTED_MEMORY_S = 5.0

# -- the replicas' router ---------------------------------------------------------------------


class AffinityRouter(RequestRouter):
    """Prefix affinity first, load after: the replica ranked first for the request's key.

    On the relay path (`overflow_at` 0) `choose_replicas` returns ranks: the key's own replica
    alone first, then the others. Ray tries a rank's replicas least loaded first and passes to
    the next rank when all of them are full (`max_ongoing_requests`, the replica's slots),
    which is the balancing: a saturated replica's conversations overflow to the least loaded of
    the others, and requests without a key go to the least loaded of all.

    On the direct path Ray does not weigh capacity (HAProxy sends the request; the router only
    names the replica), so the router decides alone, with `overflow_at` the replica's slots:
    the key's replica while its ongoing requests (its last answer, plus the requests routed to
    it since) are fewer than that, else the least loaded replica; a replica whose probe fails
    is passed over while another answers. It always names one: a replica past its own
    queue refuses in the API's dialect (429 and Retry-After), nothing waits in Ray.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self.overflow_at = int(kwargs.get("overflow_at", 0))
        self._routed: dict[str, deque[float]] = {}  # replica -> when requests were routed to it
        self._answers: dict[str, tuple[float, int]] = {}  # replica -> (asked at, its ongoing requests)
        self._probes: dict[str, asyncio.Future[None]] = {}  # replica -> its probe in flight

    async def choose_replicas(self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = None if pending_request is None else pending_request.kwargs.get("affinity")
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        ranked = [by_id[unique] for unique in rank(key, by_id)] if key else list(candidate_replicas)
        if not getattr(self, "overflow_at", 0):
            if not key:
                return [list(candidate_replicas)]
            return [[ranked[0]], ranked[1:]] if len(ranked) > 1 else [ranked]
        chosen = await self._choose_by_load(ranked, keyed=bool(key))
        now = time.monotonic()
        routed = self._routed.setdefault(chosen.replica_id.unique_id, deque())
        routed.append(now)
        while routed[0] < now - ROUTED_MEMORY_S:
            routed.popleft()
        if len(self._routed) > 2 * len(by_id):  # replicas that went away (scale-down, replaced)
            for table in (self._routed, self._answers, self._probes):
                for gone in set(table) - set(by_id):
                    del table[gone]
        return [[chosen]]

    async def _choose_by_load(self, ranked: list[RunningReplica], keyed: bool) -> RunningReplica:
        if keyed:
            home = await self._load(ranked[0])
            if home is not None and home >= self.overflow_at:
                # Full by the estimate, which counts every request routed since the last answer,
                # finished or not (a quick next turn finds its last one there): ask again before
                # moving the conversation off the replica that holds its prefix.
                home = await self._load(ranked[0], fresh=True)
            if home is not None and home < self.overflow_at:
                return ranked[0]
        loads = await asyncio.gather(*(self._load(replica) for replica in ranked))
        answered = [(load, position) for position, load in enumerate(loads) if load is not None]
        if not answered:
            return ranked[0]  # none answered in time: the key's own (HAProxy retries a refused connection elsewhere)
        if keyed and answered[0][1] != 0 and answered[0][0] < self.overflow_at:
            return ranked[answered[0][1]]  # the key's replica is gone: its next in rank order takes its conversations
        return ranked[min(answered)[1]]  # least loaded; ties go to the rank order

    async def _load(self, replica: RunningReplica, fresh: bool = False) -> int | None:
        """The replica's ongoing requests at its last answer plus those routed to it since; None: it failed.

        `fresh`: ask the replica now, whatever the age of its last answer, and wait for the answer
        as long as for a first one (moving a conversation costs its cached prefix: worth up to
        PROBE_DEADLINE_S of certainty; on a busy replica a stale answer would count finished
        turns as running).
        """
        unique = replica.replica_id.unique_id
        known = self._answers.get(unique)
        if known is None or fresh or time.monotonic() - known[0] > PROBE_TTL_S:
            probe = self._probes.get(unique)
            if probe is None or probe.done():
                probe = self._probes[unique] = asyncio.ensure_future(self._probe(replica))
                probe.add_done_callback(_retrieved)
            try:
                await asyncio.wait_for(asyncio.shield(probe), PROBE_WAIT_S if known and not fresh else PROBE_DEADLINE_S)
            except asyncio.TimeoutError:
                if known is None:
                    return None  # never answered: passed over while another replica answers
            except Exception:  # the actor died or cannot be reached (Ray's controller replaces a dead one)
                self._answers.pop(unique, None)
                return None
            known = self._answers.get(unique, known)
        if known is None:
            return None
        answered_at, ongoing = known
        routed = self._routed.get(unique, ())
        return ongoing + sum(1 for at in routed if at >= answered_at - IN_FLIGHT_S)

    async def _probe(self, replica: RunningReplica) -> None:
        unique = replica.replica_id.unique_id
        asked_at = time.monotonic()
        try:
            ongoing = await replica.get_queue_len(deadline_s=PROBE_DEADLINE_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Failed after routing stopped waiting for it too: its last answer must not stand in.
            self._answers.pop(unique, None)
            raise
        self._answers[unique] = (asked_at, int(ongoing))


def _retrieved(probe: asyncio.Future[None]) -> None:
    """Take a finished probe's error, if any: routing may have stopped waiting for it (no 'never retrieved' noise)."""
    if not probe.cancelled():
        probe.exception()
