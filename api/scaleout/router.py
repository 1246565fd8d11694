"""The replicas' request router: prefix affinity first (api/scaleout/affinity.py), queue length after."""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from api.scaleout.affinity import rank

# -- the replicas' router ---------------------------------------------------------------------


class AffinityRouter(RequestRouter):
    """Prefix affinity first, queue length after: the replica ranked first for the request's key.

    `choose_replicas` returns ranks: the key's own replica alone first, then the others. Ray
    tries a rank's replicas least loaded first and passes to the next rank when all of them
    are full, which is the balancing: a saturated replica's conversations overflow to the
    least loaded of the others, and requests without a key go to the least loaded of all.
    """

    async def choose_replicas(self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = None if pending_request is None else pending_request.kwargs.get("affinity")
        if not key:
            return [list(candidate_replicas)]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        ranked = [by_id[unique] for unique in rank(key, by_id)]
        return [[ranked[0]], ranked[1:]] if len(ranked) > 1 else [ranked]
