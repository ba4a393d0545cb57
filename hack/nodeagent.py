"""A process "kubelet" for one Node: runs the pods the real scheduler binds to it as local processes.

Registers a Node with GPU capacity, watches the pods bound to it, and for each one either runs its
first container's command as a local process (``ProcessRunner``: pod env and volumes mapped to local
folders) or asks a test-supplied function for the outcome (``ScriptedRunner``). It reports the pod's
status (Running, then Succeeded/Failed with exit code and termination message) back to the apiserver,
so the Job controller really counts completions and failures. A deleted pod's process is stopped and
the pod is removed with grace period 0, as a kubelet would.

``kill()`` plays a machine that dies: heart-beats stop and nothing more is written to the apiserver,
so the node lifecycle controller marks the Node unreachable and evicts its pods, which then stay
Terminating as on a real dead node. Each agent counts the GPUs its running pods hold (``gpu_peak``),
so tests can check that the scheduler never over-commits a node.

Limits, on purpose: one container per pod (init containers and sidecars are not run), no images (the
command must exist on this machine), no network isolation, no resource enforcement.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("rollcall.nodeagent")
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str = ""


class Runner(Protocol):
    def __call__(self, pod: client.V1Pod, cancelled: threading.Event) -> Outcome: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodId(NamedTuple):
    name: str
    namespace: str
    uid: str


def _pod_id(pod: client.V1Pod) -> PodId:
    """The apiserver sets name, namespace and uid on every pod it hands out."""
    meta = pod.metadata
    assert meta is not None and meta.name is not None
    assert meta.namespace is not None and meta.uid is not None
    return PodId(meta.name, meta.namespace, meta.uid)


def _spec(pod: client.V1Pod) -> client.V1PodSpec:
    """Every pod the apiserver hands out has a spec."""
    assert pod.spec is not None
    return pod.spec


class ScriptedRunner:
    """The outcome comes from a test's function; handy to drive Jobs to chosen ends."""

    def __init__(self, decide: Callable[[client.V1Pod], Outcome], delay: float = 0.0) -> None:
        self.decide = decide
        self.delay = delay

    def __call__(self, pod: client.V1Pod, cancelled: threading.Event) -> Outcome:
        if cancelled.wait(self.delay):
            return Outcome(137, "killed")
        return self.decide(pod)


class ProcessRunner:
    """Runs the pod's first container as a local process with its env and volumes mapped.

    PersistentVolumeClaims map to ``<root>/volumes/<namespace>/<claim>``; emptyDirs and the
    termination-message file to ``<root>/pods/<uid>/``. Environment values that start with a mount
    path are rewritten to the local folder, so a container that is told ``/data/input`` reads the
    claim's folder here.
    """

    def __init__(
        self,
        api: client.ApiClient,
        root: Path,
        extra_path: list[str] | None = None,
        image_paths: dict[str, Path] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.root = root
        self.extra_path = extra_path or []
        # What the image would hold at a path (e.g. the models baked in at /opt/rollcall/models),
        # served from this machine; pod volumes mounted at the same path take precedence.
        self.image_paths = dict(image_paths or {})

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.root / "volumes" / namespace / claim

    def _claim_path(self, namespace: str, claim: str) -> Path:
        """A claim bound to a hostPath/local PV is that folder; any other claim gets a cache folder."""
        pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        assert pvc.spec is not None  # the apiserver always returns a claim's spec
        if pvc.spec.volume_name:
            pv = self.core.read_persistent_volume(pvc.spec.volume_name)
            assert pv.spec is not None  # likewise a volume's
            source = pv.spec.host_path or pv.spec.local
            if source is not None:
                return Path(source.path)
        return self.claim_dir(namespace, claim)

    def _mounts(self, pod: client.V1Pod, pod_dir: Path) -> dict[str, Path]:
        spec = _spec(pod)
        volumes: dict[str, Path] = {}
        for vol in spec.volumes or []:
            if vol.persistent_volume_claim is not None:
                volumes[vol.name] = self._claim_path(
                    _pod_id(pod).namespace, vol.persistent_volume_claim.claim_name
                )
            elif vol.empty_dir is not None:
                volumes[vol.name] = pod_dir / "volumes" / vol.name
            elif vol.secret is not None:
                # Pod validation requires secretName on a secret volume.
                assert vol.secret.secret_name is not None
                volumes[vol.name] = self._materialise_secret(pod, vol.secret.secret_name, pod_dir)
        mounts: dict[str, Path] = dict(self.image_paths)
        for vm in spec.containers[0].volume_mounts or []:
            if vm.name not in volumes:
                continue
            local = volumes[vm.name] / (vm.sub_path or "")
            local.mkdir(parents=True, exist_ok=True)
            mounts[vm.mount_path] = local
        return mounts

    def _materialise_secret(self, pod: client.V1Pod, name: str, pod_dir: Path) -> Path:
        target = pod_dir / "secrets" / name
        target.mkdir(parents=True, exist_ok=True)
        secret = self.core.read_namespaced_secret(name, _pod_id(pod).namespace)
        import base64

        for key, value in (secret.data or {}).items():
            (target / key).write_bytes(base64.b64decode(value))
        return target

    def _env(
        self, pod: client.V1Pod, mounts: dict[str, Path], term_path: str, term_local: Path
    ) -> dict[str, str]:
        container = _spec(pod).containers[0]
        env = {
            "PATH": os.pathsep.join([*self.extra_path, os.environ.get("PATH", "")]),
            "HOME": str(term_local.parent),
            "LANG": "C.UTF-8",
        }
        for item in container.env or []:
            value = item.value
            if item.value_from is not None:
                value = self._value_from(pod, item.value_from)
            if value is None:
                continue
            env[item.name] = self._localise(value, mounts, term_path, term_local)
        return env

    def _value_from(self, pod: client.V1Pod, src: client.V1EnvVarSource) -> str | None:
        import base64

        ns = _pod_id(pod).namespace
        if src.secret_key_ref is not None:
            ref = src.secret_key_ref
            assert ref.name is not None  # pod validation requires the Secret's name
            try:
                secret = self.core.read_namespaced_secret(ref.name, ns)
            except ApiException:
                if ref.optional:
                    return None
                raise
            data = (secret.data or {}).get(ref.key)
            return base64.b64decode(data).decode() if data is not None else None
        if src.config_map_key_ref is not None:
            cm_ref = src.config_map_key_ref
            assert cm_ref.name is not None  # pod validation requires the ConfigMap's name
            cm = self.core.read_namespaced_config_map(cm_ref.name, ns)
            return (cm.data or {}).get(cm_ref.key)
        if src.field_ref is not None:
            meta = pod.metadata
            assert meta is not None
            path = src.field_ref.field_path
            fields = {
                "metadata.name": meta.name,
                "metadata.namespace": ns,
                "metadata.uid": meta.uid,
                "spec.nodeName": _spec(pod).node_name,
            }
            if path in fields:
                return str(fields[path])
            if path.startswith("metadata.labels['"):
                return (meta.labels or {}).get(path[len("metadata.labels['") : -2])
            if path.startswith("metadata.annotations['"):
                return (meta.annotations or {}).get(path[len("metadata.annotations['") : -2])
        return None

    @staticmethod
    def _localise(value: str, mounts: dict[str, Path], term_path: str, term_local: Path) -> str:
        if value == term_path:
            return str(term_local)
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")) :]
        return value

    def __call__(self, pod: client.V1Pod, cancelled: threading.Event) -> Outcome:
        spec = _spec(pod)
        container = spec.containers[0]
        pod_dir = self.root / "pods" / _pod_id(pod).uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        term_path = container.termination_message_path or "/dev/termination-log"
        term_local = pod_dir / "termination-log"
        term_local.write_text("")
        try:
            mounts = self._mounts(pod, pod_dir)
            env = self._env(pod, mounts, term_path, term_local)
        except ApiException as exc:
            return Outcome(128, f"CreateContainerConfigError: {exc.reason}")
        argv = [*(container.command or []), *(container.args or [])]
        if not argv:
            return Outcome(128, "no command: the node agent cannot run an image's entrypoint")
        exe = shutil.which(argv[0], path=env["PATH"])
        if exe is None:
            return Outcome(127, f"command not found: {argv[0]}")
        with (pod_dir / f"{container.name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                env=env,
                cwd=pod_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        grace = spec.termination_grace_period_seconds or 30
        while proc.poll() is None:
            if cancelled.wait(0.2):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(min(grace, 10))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        message = term_local.read_text(errors="replace")[:TERMINATION_MESSAGE_LIMIT]
        if not message and container.termination_message_policy == "FallbackToLogsOnError" and code:
            message = (pod_dir / f"{container.name}.log").read_text(errors="replace")[-2048:]
        return Outcome(code, message)


class NodeAgent:
    """Registers a Node and plays its kubelet until ``stop()``."""

    def __init__(
        self,
        api: client.ApiClient,
        name: str,
        runner: Runner,
        *,
        gpus: int = 8,
        gpu_resource: str = "nvidia.com/gpu",
        cpu: str = "64",
        memory: str = "256Gi",
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.name = name
        self.default_runner = runner
        self.runners: dict[str, Runner] = {}
        self.gpus, self.gpu_resource, self.cpu, self.memory = gpus, gpu_resource, cpu, memory
        self.labels = labels or {}
        self.taints = taints or []
        self._stop = threading.Event()
        self._dead = threading.Event()
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._watch_response: Any = None  # the open pod watch's HTTP response
        self.heartbeat_seconds = heartbeat_seconds
        self.gpus_in_use = 0  # GPUs held by the pods running here now (guarded by _lock)
        self.gpu_peak = 0  # the most ever held at once
        self.ran: list[str] = []  # names of the pods started here, in order

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 60) -> NodeAgent:
        """Register, start heart-beating and running pods; wait until the Node is schedulable."""
        self.register()
        for target, role in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"nodeagent-{self.name}-{role}", daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            # Admission taints a new Node not-ready; the node lifecycle controller lifts it once it
            # sees the Ready heart-beat. Until then nothing schedules here.
            spec = self.core.read_node(self.name).spec
            assert spec is not None  # the apiserver always returns a Node's spec (maybe empty)
            if not [t for t in spec.taints or [] if t.key.startswith("node.kubernetes.io/")]:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"node {self.name} still tainted after {ready_timeout}s")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for ev in self._running.values():
                ev.set()
        # The pod watch sits in a blocking read until its 30 s timeout: shut its connection, or
        # kube-apiserver's graceful shutdown waits for it (the control plane's stop then ran
        # into its SIGKILL timer). Its thread, a daemon that handles nothing once _stop is set,
        # is not waited for (joining it cost up to 5 s per node at every teardown).
        with contextlib.suppress(Exception):  # already closed, or never opened
            self._watch_response.shutdown()
        for t in self._threads:
            if not t.name.endswith("-watch"):
                t.join(5)

    def kill(self) -> None:
        """Die like a machine: no more heart-beats, no status, no pod removal; processes stop."""
        self._dead.set()
        self.stop()

    @property
    def dead(self) -> bool:
        return self._dead.is_set()

    def use(self, namespace: str, runner: Runner | None) -> None:
        """Run this namespace's pods with ``runner`` (None restores the default)."""
        if runner is None:
            self.runners.pop(namespace, None)
        else:
            self.runners[namespace] = runner

    def register(self) -> None:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "250",
            self.gpu_resource: str(self.gpus),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "rollcall.io/local-node": "true",
                    **self.labels,
                },
            },
            "spec": {"taints": self.taints},
        }
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.name)
        self.core.create_node(client.V1Node.model_validate(body))
        self.core.patch_node_status(
            self.name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [self._ready_condition()],
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": self.name},
                    ],
                    "nodeInfo": {
                        "kubeletVersion": "v0.0.0-rollcall-nodeagent",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "process://local",
                        "kernelVersion": "",
                        "osImage": "",
                        "kubeProxyVersion": "",
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                    },
                }
            },
        )

    @staticmethod
    def _ready_condition() -> dict[str, str]:
        now = _now()
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "rollcall node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    def _heartbeat_loop(self) -> None:
        """Renew the node Lease and Ready condition, as a kubelet does, so lifecycle checks pass."""
        coord = client.CoordinationV1Api(self.api)
        first = True
        while first or not self._stop.wait(self.heartbeat_seconds):
            first = False
            with contextlib.suppress(Exception):
                self.core.patch_node_status(
                    self.name, {"status": {"conditions": [self._ready_condition()]}}
                )
                now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                lease = client.V1Lease.model_validate(
                    {
                        "metadata": {"name": self.name},
                        "spec": {
                            "holderIdentity": self.name,
                            "leaseDurationSeconds": 40,
                            "renewTime": now,
                        },
                    }
                )
                try:
                    coord.replace_namespaced_lease(self.name, "kube-node-lease", lease)
                except ApiException as exc:
                    if exc.status == 404:
                        coord.create_namespaced_lease("kube-node-lease", lease)

    # -- pods -----------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in pods.items:
                    self._handle(pod)
                assert pods.metadata is not None  # a list always carries its resourceVersion
                # kubernetes.watch ships without annotations (despite the package's py.typed),
                # hence the targeted ignores on its calls.
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self._watched_list(),
                    field_selector=selector,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=30,
                ):
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    self._handle(event["object"])
            except Exception as exc:  # the loop must survive apiserver hiccups and 410 Gone
                if not self._stop.is_set():
                    log.debug("pod watch restarted: %s", exc)
                    time.sleep(0.5)

    def _watched_list(self) -> Callable[..., Any]:
        """``list_pod_for_all_namespaces`` that keeps its streamed response, so ``stop`` can shut
        it; wrapped so Watch still reads the signature and doc it deserializes events by."""
        list_pods = self.core.list_pod_for_all_namespaces

        @functools.wraps(list_pods)
        def opened(*args: Any, **kwargs: Any) -> Any:
            self._watch_response = list_pods(*args, **kwargs)
            return self._watch_response

        return opened

    def _handle(self, pod: client.V1Pod) -> None:
        if self._dead.is_set():
            return
        uid = _pod_id(pod).uid
        assert pod.metadata is not None  # checked by _pod_id; restated for the type checker
        if pod.metadata.deletion_timestamp is not None:
            with self._lock:
                ev = self._running.get(uid)
            if ev is not None:
                ev.set()
            else:
                self._remove(pod)
            return
        assert pod.status is not None  # pods from the apiserver always carry a status
        if pod.status.phase in ("Succeeded", "Failed"):
            return
        with self._lock:
            if uid in self._running:
                return
            ev = threading.Event()
            self._running[uid] = ev
        threading.Thread(
            target=self._run, args=(pod, ev), daemon=True, name=f"pod-{pod.metadata.name}"
        ).start()

    def _remove(self, pod: client.V1Pod) -> None:
        if self._dead.is_set():
            return
        name, ns, uid = _pod_id(pod)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                name,
                ns,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
            )

    def _run(self, pod: client.V1Pod, cancelled: threading.Event) -> None:
        name, ns, uid = _pod_id(pod)
        container = _spec(pod).containers[0]
        started = _now()
        gpus = self._gpus(pod)
        with self._lock:
            self.gpus_in_use += gpus
            self.gpu_peak = max(self.gpu_peak, self.gpus_in_use)
            self.ran.append(name)
        try:
            self._patch_status(
                pod,
                {
                    "phase": "Running",
                    "startTime": started,
                    "hostIP": "127.0.0.1",
                    "podIP": "127.0.0.1",
                    "podIPs": [{"ip": "127.0.0.1"}],
                    "conditions": self._conditions(ready=True),
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image or "",
                            "imageID": "",
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": started}},
                        }
                    ],
                },
            )
            runner = self.runners.get(ns, self.default_runner)
            try:
                outcome = runner(pod, cancelled)
            except Exception as exc:
                log.exception("runner failed for %s/%s", ns, name)
                outcome = Outcome(128, f"node agent runner error: {type(exc).__name__}")
            # the GPU is free before the scheduler can learn so from the pod's final status
            self._release(gpus)
            gpus = 0
            if self._dead.is_set():
                return
            if cancelled.is_set():
                self._remove(pod)
                return
            self._patch_status(
                pod,
                {
                    "phase": "Succeeded" if outcome.exit_code == 0 else "Failed",
                    "conditions": self._conditions(ready=False),
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image or "",
                            "imageID": "",
                            "ready": False,
                            "started": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": outcome.exit_code,
                                    "reason": "Completed" if outcome.exit_code == 0 else "Error",
                                    "message": outcome.message[:TERMINATION_MESSAGE_LIMIT],
                                    "startedAt": started,
                                    "finishedAt": _now(),
                                    "containerID": f"process://{uid}",
                                }
                            },
                        }
                    ],
                },
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status update failed for %s/%s: %s", ns, name, exc.reason)
        finally:
            self._release(gpus)
            with self._lock:
                self._running.pop(uid, None)

    def _gpus(self, pod: client.V1Pod) -> int:
        """The GPUs the pod's containers ask for (limits; requests equal them for extended ones)."""
        total = 0
        for c in _spec(pod).containers:
            limits = (c.resources.limits if c.resources is not None else None) or {}
            total += int(limits.get(self.gpu_resource, 0))
        return total

    def _release(self, gpus: int) -> None:
        with self._lock:
            self.gpus_in_use -= gpus

    def _patch_status(
        self, pod: client.V1Pod, status: dict[str, Any], patience: float = 90
    ) -> None:
        """Report a pod's status; like a kubelet, keep trying while the apiserver is unreachable
        or unavailable (a restart), so a finished run is reported once, never run again."""
        name, ns, _ = _pod_id(pod)
        deadline = time.monotonic() + patience
        while not self._dead.is_set():
            try:
                self.core.patch_namespaced_pod_status(name, ns, {"status": status})
                return
            except ApiException as exc:
                if exc.status not in (429, 500, 502, 503, 504) or time.monotonic() > deadline:
                    raise
            except Exception:  # connection refused/reset while the apiserver restarts
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
            time.sleep(0.5)

    @staticmethod
    def _conditions(*, ready: bool) -> list[dict[str, str]]:
        now = _now()
        flag = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ]


POOL_LABEL = "rollcall.io/test-pool"


@dataclass(frozen=True)
class NodePool:
    """Several node agents that only pods placed on ``name`` land on (a label and a taint), so a
    test owns its nodes while other Nodes of the session's control plane stay out of the way."""

    name: str
    agents: list[NodeAgent]

    @property
    def node_selector(self) -> dict[str, str]:
        return {POOL_LABEL: self.name}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [
            {"key": POOL_LABEL, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}
        ]

    def agent(self, node: str) -> NodeAgent:
        return next(a for a in self.agents if a.name == node)

    @classmethod
    def start(
        cls, api: client.ApiClient, name: str, runner: Runner, *, nodes: int, gpus: int
    ) -> NodePool:
        taint = {"key": POOL_LABEL, "value": name, "effect": "NoSchedule"}
        agents = [
            NodeAgent(
                api,
                f"{name}-{i}",
                runner,
                gpus=gpus,
                cpu="8",
                memory="32Gi",
                labels={POOL_LABEL: name},
                taints=[taint],
            )
            for i in range(nodes)
        ]
        pool = cls(name, agents)
        try:
            for agent in agents:
                agent.start()
        except BaseException:
            pool.remove()
            raise
        return pool

    def remove(self) -> None:
        """Stop every agent and delete its Node (PodGC then fails and removes pods left on it)."""
        core = client.CoreV1Api(self.agents[0].api) if self.agents else None
        for agent in self.agents:
            agent.stop()
            if core is not None:
                with contextlib.suppress(ApiException):
                    core.delete_node(agent.name)
