"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens): bodies.py (the wire
structs), protocol.py (a request → the chat completion it runs as; the message and its typed
stream events), routes.py (the Falcon resources). It may import the api root, models/,
generation/, tools/ and, being a translation onto chat completions, the OpenAI dialect's chat
bodies and parser (api.openai.bodies, api.openai.protocol); never another dialect or a host."""
