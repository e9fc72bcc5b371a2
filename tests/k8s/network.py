"""The test cluster's pod network: one Linux bridge in the root namespace and a network namespace per pod.

Pods get private addresses in POD_CIDR on a veth pair whose outer end is enslaved to the bridge; the bridge
itself holds GATEWAY_IP, which is where the API server, etcd's clients and Prometheus listen, so pods reach
the control plane and every pod reaches every other over plain L2. Nothing is routed out of the bridge.

Everything created here carries a Kapa prefix (NETNS_PREFIX, VETH_PREFIX, BRIDGE) so `sweep()` can remove
it all after a crash, and only that.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from pathlib import Path

BRIDGE = "kapabr0"
POD_CIDR = ipaddress.ip_network("10.244.0.0/24")
GATEWAY_IP = str(POD_CIDR.network_address + 1)
#: The Service ClusterIP range (no kube-proxy: ClusterIPs are allocated but never routed, see README).
SERVICE_CIDR = "10.96.0.0/24"
NETNS_PREFIX = "kapapod-"
VETH_PREFIX = "kapav"
NETNS_DIR = Path("/run/netns")


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result


def create_bridge() -> None:
    """The bridge with the gateway address (idempotent: a leftover of a killed run is swept first)."""
    sweep()
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{GATEWAY_IP}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def create_pod_network(netns: str, veth: str, address: str) -> None:
    """A network namespace with loopback and eth0=address/24, default route via the bridge."""
    ip("netns", "add", netns)
    try:
        peer = veth + "p"
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", netns)
        ip("link", "set", veth, "master", BRIDGE)
        ip("link", "set", veth, "up")
        ip("link", "set", "lo", "up", netns=netns)
        ip("link", "set", peer, "name", "eth0", netns=netns)
        ip("addr", "add", f"{address}/{POD_CIDR.prefixlen}", "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        ip("route", "add", "default", "via", GATEWAY_IP, netns=netns)
    except Exception:
        delete_pod_network(netns, veth)
        raise


def netns_pids(netns: str) -> list[int]:
    result = ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in result.stdout.split()]


def delete_pod_network(netns: str, veth: str) -> None:
    """Kill whatever still runs in the namespace, then delete it (its veth end goes with it)."""
    for pid in netns_pids(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ip("netns", "delete", netns, check=False)
    if veth:  # already gone with the namespace, unless creation failed before its peer moved in
        ip("link", "delete", veth, check=False)


def sweep() -> None:
    """Remove every pod namespace, veth and the bridge that a previous (possibly killed) run left behind."""
    names = NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else ()
    for path in names:
        if path.name.startswith(NETNS_PREFIX):
            delete_pod_network(path.name, "")
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(VETH_PREFIX):
            ip("link", "delete", name, check=False)
    ip("link", "delete", BRIDGE, check=False)
