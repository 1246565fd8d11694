"""Rerank routes: POST /v1/rerank and /rerank (Jina's and Cohere's v1 path), /v2/rerank (Cohere's v2,
which LangChain's CohereRerank calls)."""

from __future__ import annotations

import falcon

from api.context import ServerContext
from api.framing import read_request, send_json
from api.rerank import bodies, protocol
from runtime.manifest import TASK_RERANK


class Rerank:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = self.ctx
        body = read_request(req, ctx.settings, bodies.RerankRequest)
        plan = protocol.parse(body, ctx.settings)
        model = ctx.registry.get(plan.model, TASK_RERANK)
        result = model.reranking().rerank(plan.query, plan.documents, plan.max_tokens_per_doc)
        ctx.metrics.reranked(model.name, len(plan.documents), result.total_tokens)
        send_json(resp, protocol.ranked(plan, result.scores.tolist(), result.total_tokens, ctx.new_id("rerank-")))
