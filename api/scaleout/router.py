"""The replicas' request router: prefix affinity first (api/scaleout/affinity.py), load after."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from api.scaleout.affinity import rank

# How long a replica's load probe may take before the router goes on without it.
PROBE_DEADLINE_S = 0.5
# Requests routed this recently may not have reached their replica yet (HAProxy connects and
# sends in a few ms): they count on top of its probed load, so a burst of new conversations
# spreads instead of piling on one replica. Short, or a conversation's quick next turn would
# find its own last turn counted twice and overflow.
IN_FLIGHT_S = 0.02

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
    the key's replica while its ongoing requests (probed, plus those routed to it in the last
    IN_FLIGHT_S) are fewer than that, else the least loaded replica; a replica whose probe
    fails is passed over while another answers. It always names one: a replica past its own
    queue refuses in the API's dialect (429 and Retry-After), nothing waits in Ray.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self.overflow_at = int(kwargs.get("overflow_at", 0))
        self._routed: dict[str, deque[float]] = {}

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
        self._routed.setdefault(chosen.replica_id.unique_id, deque()).append(time.monotonic())
        return [[chosen]]

    async def _choose_by_load(self, ranked: list[RunningReplica], keyed: bool) -> RunningReplica:
        if keyed:
            home = await self._load(ranked[0])
            if home is not None and home < self.overflow_at:
                return ranked[0]
        loads = await asyncio.gather(*(self._load(replica) for replica in ranked))
        answered = [(load, position) for position, load in enumerate(loads) if load is not None]
        if not answered:
            return ranked[0]  # none answered in time: the key's own (HAProxy retries a refused connection elsewhere)
        if keyed and answered[0][1] != 0 and answered[0][0] < self.overflow_at:
            return ranked[answered[0][1]]  # the key's replica is gone: its next in rank order takes its conversations
        return ranked[min(answered)[1]]  # least loaded; ties go to the rank order

    async def _load(self, replica: RunningReplica) -> int | None:
        """Ongoing requests on the replica plus those routed to it that may not have arrived; None: no answer."""
        try:
            ongoing = await asyncio.wait_for(replica.get_queue_len(deadline_s=PROBE_DEADLINE_S), PROBE_DEADLINE_S)
        except Exception:  # a dead, unreachable or stalled replica (Ray's controller replaces a dead one)
            return None
        routed = self._routed.get(replica.replica_id.unique_id)
        if routed is None:
            return int(ongoing)
        horizon = time.monotonic() - IN_FLIGHT_S
        while routed and routed[0] < horizon:
            routed.popleft()
        return int(ongoing) + len(routed)
