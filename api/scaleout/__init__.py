"""The Ray Serve host (`appliance serve --ray`): serve.py builds and runs the application,
ingress.py is its HTTP entry, router.py the prefix-affinity request router (affinity.py: the
keys and the ranking, without Ray), replica.py one engine's server, cluster_store.py the
Responses API's store shared by the cluster. The only package that imports ray or starlette;
it may import anything in api/ (server/ for assemble); only the CLI imports it."""
