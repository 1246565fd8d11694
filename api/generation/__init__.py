"""The dialect-neutral request path: body fields → runtime request → events.

fields.py reads the sampling and generation fields both dialects share, grammars.py turns
schemas and grammars into checked runtime grammars, fim.py builds fill-in-the-middle prompts,
and runs.py validates and fits every choice once, submits them, and interleaves their events
with their metrics. It may import the api root (errors, wire, metrics), models/ and
runtime/; no falcon, no dialect, no host."""
