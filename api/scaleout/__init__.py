"""The Ray Serve host (`appliance serve --ray`): serve.py builds and runs the application,
direct.py the replicas that answer HTTP behind HAProxy and the router HAProxy asks, ingress.py
the relay path's HTTP entry, router.py the prefix-affinity request router (affinity.py: the
keys and the ranking, without Ray), replica.py a replica's server, cluster_store.py the
Responses API's store shared by the cluster. The only package that imports ray or starlette;
it may import anything in api/ (server/ for assemble); only the CLI imports it.

This file imports nothing: the CLI reads DIRECT_INGRESS_ENV before Ray Serve is imported."""

# Ray Serve's switches for the direct path, read when it is imported, in every process: its
# HAProxy ingress (which turns on direct ingress: replicas answer HTTP on ports of their own),
# and the request body passed to the ingress request router (the affinity key is in it).
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1"}
