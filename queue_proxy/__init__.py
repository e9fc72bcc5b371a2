"""The queue-proxy sidecar: proxies to the app, counts in-flight requests exactly, limits concurrency, drains."""
