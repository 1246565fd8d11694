"""The extras dialect: tokenize/detokenize, /health, /metrics, /openapi.json and the chat page's
routes. bodies.py holds its wire structs, routes.py its Falcon resources. It may import the
api root, generation/ and models/; never another dialect or a host."""
