"""The Kubernetes layer: the one API client, list+watch, the Deployment catalog, sidecar injection and its
webhook, ScaledObjects and the one Event writer. Components use it; it uses only the relay and the core."""
