"""What a server serves: registry.py (models by name, loading state, each model's loaded copy),
loader.py (engine directories → listing entries and loaded generators or embedders),
residency.py (keep_alive: unloading idle models, leases of running requests), pulls.py
(/api/pull in the background) and store.py (delete and copy of engine folders). It may import
the api root's errors and settings and runtime/; no falcon, no dialect, no host."""
