"""Reranking (Jina's and Cohere's rerank API) at /v1/rerank, /rerank and /v2/rerank: bodies.py
(the wire structs), protocol.py (request → documents to score, scores → the ranked answer),
routes.py (the Falcon resource). It may import the api root and models/; never another
dialect or a host."""
