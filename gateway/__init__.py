"""The Envoy gateway: a Python xDS control plane that routes each service to its pods or to the activator.

Layers, each importing only the ones above it:

- `routing`: the model (services, hosts, mode, endpoints, activator), pure and validated.
- `resources`: the model as Envoy config (listener, routes, clusters, endpoints), pure.
- `cache`: snapshot cache with per-type (and per-resource) versions, and the state-of-the-world stream's
  nonce/ACK/NACK/subscription bookkeeping; `delta`: the same for incremental xDS.
- `ads`: the gRPC Aggregated Discovery Service (both variants) serving the cache to every Envoy.
- `control`: `Gateway`, the Python API the scaler and endpoint sources feed.
- `bootstrap`, `launcher`: Envoy's generated bootstrap and a process runner.
- `admin_http`, `__main__`: `kapa gateway` with its HTTP admin API.
"""
