"""OpenAI's Files and Batch APIs: bodies.py (the wire structs), store.py (the files folder and
its SQLite records, shared by every worker), lines.py (checking a batch's input, and running
one line with its OpenAI route's own code), runner.py (each worker's background runner) and
routes.py (the Falcon resources). It may import the api root, generation/, models/ and
api.openai (whose answers its lines are); never another dialect or a host."""
