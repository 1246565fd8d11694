"""Tool calling for both dialects: plan.py puts the tools into the prompt and picks the grammar
the answer must follow (Hermes blocks or the generic envelope); readers.py reads calls from the
answer as it streams; json_prefix.py parses a JSON value still being written. It may import the
api root's errors, generation/grammars.py and runtime/; no falcon, no dialect, no host."""
