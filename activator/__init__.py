"""The activator: a reverse proxy that holds requests for services at zero until a pod is ready.

Layout (Knative's pkg/activator, in Python): `config` (typed per-service settings), `routing` (Host/path ->
service), `lb_policy` (pure pod choice), `throttler` (per-service admission: hold, limit, dispatch),
`probe` and `backends` (endpoint readiness, pushed and probed), `poke` (tell the scaler at once),
`metrics` (plain counters, exposed at scrape), `service` (one service's settings, throttler and counters),
`proxy` (the serving front on kapa.relay), `admin` (ready, live, metrics, local endpoint feed), `app`
(wiring and drain), `__main__` (command line).
"""
