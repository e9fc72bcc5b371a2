"""How several activator replicas share each pod's containerConcurrency, so that together they never send a
pod more requests than its limit.

Every replica sees the same facts: the ready pods of its own Service (the activator's peers, from
EndpointSlices) and each service's pods. From them each computes its place among the peers (`Share`: its
index in address order, and how many there are) and, per pod, its part of the pod's limit
(`pod_capacity`): the limit divided evenly, the remainder going to different replicas for different pods.
Summed over the replicas, a pod's parts are exactly its limit, whatever the limit and the number of
replicas. When the limit is smaller than the number of replicas this becomes subsetting: each pod belongs
to `limit` replicas, and consecutive pods to different ones (Knative's activator subsets pods likewise).

A replica that is not (yet, or any more) among the ready peers counts itself in: it may over-count the
peers by one for a moment, which only lowers its own parts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from kapa.core.services import Endpoint


@dataclass(frozen=True)
class Share:
    """This replica's place among the activator replicas: index in address order, of count."""

    index: int = 0
    count: int = 1


#: A single activator: every pod's whole limit is its own.
ALONE = Share()


def share_of(own_address: str, peers: Iterable[Endpoint]) -> Share:
    """This replica's Share among `peers` (the ready pods of the activator's Service), itself included."""
    own = ipaddress.ip_address(own_address)
    addresses = sorted({ipaddress.ip_address(peer.host) for peer in peers} | {own})
    return Share(addresses.index(own), len(addresses))


def pod_capacity(container_concurrency: int, pod_index: int, share: Share) -> int | None:
    """This replica's part of one pod's limit (None: no limit), the pod being `pod_index` in the service's
    endpoint order, which every replica sees alike."""
    if container_concurrency == 0:
        return None
    base, remainder = divmod(container_concurrency, share.count)
    return base + (1 if (pod_index - share.index) % share.count < remainder else 0)
