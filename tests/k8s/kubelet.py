"""A test "process kubelet": runs the pods the scheduler binds to its Node as local processes.

    python -m tests.k8s.kubelet --kubeconfig KUBECONFIG --root DIR [--node NAME]

What a real kubelet does that the end-to-end tests depend on, and nothing else:
- registers a Ready Node with ample capacity and renews its Lease (the node lifecycle controller would
  otherwise taint it unreachable);
- watches the pods bound to the Node; for each, creates a network namespace with a private address on a
  veth to the test bridge (tests.k8s.network), writes its volumes (ConfigMap, Secret, emptyDir, projected
  ServiceAccount token + kube-root-ca.crt + namespace) under DIR/pods/UID/volumes, and starts every
  container as a process in that network namespace and a private mount namespace of its own, where the
  volumes are bind-mounted at their mountPaths (plus /etc/hosts and /etc/resolv.conf, see below);
- image names are ignored: a container's command+args run as they are, with `kapa`, `envoy` and anything
  else resolved on the test environment's PATH (its venv first); security contexts are not enforced;
- sets the environment: `env` (value, fieldRef metadata.name/namespace/uid, spec.nodeName,
  spec.serviceAccountName, status.podIP, status.hostIP, configMapKeyRef/secretKeyRef), $(VAR) expansion in
  command/args, and KUBERNETES_SERVICE_HOST/PORT pointing at the API server's real address;
- runs startup, readiness and liveness probes (httpGet, tcpSocket, exec), restarts exited or unhealthy
  containers (restartPolicy; a pod whose containers all exited for good, as a Job's, ends Succeeded or Failed),
  and patches the pod's status (phase, podIP, conditions, containerStatuses);
- on deletion: readiness false, SIGTERM to every container, SIGKILL after the grace period, network
  namespace removed, then the pod object deleted with grace 0.

Cluster DNS stand-in: one hosts file (DIR/hosts), bind-mounted read-only as /etc/hosts in every container,
maps each Service's names (NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local) to the address of one
ready endpoint of it (the lowest address) - no ClusterIP, since nothing routes ClusterIPs without kube-proxy.
It is rewritten in place whenever EndpointSlices change, so the mounts see it. Ports are the endpoint ports,
which is why the chart's in-cluster Services use equal port and targetPort.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.k8s import network

VENV_BIN = Path(sys.executable).parent
#: Paths the containers' processes run from: the venv and the clone (its packages are installed editable).
PROTECTED_PATHS = (Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2])
PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEARTBEAT_S = 10.0
MAX_BACKOFF_S = 10.0

log_lock = threading.Lock()


def log(message: str, **fields: object) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    with log_lock:
        print(f"{time.strftime('%H:%M:%S')} kubelet {message} {text}", flush=True)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the node ------------------------------------------------------------------------------------------------

def node_status(name: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    conditions = [
        {"type": kind, "status": "False", "reason": "KubeletHasSufficient", "lastHeartbeatTime": now()}
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process kubelet",
          "lastHeartbeatTime": now()}]
    return {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": network.GATEWAY_IP}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "machineID": "kapa-test", "systemUUID": "kapa-test", "bootID": "kapa-test",
                "kernelVersion": os.uname().release, "osImage": "process kubelet",
                "containerRuntimeVersion": "kapa-process://1", "kubeletVersion": "v1.36.3",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }
    }


def register_node(core: client.CoreV1Api, name: str) -> None:
    body = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64"}},
    }
    try:
        core.create_node(body)
    except ApiException as error:
        if error.status != 409:
            raise
    core.patch_node_status(name, node_status(name))


def renew_lease(coordination: client.CoordinationV1Api, name: str) -> None:
    namespace = "kube-node-lease"
    spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
    try:
        coordination.patch_namespaced_lease(name, namespace, {"spec": spec})
    except ApiException as error:
        if error.status != 404:
            raise
        coordination.create_namespaced_lease(
            namespace, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec})


# --- per pod ------------------------------------------------------------------------------------------------

@dataclass
class Probe:
    """A probe's spec and its running tally."""

    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds", 0))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, ok: bool) -> bool | None:
        """Count one result; True/False once the success/failure threshold is reached, else None."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            return True if self.successes >= int(self.spec.get("successThreshold", 1)) else None
        self.successes, self.failures = 0, self.failures + 1
        return False if self.failures >= int(self.spec.get("failureThreshold", 3)) else None


@dataclass
class Container:
    spec: dict[str, Any]
    process: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    ready: bool = False
    started: bool = False
    restarts: int = 0
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    #: Exited for good: its pod's restartPolicy does not start it again (a Job's pod, run to completion).
    completed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec["name"]


class Pod:
    """One pod's sandbox (network namespace, volumes) and its containers' processes."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], address: str) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.address = address
        self.netns = network.NETNS_PREFIX + self.uid[:8]
        self.veth = network.VETH_PREFIX + self.uid[:8]
        self.dir = kubelet.root / "pods" / self.uid
        self.containers = [Container(spec) for spec in pod["spec"]["containers"]]
        self.start_time = now()
        self.terminating = False
        self.transitions: dict[str, tuple[str, str]] = {}
        self.dirty = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- sandbox ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(network.create_pod_network, self.netns, self.veth, self.address)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.write_volumes)
        self.tasks.append(asyncio.create_task(self.report_status(), name=f"status {self.label()}"))
        self.mark_dirty()
        for container in self.containers:
            name = f"{self.label()}/{container.name}"
            container.tasks.append(asyncio.create_task(self.supervise(container), name=name))
        log("pod started", pod=self.label(), ip=self.address)

    def write_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            target = self.dir / "volumes" / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                source = volume["configMap"]
                data = self.config_map_data(source["name"], source.get("optional", False))
                self.write_items(target, data, source.get("items"))
            elif "secret" in volume:
                source = volume["secret"]
                data = self.secret_data(source["secretName"], source.get("optional", False))
                self.write_items(target, data, source.get("items"))
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        token = self.service_account_token(source["serviceAccountToken"])
                        self.write_items(target, {source["serviceAccountToken"]["path"]: token.encode()}, None)
                    elif "configMap" in source:
                        data = self.config_map_data(source["configMap"]["name"], source["configMap"].get("optional"))
                        self.write_items(target, data, source["configMap"].get("items"))
                    elif "secret" in source:
                        data = self.secret_data(source["secret"]["name"], source["secret"].get("optional"))
                        self.write_items(target, data, source["secret"].get("items"))
                    elif "downwardAPI" in source:
                        data = {item["path"]: self.field_value(item["fieldRef"]["fieldPath"]).encode()
                                for item in source["downwardAPI"].get("items") or [] if "fieldRef" in item}
                        self.write_items(target, data, None)
            elif "emptyDir" in volume:
                pass
            else:
                log("volume type not supported; left empty", pod=self.label(), volume=volume["name"])

    def config_map_data(self, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            config_map = self.kubelet.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404 and optional:
                return {}
            raise
        data = {key: value.encode() for key, value in (config_map.data or {}).items()}
        data.update({key: base64.b64decode(value) for key, value in (config_map.binary_data or {}).items()})
        return data

    def secret_data(self, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            secret = self.kubelet.core.read_namespaced_secret(name, self.namespace)
        except ApiException as error:
            if error.status == 404 and optional:
                return {}
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def service_account_token(self, source: dict[str, Any]) -> str:
        spec: dict[str, Any] = {
            "expirationSeconds": int(source.get("expirationSeconds", 3607)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        return self.kubelet.core.create_namespaced_service_account_token(account, self.namespace, body).status.token

    @staticmethod
    def write_items(target: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None) -> None:
        chosen = {item["path"]: data[item["key"]] for item in items if item["key"] in data} if items else data
        for relative, content in chosen.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)

    def field_value(self, field_path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        values = {
            "metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.address, "status.hostIP": network.GATEWAY_IP,
        }
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        return values[field_path]

    # -- containers -------------------------------------------------------------------------------------------

    def environment(self, spec: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": PATH, "HOME": "/tmp", "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": network.GATEWAY_IP,
            "KUBERNETES_SERVICE_PORT": str(self.kubelet.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.kubelet.api_port),
        }
        for entry in spec.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = expand(entry["value"], env)
            elif "valueFrom" in entry:
                source = entry["valueFrom"]
                if "fieldRef" in source:
                    env[entry["name"]] = self.field_value(source["fieldRef"]["fieldPath"])
                elif "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    value = self.config_map_data(ref["name"], ref.get("optional")).get(ref["key"])
                    if value is not None:
                        env[entry["name"]] = value.decode()
                elif "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    value = self.secret_data(ref["name"], ref.get("optional")).get(ref["key"])
                    if value is not None:
                        env[entry["name"]] = value.decode()
                elif "resourceFieldRef" in source:
                    env[entry["name"]] = "0"
        return env

    def mount_script(self, spec: dict[str, Any]) -> str:
        """Shell run inside the container's fresh mount namespace: bind the volumes, then exec the command.

        A volume mounted over an ancestor of a path the processes need (the venv and the clone when they
        live under /tmp, the kubelet's own directory with every volume's source) would hide it. So such a
        path is first bound onto the same relative place inside the volume's source, and the volume is
        mounted recursively (--rbind), carrying that bind along: the path stays where it was.
        """
        lines = ["set -e"]
        binds = [(self.kubelet.hosts_file, "/etc/hosts", True), (self.kubelet.resolv_file, "/etc/resolv.conf", True)]
        for mount in spec.get("volumeMounts") or []:
            source = self.dir / "volumes" / mount["name"]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            binds.append((source, Path(mount["mountPath"]), bool(mount.get("readOnly"))))
        for source, target, read_only in binds:
            target = Path(target)
            self.kubelet.ensure_mount_point(target, is_dir=source.is_dir())
            if source.is_dir():
                for needed in sorted(PROTECTED_PATHS + (self.kubelet.root,), key=lambda path: len(path.parts)):
                    if needed != target and needed.is_relative_to(target):
                        inner = source / needed.relative_to(target)
                        inner.mkdir(parents=True, exist_ok=True)
                        lines.append(f"mount --bind {shlex.quote(str(needed))} {shlex.quote(str(inner))}")
            lines.append(f"mount --rbind {shlex.quote(str(source))} {shlex.quote(str(target))}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    def argv(self, spec: dict[str, Any], env: dict[str, str]) -> list[str]:
        command = [expand(part, env) for part in (spec.get("command") or [])]
        args = [expand(part, env) for part in (spec.get("args") or [])]
        full = command + args
        if not full:
            raise RuntimeError(f"container {spec['name']} has no command (the process kubelet ignores images)")
        executable = shutil.which(full[0], path=PATH)
        if executable is None:
            raise RuntimeError(f"container {spec['name']}: {full[0]!r} not found on {PATH}")
        return [executable, *full[1:]]

    async def run_container(self, container: Container) -> None:
        spec = container.spec
        env = self.environment(spec)
        argv = self.argv(spec, env)
        script = self.mount_script(spec)
        wrapper = ["nsenter", f"--net={network.NETNS_DIR / self.netns}", "unshare", "--mount", "--propagation",
                   "private", "sh", "-c", script, "sh", *argv]
        log_file = open(self.dir / "logs" / f"{container.name}.log", "ab")
        try:
            container.process = await asyncio.create_subprocess_exec(
                *wrapper, env=env, stdout=log_file, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                cwd=spec.get("workingDir") or "/", start_new_session=True)
        finally:
            log_file.close()
        container.started_at, container.terminated = now(), None
        log("container started", pod=self.label(), container=container.name, pid=container.process.pid,
            argv=shlex.join(argv))

    async def supervise(self, container: Container) -> None:
        """Run the container, probing it, restarting it as restartPolicy says, until the pod terminates."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        backoff = 1.0
        while not self.terminating:
            try:
                await self.run_container(container)
            except Exception as error:  # noqa: BLE001 - a broken spec: report it, retry like a crash
                log("container failed to start", pod=self.label(), container=container.name, error=repr(error))
                container.terminated = {"exitCode": 128, "reason": "StartError", "message": str(error)[:500],
                                        "finishedAt": now()}
                self.mark_dirty()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self.mark_dirty()
            probes = [asyncio.create_task(self.probe_loop(container))]
            assert container.process is not None
            code = await container.process.wait()
            for task in probes:
                task.cancel()
            container.ready = container.started = False
            container.terminated = {"exitCode": code if code >= 0 else 128 - code,
                                    "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": container.started_at, "finishedAt": now()}
            log("container exited", pod=self.label(), container=container.name, code=code)
            if not self.terminating and (policy == "Never" or (policy == "OnFailure" and code == 0)):
                container.completed = True
            self.mark_dirty()
            if self.terminating or container.completed:
                return
            container.last_terminated = container.terminated
            container.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def probe_loop(self, container: Container) -> None:
        """Startup, then readiness and liveness, each on its own period."""
        spec = container.spec
        startup = spec.get("startupProbe")
        if startup is not None:
            probe = Probe(startup)
            await asyncio.sleep(probe.initial_delay)
            while probe.record(await self.probe(container, probe)) is not True:
                await asyncio.sleep(probe.period)
        container.started = True
        self.mark_dirty()
        loops = [self.readiness_loop(container, spec.get("readinessProbe"))]
        if spec.get("livenessProbe"):
            loops.append(self.liveness_loop(container, Probe(spec["livenessProbe"])))
        await asyncio.gather(*loops)

    async def readiness_loop(self, container: Container, spec: dict[str, Any] | None) -> None:
        if spec is None:
            container.ready = True
            self.mark_dirty()
            return
        probe = Probe(spec)
        await asyncio.sleep(probe.initial_delay)
        while True:
            verdict = probe.record(await self.probe(container, probe))
            ready = container.ready if verdict is None else verdict
            if self.terminating:
                ready = False
            if ready != container.ready:
                container.ready = ready
                log("readiness changed", pod=self.label(), container=container.name, ready=ready)
                self.mark_dirty()
            await asyncio.sleep(probe.period)

    async def liveness_loop(self, container: Container, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay)
        while True:
            await asyncio.sleep(probe.period)
            if probe.record(await self.probe(container, probe)) is False:
                log("liveness failed; restarting", pod=self.label(), container=container.name)
                await self.stop_container(container, grace_s=float(self.pod["spec"].get(
                    "terminationGracePeriodSeconds", 30)))
                return

    def port(self, container: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for spec in self.pod["spec"]["containers"]:
            for entry in spec.get("ports") or []:
                if entry.get("name") == port:
                    return int(entry["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    async def probe(self, container: Container, probe: Probe) -> bool:
        spec = probe.spec
        try:
            if "httpGet" in spec:
                action = spec["httpGet"]
                scheme = action.get("scheme", "HTTP").lower()
                host = action.get("host") or self.address
                url = f"{scheme}://{host}:{self.port(container, action['port'])}{action.get('path', '/')}"
                headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
                timeout = aiohttp.ClientTimeout(total=probe.timeout)
                async with self.kubelet.http.get(url, headers=headers, timeout=timeout, ssl=False,
                                                 allow_redirects=False) as response:
                    return 200 <= response.status < 400
            if "tcpSocket" in spec:
                port = self.port(container, spec["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.address, port), probe.timeout)
                writer.close()
                return True
            if "exec" in spec:
                if container.process is None:
                    return False
                process = await asyncio.create_subprocess_exec(
                    "nsenter", "-t", str(container.process.pid), "-n", "-m", *spec["exec"]["command"],
                    env={"PATH": PATH}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                try:
                    return await asyncio.wait_for(process.wait(), probe.timeout) == 0
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    return False
            if "grpc" in spec:  # a TCP connect stands in for the gRPC health check
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.address, int(spec["grpc"]["port"])), probe.timeout)
                writer.close()
                return True
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError):
            return False
        return False

    async def pre_stop(self, container: Container) -> None:
        """The container's preStop hook (sleep, exec or httpGet), as a real kubelet runs it before SIGTERM."""
        hook = ((container.spec.get("lifecycle") or {}).get("preStop")) or {}
        if "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"]["seconds"]))
        elif "exec" in hook or "httpGet" in hook:
            await self.probe(container, Probe({**hook, "timeoutSeconds": 3600}))

    async def stop_container(self, container: Container, grace_s: float, run_pre_stop: bool = True) -> None:
        """preStop, SIGTERM, then SIGKILL once `grace_s` (counted from the start) has passed."""
        process = container.process
        if process is None or process.returncode is not None:
            return
        deadline = time.monotonic() + grace_s
        if run_pre_stop:
            try:
                await asyncio.wait_for(self.pre_stop(container), grace_s)
            except TimeoutError:
                pass
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log("grace period over; SIGKILL", pod=self.label(), container=container.name)
        signal_group(process.pid, signal.SIGKILL)

    # -- status -------------------------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self.dirty.set()

    def condition(self, kind: str, value: bool) -> dict[str, Any]:
        status = "True" if value else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, now())
        return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": self.transitions[kind][1]}

    def container_status(self, container: Container) -> dict[str, Any]:
        running = container.process is not None and container.process.returncode is None
        if running:
            state: dict[str, Any] = {"running": {"startedAt": container.started_at}}
        elif container.terminated is not None and (self.terminating or container.completed):
            state = {"terminated": container.terminated}
        elif container.terminated is not None:
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": container.terminated.get("message", "")}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "name": container.name, "image": container.spec.get("image", ""), "imageID": "",
            "containerID": f"kapa-process://{container.process.pid}" if container.process else None,
            "ready": container.ready, "started": container.started, "restartCount": container.restarts,
            "state": state, "lastState": {"terminated": container.last_terminated} if container.last_terminated else {},
        }

    def status(self) -> dict[str, Any]:
        all_ready = all(c.ready for c in self.containers) and not self.terminating
        any_running = any(c.process is not None and c.process.returncode is None for c in self.containers)
        if all(c.completed for c in self.containers):  # run to completion (restartPolicy Never/OnFailure)
            phase = "Succeeded" if all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers) \
                else "Failed"
        else:
            phase = "Running" if any_running or not self.terminating else "Succeeded"
        return {
            "phase": phase,
            "hostIP": network.GATEWAY_IP, "hostIPs": [{"ip": network.GATEWAY_IP}],
            "podIP": self.address, "podIPs": [{"ip": self.address}],
            "startTime": self.start_time,
            "conditions": [
                self.condition("PodReadyToStartContainers", True),
                self.condition("Initialized", True),
                self.condition("ContainersReady", all_ready),
                self.condition("Ready", all_ready),
                self.condition("PodScheduled", True),
            ],
            "containerStatuses": [self.container_status(c) for c in self.containers],
        }

    async def report_status(self) -> None:
        """Patch the pod's status whenever something changed (coalesced), until the pod is removed."""
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            body = {"status": self.status()}
            try:
                await asyncio.to_thread(self.kubelet.core.patch_namespaced_pod_status, self.name, self.namespace, body)
            except ApiException as error:
                if error.status == 404:
                    return
                log("status patch failed", pod=self.label(), status=error.status, reason=error.reason)
                await asyncio.sleep(0.5)
                self.dirty.set()
            except Exception as error:  # noqa: BLE001 - the API server may be restarting; retry
                log("status patch failed", pod=self.label(), error=repr(error))
                await asyncio.sleep(0.5)
                self.dirty.set()

    # -- termination ----------------------------------------------------------------------------------------------

    async def terminate(self, grace_s: float, delete_object: bool, hooks: bool = True) -> None:
        """Unready, SIGTERM every container, SIGKILL after the grace period, remove the sandbox and the pod."""
        if self.terminating:
            return
        self.terminating = True
        for container in self.containers:
            container.ready = False
        self.mark_dirty()
        log("pod terminating", pod=self.label(), grace_s=grace_s)
        await asyncio.gather(*(self.stop_container(c, grace_s, run_pre_stop=hooks) for c in self.containers))
        for container in self.containers:
            for task in container.tasks:
                task.cancel()
            if container.process is not None:
                await container.process.wait()
        for task in self.tasks:
            task.cancel()
        await asyncio.to_thread(network.delete_pod_network, self.netns, self.veth)
        self.kubelet.release(self)
        if delete_object:
            try:
                options = client.V1DeleteOptions(grace_period_seconds=0,
                                                 preconditions=client.V1Preconditions(uid=self.uid))
                await asyncio.to_thread(self.kubelet.core.delete_namespaced_pod, self.name, self.namespace,
                                        body=options)
            except ApiException as error:
                if error.status not in (404, 409):
                    log("pod delete failed", pod=self.label(), status=error.status)
        log("pod removed", pod=self.label())


def signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, unknown ones kept, $$ escapes."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR.sub(replace, text)


# --- the kubelet --------------------------------------------------------------------------------------------

class Kubelet:
    def __init__(self, api: client.ApiClient, node: str, root: Path, api_port: int) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.root = root
        self.api_port = api_port
        self.pods: dict[str, Pod] = {}
        self.free_addresses = [str(host) for host in list(network.POD_CIDR.hosts())[1:]]
        self.hosts_file = root / "hosts"
        self.resolv_file = root / "resolv.conf"
        self.created_mount_points: list[Path] = []
        self.http: aiohttp.ClientSession
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.stopping = threading.Event()
        self.terminations: set[asyncio.Task[None]] = set()

    # -- mount points on the host, removed again at exit -------------------------------------------------------

    def ensure_mount_point(self, target: Path, is_dir: bool) -> None:
        if target.exists():
            return
        missing = target
        while not missing.parent.exists():
            missing = missing.parent
        if is_dir:
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        self.created_mount_points.append(missing)

    def remove_mount_points(self) -> None:
        for top in reversed(self.created_mount_points):
            if not top.exists():
                continue
            paths = sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [top]
            for path in paths:
                try:
                    path.rmdir() if path.is_dir() else (path.unlink() if path.stat().st_size == 0 else None)
                except OSError:
                    pass

    # -- pods -------------------------------------------------------------------------------------------------

    def release(self, pod: Pod) -> None:
        if self.pods.get(pod.uid) is pod:
            del self.pods[pod.uid]
            self.free_addresses.append(pod.address)

    async def handle(self, event_type: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        current = self.pods.get(uid)
        if event_type == "DELETED":
            if current is not None:
                await current.terminate(0, delete_object=False, hooks=False)
            return
        if pod["metadata"].get("deletionTimestamp"):
            if current is None:
                await self.delete_pod_object(pod)
                return
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            grace_s = float(grace if grace is not None else pod["spec"].get("terminationGracePeriodSeconds", 30))
            current.pod = pod
            task = asyncio.create_task(current.terminate(grace_s, delete_object=True))
            self.terminations.add(task)
            task.add_done_callback(self.terminations.discard)
            return
        if current is not None:
            current.pod = pod
            return
        if (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
            return
        if not self.free_addresses:
            log("no pod address left", pod=pod["metadata"]["name"])
            return
        runtime = Pod(self, pod, self.free_addresses.pop(0))
        self.pods[uid] = runtime
        try:
            await runtime.start()
        except Exception as error:  # noqa: BLE001 - report and give the sandbox back; the test will see it
            log("pod failed to start", pod=runtime.label(), error=repr(error))
            await runtime.terminate(0, delete_object=False, hooks=False)

    async def delete_pod_object(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        options = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"]))
        try:
            await asyncio.to_thread(self.core.delete_namespaced_pod, meta["name"], meta["namespace"], body=options)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def watch_pods(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: watch pods bound to this node (re-list on any error) and queue the events for the loop."""
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.node}",
                    timeout_seconds=60)
                for event in stream:
                    loop.call_soon_threadsafe(self.events.put_nowait, (event["type"], event["raw_object"]))
                    if self.stopping.is_set():
                        return
            except Exception as error:  # noqa: BLE001 - keep watching whatever the API server did
                log("pod watch failed; watching again", error=repr(error))
                time.sleep(1)

    # -- the DNS stand-in ---------------------------------------------------------------------------------------

    def hosts_text(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        services = self.core.list_service_for_all_namespaces().items
        slices = self.discovery.list_endpoint_slice_for_all_namespaces().items
        ready: dict[tuple[str, str], list[str]] = {}
        for item in slices:
            service = (item.metadata.labels or {}).get("kubernetes.io/service-name")
            for endpoint in item.endpoints or []:
                conditions = endpoint.conditions
                if service and endpoint.addresses and (conditions is None or conditions.ready is not False):
                    ready.setdefault((item.metadata.namespace, service), []).extend(endpoint.addresses)
        for service in sorted(services, key=lambda s: (s.metadata.namespace, s.metadata.name)):
            key = (service.metadata.namespace, service.metadata.name)
            if key == ("default", "kubernetes"):
                address = network.GATEWAY_IP
            elif ready.get(key):
                address = sorted(ready[key])[0]
            else:
                continue
            namespace, name = key
            lines.append(f"{address} {name}.{namespace}.svc.cluster.local {name}.{namespace}.svc {name}.{namespace}")
        return "\n".join(lines) + "\n"

    async def maintain_hosts(self) -> None:
        """Rewrite the shared hosts file in place (the bind mounts follow the inode) when Services move."""
        current = self.hosts_file.read_text()
        while True:
            await asyncio.sleep(0.5)
            try:
                text = await asyncio.to_thread(self.hosts_text)
            except Exception as error:  # noqa: BLE001
                log("hosts refresh failed", error=repr(error))
                continue
            if text != current:
                with open(self.hosts_file, "r+") as file:
                    file.truncate(0)
                    file.write(text)
                current = text

    async def heartbeat(self) -> None:
        while True:
            try:
                await asyncio.to_thread(renew_lease, self.coordination, self.node)
                await asyncio.to_thread(self.core.patch_node_status, self.node, node_status(self.node))
            except Exception as error:  # noqa: BLE001
                log("heartbeat failed", error=repr(error))
            await asyncio.sleep(HEARTBEAT_S)

    # -- running ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # No nameserver: a lookup of a name the hosts file lacks fails at once instead of timing out.
        self.resolv_file.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        await asyncio.to_thread(register_node, self.core, self.node)
        self.hosts_file.write_text(await asyncio.to_thread(self.hosts_text))
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        background = [asyncio.create_task(self.heartbeat()), asyncio.create_task(self.maintain_hosts())]
        threading.Thread(target=self.watch_pods, args=(loop,), name="pod-watch", daemon=True).start()
        log("node registered", node=self.node)
        consumer = asyncio.create_task(self.consume())
        await stopping.wait()
        log("stopping: killing every pod")
        self.stopping.set()
        consumer.cancel()
        for task in background:
            task.cancel()
        pods = list(self.pods.values())
        await asyncio.gather(*(pod.terminate(2.0, delete_object=False, hooks=False) for pod in pods),
                             return_exceptions=True)
        await self.http.close()
        self.remove_mount_points()

    async def consume(self) -> None:
        while True:
            event_type, pod = await self.events.get()
            try:
                await self.handle(event_type, pod)
            except Exception as error:  # noqa: BLE001
                log("event handling failed", pod=pod.get("metadata", {}).get("name"), error=repr(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.k8s.kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path, help="directory for pod volumes, logs and the hosts file")
    parser.add_argument("--node", default="kapa-node")
    args = parser.parse_args(argv)
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    api_port = int(configuration.host.rsplit(":", 1)[1])
    kubelet = Kubelet(client.ApiClient(configuration), args.node, args.root, api_port)
    asyncio.run(kubelet.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
