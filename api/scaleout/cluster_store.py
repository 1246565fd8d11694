"""The Responses API's store for a whole Ray cluster: one actor, and each replica's view of it.

`serve_forever` (api/scaleout/serve.py) starts `ResponsesActor` on its own node under a fixed
name; every replica's server gets a `ClusterResponseStore`, so any replica continues any
stored response.
"""

from __future__ import annotations

from typing import Any

import ray

from api.response_store import ResponseStore, StoredResponse

APP_NAME = "appliance"
# The Responses API's store, one for the whole cluster: a named actor on the node that runs `serve`.
RESPONSES_ACTOR = "appliance-responses"


# -- the stored responses, shared by every replica ----------------------------------------------


class ResponsesActor:
    """The bounded store of api/response_store.py, in one actor: any replica continues any response."""

    def __init__(self, path: str, max_records: int, ttl_s: float) -> None:
        self.store = ResponseStore(path or ":memory:", max_records=max_records, ttl_s=ttl_s)

    def put(self, record: StoredResponse) -> None:
        self.store.put(record)

    def get(self, response_id: str) -> StoredResponse | None:
        return self.store.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self.store.delete(response_id)


class ClusterResponseStore(ResponseStore):
    """A replica's view of the ResponsesActor: the same calls, answered by the actor."""

    def __init__(self, actor: Any, max_records: int) -> None:  # no database of its own
        self.actor = actor
        self.max_records = max_records

    def put(self, record: StoredResponse) -> None:
        if self.enabled:
            ray.get(self.actor.put.remote(record))

    def get(self, response_id: str) -> StoredResponse | None:
        return ray.get(self.actor.get.remote(response_id))

    def delete(self, response_id: str) -> bool:
        return bool(ray.get(self.actor.delete.remote(response_id)))

    def close(self) -> None:
        """Nothing of the replica's to close: the actor belongs to the `serve` process, which ends it."""
