"""The one way Kapa builds a Kubernetes API client, for every part that talks to the API server."""

from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None = None) -> Any:
    """The one way Kapa builds a Kubernetes ApiClient: the pod's ServiceAccount, else `kubeconfig` (or
    ~/.kube/config). Raises kubernetes.config.ConfigException when neither is usable."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)
