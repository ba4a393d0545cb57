"""Kueue's controller manager off-cluster against the local control plane (hack/localk8s.py).

The binary is built from the Go module proxy by ``hack/kueue/build.sh`` into a cache keyed by
version, with the CRDs of that version next to it. This module applies the CRDs server-side (the
workloads CRD is 1.4 MB, over the client-side apply annotation limit), writes a
``config.kueue.x-k8s.io/v1beta2`` Configuration (internal cert management off, leader election off,
webhooks served on a free loopback port with a generated cert, only the ``batch/job`` integration),
starts the manager, and installs Kueue's webhook configurations rewritten to ``clientConfig.url``.

Two pitfalls of running it outside a cluster, and how they are handled:

- With internal cert management off, Kueue reads its metrics serving cert from the fixed path
  ``/etc/kueue/metrics/certs``. The manager runs in a private mount namespace (``unshare -m``, or
  ``unshare -Urm`` when not root) in which ``/etc`` is an overlay whose upper layer lives in the
  rig's workdir: the cert appears there for Kueue alone and the machine's ``/etc`` is never written.
- Kueue's Job webhook is ``failurePolicy: Fail`` for every namespace: once Kueue is gone every Job
  create would be refused. ``stop`` deletes the webhook configurations before stopping Kueue.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localk8s import ControlPlane, _make_pki, cache_dir, ensure_tools, wait_for
from redisrig import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "kueue" / "build.sh"
KUEUE_NAMESPACE = "kueue-system"
MUTATING = "rollcall-kueue-mutating"
VALIDATING = "rollcall-kueue-validating"
# Only these API groups are served by the enabled integration (batch/job) and Kueue's own types;
# webhooks of other frameworks would point at paths this manager does not serve.
SERVED_GROUPS = {"kueue.x-k8s.io", "batch"}


class KueueUnavailable(RuntimeError):
    """Kueue cannot run here (no Go toolchain, build failed, no private mount namespace)."""


def ensure_kueue() -> Path:
    """Build Kueue once per pinned version; return its cache dir (``bin/kueue``, ``crd/``)."""
    if shutil.which("go") is None and not _cached():
        raise KueueUnavailable("Go is not installed: hack/kueue/build.sh cannot build Kueue")
    try:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    except subprocess.CalledProcessError as e:
        raise KueueUnavailable(f"hack/kueue/build.sh failed with exit code {e.returncode}") from e
    return Path(out.strip().splitlines()[-1]).parent


def _cached() -> bool:
    version = _version()
    return (cache_dir() / f"kueue-{version}" / "bin" / "kueue").exists()


def _version() -> str:
    for line in (HERE / "kueue" / "versions.env").read_text().splitlines():
        if line.startswith("KUEUE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("hack/kueue/versions.env has no KUEUE_VERSION")


def private_etc_command(upper: Path, work: Path) -> list[str]:
    """The prefix that runs a command with ``/etc`` overlaid by ``upper`` in its own mount namespace.

    ``unshare`` makes the mount private to the child; the real ``/etc`` stays as it is.
    """
    if shutil.which("unshare") is None:
        raise KueueUnavailable("`unshare` is missing: cannot give Kueue its metrics cert path")
    flags = "-m" if os.geteuid() == 0 else "-Urm"
    mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
    prefix = ["unshare", flags, "sh", "-c", f'{mount} && exec "$@"', "kueue-in-private-etc"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # no CAP_SYS_ADMIN, no user namespaces, no overlayfs
        raise KueueUnavailable(f"no private /etc overlay for Kueue's metrics cert: {probe.stderr}")
    return prefix


def configuration(
    *, webhook_port: int, cert_dir: Path, health_port: int, metrics_port: int
) -> dict[str, Any]:
    """Kueue's Configuration for one manager off-cluster: loopback only, no leader election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "internalCertManagement": {"enable": False},
        "leaderElection": {"leaderElect": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "clientConnection": {"qps": 100, "burst": 200},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def served_webhooks(doc: Mapping[str, Any], base_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """The webhooks of one of Kueue's configurations that this manager serves, as URL webhooks."""
    bundle = base64.b64encode(ca_pem).decode()
    out: list[dict[str, Any]] = []
    for hook in doc.get("webhooks") or []:
        groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
        if not groups or not groups <= SERVED_GROUPS:
            continue
        path = hook["clientConfig"]["service"]["path"]
        out.append({**hook, "clientConfig": {"url": f"{base_url}{path}", "caBundle": bundle}})
    return out


@dataclass
class Kueue:
    """A running Kueue manager; ``stop`` removes its webhooks first, then the process."""

    workdir: Path
    api: client.ApiClient
    proc: subprocess.Popen[bytes]
    webhook_url: str
    health_url: str
    installed: list[tuple[str, str]] = field(default_factory=list)

    def logs(self, tail: int = 4000) -> str:
        log = self.workdir / "kueue.log"
        return log.read_text(errors="replace")[-tail:] if log.exists() else ""

    def stop(self) -> None:
        adm = client.AdmissionregistrationV1Api(self.api)
        for kind, name in self.installed:
            with contextlib.suppress(ApiException):
                if kind == "mutating":
                    adm.delete_mutating_webhook_configuration(name)
                else:
                    adm.delete_validating_webhook_configuration(name)
        self.installed.clear()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def apply_crds(cp: ControlPlane, api: client.ApiClient, crd_dir: Path) -> list[str]:
    """Server-side apply of Kueue's CRDs (kubectl from the tools cache); wait until Established."""
    kubectl = ensure_tools() / "kubectl"
    subprocess.run(
        [str(kubectl), f"--kubeconfig={cp.kubeconfig}", "apply", "--server-side",
         "--force-conflicts", "-f", str(crd_dir)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    names = [
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(crd_dir.glob("*.yaml"))
    ]
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        for name in names:
            status = ext.read_custom_resource_definition(name).status
            if status is None or not any(
                c.type == "Established" and c.status == "True" for c in status.conditions or []
            ):
                return False
        return True

    wait_for(established, "Kueue's CRDs Established", timeout=60)
    return names


def _wait_ready(kq: Kueue, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ctx = ssl.create_default_context(cafile=str(kq.workdir / "pki" / "ca.crt"))
    last = ""
    while time.monotonic() < deadline:
        if kq.proc.poll() is not None:
            raise RuntimeError(f"kueue exited with {kq.proc.returncode}:\n{kq.logs()}")
        try:
            with urllib.request.urlopen(kq.health_url, timeout=2) as r:
                ready = r.status == 200
            # the webhook server answers TLS with our cert (404 on / is fine: it is up)
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(kq.webhook_url, timeout=2, context=ctx).close()
            if ready:
                return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise TimeoutError(f"kueue not ready after {timeout}s ({last}):\n{kq.logs()}")


def _install_webhooks(kq: Kueue, source: Path, ca_pem: bytes) -> None:
    adm: Any = client.AdmissionregistrationV1Api(kq.api)  # dict bodies: the stubs want models
    for doc in yaml.safe_load_all(source.read_text()):
        if not doc:
            continue
        mutating = doc["kind"] == "MutatingWebhookConfiguration"
        name = MUTATING if mutating else VALIDATING
        body = {
            "apiVersion": doc["apiVersion"],
            "kind": doc["kind"],
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "rollcall-test"}},
            "webhooks": served_webhooks(doc, kq.webhook_url, ca_pem),
        }
        if mutating:
            adm.create_mutating_webhook_configuration(body)
        else:
            adm.create_validating_webhook_configuration(body)
        kq.installed.append(("mutating" if mutating else "validating", name))


@contextlib.contextmanager
def kueue(
    cp: ControlPlane, api: client.ApiClient, workdir: Path, timeout: float = 120
) -> Iterator[Kueue]:
    """Run Kueue against ``cp`` until the block ends; raises KueueUnavailable if it cannot run."""
    root = ensure_kueue()
    workdir.mkdir(parents=True, exist_ok=True)
    apply_crds(cp, api, root / "crd")
    with contextlib.suppress(ApiException):
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": KUEUE_NAMESPACE}})

    pki = workdir / "pki"
    _make_pki(pki)  # a CA and a serving cert for 127.0.0.1 (its service-account keys go unused)
    cert_dir = workdir / "webhook-certs"
    metrics = workdir / "etc-upper" / "kueue" / "metrics" / "certs"
    for folder in (cert_dir, metrics):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki / "apiserver.crt", folder / "tls.crt")
        shutil.copy(pki / "apiserver.key", folder / "tls.key")
    (workdir / "etc-work").mkdir(exist_ok=True)

    webhook_port, health_port = free_port(), free_port()
    cfg = configuration(
        webhook_port=webhook_port, cert_dir=cert_dir, health_port=health_port,
        metrics_port=free_port(),
    )  # fmt: skip
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [
        *private_etc_command(workdir / "etc-upper", workdir / "etc-work"),
        str(root / "bin" / "kueue"), f"--config={workdir / 'config.yaml'}", "--zap-log-level=info",
    ]  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    with (workdir / "kueue.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    kq = Kueue(
        workdir=workdir,
        api=api,
        proc=proc,
        webhook_url=f"https://127.0.0.1:{webhook_port}",
        health_url=f"http://127.0.0.1:{health_port}/readyz",
    )
    try:
        _wait_ready(kq, timeout)
        source = root / "webhook" / "manifests.yaml"
        _install_webhooks(kq, source, (pki / "ca.crt").read_bytes())
        yield kq
    except BaseException:
        print(kq.logs(), flush=True)
        raise
    finally:
        kq.stop()
