"""The operator as a process against the real control plane: RJ -> Job -> pods -> RJ status.

Each test runs ``python -m rollcall_operator`` watching only its own namespace; the node agent
plays the kubelet, with a per-test runner deciding each pod's exit code and termination message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localk8s import local_volume, wait_for
from nodeagent import NodeAgent, Outcome
from redisrig import free_port
from rollcall_contract import keys
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.builder import build_job, job_name
from rollcall_operator.settings import OperatorSettings
from rollcall_operator.status import unwritten

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

OUTCOME = "test.rollcall.io/outcome"
SUMMARY = {"images": 3, "faces": 5, "matched": 4, "unknown": 1, "present": 2, "absent": 1}


class Operator:
    """One operator process; ``kill`` is SIGKILL (no cleanup), ``stop`` is SIGTERM."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.health = env["ROLLCALL_OPERATOR_LIVENESS_ENDPOINT"]

    def start(self, timeout: float = 60) -> Operator:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollcall_operator"], env=self.env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.health, timeout=1) as r:
                if r.status == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy:\n{self.logs()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def start_operator(
    kubeconfig: Path, crds: list[str], namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(**settings: Any) -> Operator:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLCALL_OPERATOR_")}
        env.update(
            KUBECONFIG=str(kubeconfig),
            ROLLCALL_OPERATOR_NAMESPACES=json.dumps([namespace]),
            ROLLCALL_OPERATOR_REDIS_URL=redis_url,
            ROLLCALL_OPERATOR_METRICS_PORT="0",
            ROLLCALL_OPERATOR_LIVENESS_ENDPOINT=f"http://127.0.0.1:{free_port()}/healthz",
            ROLLCALL_OPERATOR_ANNOTATION_PASSTHROUGH_PREFIXES='["test.rollcall.io/"]',
            ROLLCALL_OPERATOR_PROGRESS_INTERVAL_SECONDS="0.5",
            ROLLCALL_OPERATOR_WEBHOOK_BACKOFF_SECONDS="0.3",
            # the loopback receivers below are reachable only through the explicit allowlist
            ROLLCALL_OPERATOR_WEBHOOK_ALLOW_HOSTS='["localhost"]',
            ROLLCALL_OPERATOR_WEBHOOK_ALLOW_CIDRS='["127.0.0.0/8"]',
            ROLLCALL_OPERATOR_WEBHOOK_ALLOW_HTTP="true",
            ROLLCALL_OPERATOR_WEBHOOK_SECRET_NAME="hook",
            ROLLCALL_OPERATOR_WEBHOOK_SECRET_KEY="hmac",
        )
        for key, value in settings.items():
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"ROLLCALL_OPERATOR_{key.upper()}"] = text
        op = Operator(env, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


class Script:
    """The node agent's runner for this test: the outcome is chosen by the RJ's annotation.

    ``ok`` succeeds with SUMMARY; ``bad`` exits 42; ``flaky`` exits 75 once then succeeds;
    ``hold`` runs until ``release(rj)`` (or the pod is deleted); ``sleep`` never finishes.
    """

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def release(self, rj: str) -> None:
        self.gate(rj).set()

    def gate(self, rj: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(rj, threading.Event())

    def __call__(self, pod: Any, cancelled: threading.Event) -> Outcome:
        rj = pod.metadata.labels["rollcall.io/rj-name"]
        what = (pod.metadata.annotations or {}).get(OUTCOME, "ok")
        with self.lock:
            self.seen[rj] = self.seen.get(rj, 0) + 1
            attempt = self.seen[rj]
        if what == "bad":
            return Outcome(42, json.dumps({"error": "no photos under images.subPath"}))
        if what == "flaky" and attempt == 1:
            return Outcome(75, json.dumps({"error": "redis unreachable"}))
        if what in ("hold", "sleep"):
            gate = self.gate(rj)
            while not cancelled.is_set() and not gate.is_set():
                time.sleep(0.1)
            if cancelled.is_set():
                return Outcome(137, "killed")
        return Outcome(0, json.dumps({"summary": SUMMARY}))


@pytest.fixture
def script(node_agent: NodeAgent, namespace: str) -> Script:
    runner = Script()
    node_agent.use(namespace, runner)
    return runner


@pytest.fixture
def photos(k8s_api: client.ApiClient, namespace: str, tmp_path: Path) -> str:
    """A bound PVC named ``photos`` (hostPath PV), so pods schedule like they would on a cluster."""
    local_volume(client.CoreV1Api(k8s_api), namespace, "photos", tmp_path, read_only=True)
    return "photos"


def rj_body(name: str, outcome: str = "ok", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": name, "annotations": {OUTCOME: outcome}},
        "spec": {
            "classCode": "MATH-7B",
            "images": {"claimName": "photos", "subPath": "p1"},
            "roster": ["s1", "s2", "s3"],
            "resources": {"gpus": 1, "cpu": "100m", "memory": "64Mi"},
        },
    }
    body["spec"].update(spec)
    return body


class K:
    """Small synchronous helpers over the admin client for assertions."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom: Any = client.CustomObjectsApi(api)
        self.batch: Any = client.BatchV1Api(api)
        self.core: Any = client.CoreV1Api(api)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, body
        )
        return got

    def rj(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return got

    def status(self, name: str) -> dict[str, Any]:
        return self.rj(name).get("status") or {}

    def phase_is(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        wait_for(lambda: self.status(name).get("phase") == phase,
                 f"{name} {phase} (now {self.status(name)})", timeout=timeout)  # fmt: skip
        return self.status(name)

    def jobs(self) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.ns).items)

    def job(self, name: str) -> Any:
        return self.batch.read_namespaced_job(job_name(name), self.ns)

    def pods(self, rj: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(
            self.ns, label_selector=f"rollcall.io/rj-name={rj}").items)  # fmt: skip

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}").items  # fmt: skip
        return [e.reason for e in items]


@pytest.fixture
def k(k8s_api: client.ApiClient, namespace: str) -> K:
    return K(k8s_api, namespace)


def test_create_makes_one_job_as_built_and_success_fills_the_summary(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    metrics_port = free_port()
    start_operator(metrics_port=str(metrics_port))
    created = k.create(rj_body("math-7b", "hold"))
    wait_for(lambda: len(k.jobs()) == 1, "the Job exists")
    job = k.job("math-7b")
    expected = build_job(created, OperatorSettings(
        annotation_passthrough_prefixes=["test.rollcall.io/"]))  # fmt: skip
    assert job.metadata.labels == expected["metadata"]["labels"]
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.uid, owner.controller, owner.block_owner_deletion) == (
        "RecognitionJob", created["metadata"]["uid"], True, True)  # fmt: skip
    assert job.spec.backoff_limit == 2 and job.spec.active_deadline_seconds == 3600
    assert job.spec.pod_failure_policy.rules[0].on_exit_codes.values == [42]
    container = job.spec.template.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert job.spec.template.spec.automount_service_account_token is False
    running = k.phase_is("math-7b", "Running")
    assert running["jobName"] == "math-7b" and running["attempts"] == 1
    script.release("math-7b")
    done = k.phase_is("math-7b", "Succeeded")
    assert done["summary"]["present"] == 2 and done["summary"]["absent"] == 1
    assert done["progress"]["text"] == "3/3"
    assert done["completionTime"] and done["startTime"]
    meta = created["metadata"]
    assert done["resultKey"] == keys.job_results(meta["namespace"], meta["uid"])
    finished = {c["type"]: c for c in done["conditions"]}["Finished"]
    assert finished["status"] == "True" and finished["reason"] == "Completed"
    wait_for(lambda: {"Running", "Succeeded"} <= set(k.events("math-7b")),
             f"transition events (got {k.events('math-7b')})")  # fmt: skip
    assert "Pending" not in k.events("math-7b")  # one write fewer per RJ
    assert len(k.jobs()) == 1
    annotations = k.rj("math-7b")["metadata"].get("annotations") or {}
    # no kopf change handler: kopf writes no state of its own to the RJ
    assert not [a for a in annotations if "kopf" in a or "last-handled" in a], annotations
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "rollcall_jobs_created_total 1.0" in text
    assert 'rollcall_recognitionjobs{phase="Succeeded"} 1.0' in text


def test_bad_input_fails_at_once_without_retry(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("bad", "bad"))
    failed = k.phase_is("bad", "Failed")
    assert failed["reason"] == "BadInput"
    assert failed["message"] == "bad input: no photos under images.subPath"
    assert failed["attempts"] == 1
    time.sleep(2)
    assert script.seen["bad"] == 1 and len(k.pods("bad")) <= 1
    assert "Failed" in k.events("bad")


def test_transient_failure_is_retried_then_succeeds(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("flaky", "flaky"))
    done = k.phase_is("flaky", "Succeeded", timeout=90)  # the Job controller backs off ~10 s
    assert done["attempts"] == 2 and script.seen["flaky"] == 2
    assert done["summary"]["matched"] == 4


def test_deadline_fails_with_reason(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("slow", "sleep", runPolicy={"activeDeadlineSeconds": 30}))
    k.phase_is("slow", "Running")
    failed = k.phase_is("slow", "Failed", timeout=90)
    assert failed["reason"] == "DeadlineExceeded"


def test_suspend_and_resume(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("pause", "hold"))
    k.phase_is("pause", "Running")
    k.patch_spec("pause", {"runPolicy": {"suspend": True}})
    wait_for(lambda: k.job("pause").spec.suspend is True, "Job suspended")
    suspended = k.phase_is("pause", "Pending")
    assert suspended["reason"] == "Suspended"
    assert {c["type"]: c["status"] for c in suspended["conditions"]}["Suspended"] == "True"
    wait_for(lambda: not [p for p in k.pods("pause") if p.status.phase == "Running"],
             "the running pod is stopped")  # fmt: skip
    k.patch_spec("pause", {"runPolicy": {"suspend": False}})
    wait_for(lambda: k.job("pause").spec.suspend is False, "Job resumed")
    resumed = k.phase_is("pause", "Running")
    assert {c["type"]: c["status"] for c in resumed["conditions"]}["Suspended"] == "False"
    script.release("pause")
    k.phase_is("pause", "Succeeded")


def test_suspended_at_creation_waits_without_a_job(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("later", runPolicy={"suspend": True}))
    queued = k.phase_is("later", "Queued")
    assert queued["reason"] == "Suspended"
    time.sleep(1)
    assert k.jobs() == []
    k.patch_spec("later", {"runPolicy": {"suspend": False}})
    k.phase_is("later", "Succeeded")


def test_deleting_the_rj_garbage_collects_job_and_pods(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator()
    k.create(rj_body("gone", "hold"))
    k.phase_is("gone", "Running")
    assert len(k.pods("gone")) == 1
    k.delete("gone")
    wait_for(lambda: k.jobs() == [] and k.pods("gone") == [], "Job and pods collected", timeout=60)


def test_cap_queues_the_next_rj_until_a_slot_frees(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator(max_running=2)
    k.create(rj_body("first", "hold"))
    k.create(rj_body("second", "hold"))
    k.phase_is("first", "Running")
    k.phase_is("second", "Running")
    k.create(rj_body("low", "hold"))
    time.sleep(0.5)  # same second: FIFO still puts "low" before "high" only by priority
    k.create(rj_body("high", "hold", priority=10))
    queued = k.phase_is("low", "Queued")
    assert queued["reason"] == "WaitingForCapacity"
    assert queued["message"] == "2/2 jobs are running cluster-wide"
    assert {c["type"]: c["status"] for c in queued["conditions"]}["Admitted"] == "False"
    k.phase_is("high", "Queued")
    assert len(k.jobs()) == 2
    script.release("first")
    k.phase_is("first", "Succeeded")
    k.phase_is("high", "Running")  # priority first
    assert k.status("low")["phase"] == "Queued"
    script.release("second")
    k.phase_is("low", "Running")
    assert k.status("low")["queuedTime"]
    for name in ("high", "low"):
        script.release(name)
        k.phase_is(name, "Succeeded")


def test_an_rj_named_like_another_rjs_job_fails_with_the_reason(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    """RJ names may be subdomains, Job names are labels: ``period.1.math``'s Job is
    ``period-1-math-<hash>``, a name another RJ may take verbatim. That RJ fails at once naming the
    holder (before: admission retried every 2 s for ever), and the holder keeps its Job."""
    start_operator()
    holder = k.create(rj_body("period.1.math", "hold"))
    wait_for(lambda: len(k.jobs()) == 1, "the holder's Job exists")
    taken = job_name("period.1.math")
    assert taken != "period.1.math"
    k.create(rj_body(taken))
    failed = k.phase_is(taken, "Failed")
    assert failed["reason"] == "JobNameTaken" and "period.1.math" in failed["message"], failed
    [job] = k.jobs()
    assert job.metadata.name == taken
    assert job.metadata.owner_references[0].uid == holder["metadata"]["uid"]
    script.release("period.1.math")
    k.phase_is("period.1.math", "Succeeded")


def test_queue_timeout_fails_the_waiting_rj(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    start_operator(max_running=1)
    k.create(rj_body("busy", "hold"))
    k.phase_is("busy", "Running")
    k.create(rj_body("impatient", runPolicy={"queueTimeoutSeconds": 2}))
    failed = k.phase_is("impatient", "Failed", timeout=30)
    assert failed["reason"] == "QueueTimeout"
    script.release("busy")


def test_operator_killed_mid_flight_makes_no_duplicates_and_leaves_no_rj_behind(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    op = start_operator(max_running=3)
    names = [f"rj-{i}" for i in range(8)]
    for name in names[:6]:
        k.create(rj_body(name, "hold"))
    wait_for(lambda: len(k.jobs()) >= 3, "first Jobs")
    op.kill()
    for name in names[6:]:
        k.create(rj_body(name, "hold"))  # created while no operator runs
    for name in names[:3]:
        script.release(name)
    start_operator(max_running=3)
    for name in names:
        script.release(name)
    for name in names:
        k.phase_is(name, "Succeeded", timeout=120)
    jobs = k.jobs()
    assert sorted(j.metadata.name for j in jobs) == sorted(names)
    assert all(len(k.pods(n)) == 1 for n in names)


def test_restart_adopts_a_finished_job_whose_rj_status_was_never_written(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    """A run that died after creating a Job leaves the RJ's status as the CRD's defaults made it.

    The restarted operator must adopt that Job (here finished while it was down), not queue the
    RJ as new behind a full cap, where it would sit Queued forever.
    """
    busy = k.create(rj_body("busy", "hold"))
    orphan = k.create(rj_body("orphan", "ok"))
    assert unwritten(orphan["status"]) and unwritten(busy["status"])  # Pending by default only
    for rj in (busy, orphan):  # the Jobs as the dead operator built them; no status written
        k.batch.create_namespaced_job(k.ns, build_job(rj, OperatorSettings()))
    wait_for(lambda: len(k.pods("orphan")) == 1 and k.pods("orphan")[0].status.phase == "Succeeded",
             "the orphan's pod to finish while no operator runs")  # fmt: skip
    start_operator(max_running=1)
    done = k.phase_is("orphan", "Succeeded", timeout=60)
    assert done["summary"]["present"] == SUMMARY["present"]
    script.release("busy")
    k.phase_is("busy", "Succeeded")
    assert sorted(j.metadata.name for j in k.jobs()) == ["busy", "orphan"]


def test_progress_is_copied_from_redis_while_running(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str, redis_client: Any
) -> None:
    start_operator()
    created = k.create(rj_body("prog", "hold"))
    k.phase_is("prog", "Running")
    uid = created["metadata"]["uid"]
    progress = keys.job_progress(created["metadata"]["namespace"], uid)
    redis_client.hset(progress, mapping={"done": 2, "total": 7})
    wait_for(lambda: k.status("prog")["progress"] == {"done": 2, "total": 7, "text": "2/7"},
             "progress copied")  # fmt: skip
    script.release("prog")
    k.phase_is("prog", "Succeeded")


class Receiver:
    """A webhook receiver on loopback: answers 500 to the first POST, then 200; keeps them all."""

    def __init__(self) -> None:
        import http.server

        self.posts: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers.items()), body))
                self.send_response(500 if len(outer.posts) == 1 else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # by name: the CRD refuses literal loopback addresses in callback.url
        self.url = f"http://localhost:{self.server.server_address[1]}/hooks/rollcall"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_is_signed_retried_after_500_and_recorded(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    from rollcall_operator.webhook import verify

    receiver = Receiver()
    try:
        k.core.create_namespaced_secret(k.ns, {
            "metadata": {"name": "hook"}, "stringData": {"hmac": "s3cret"}})  # fmt: skip
        start_operator()
        created = k.create(rj_body("hooked", callback={
            "url": receiver.url}))  # fmt: skip
        k.phase_is("hooked", "Succeeded")
        wait_for(lambda: (k.status("hooked").get("webhook") or {}).get("delivered") is True,
                 f"webhook delivered (status {k.status('hooked').get('webhook')})")  # fmt: skip
        hook = k.status("hooked")["webhook"]
        assert hook["attempts"] == 2 and hook["lastStatus"] == 200
        assert len(receiver.posts) == 2
        for headers, body in receiver.posts:
            assert verify(b"s3cret", headers["X-Rollcall-Timestamp"], body,
                          headers["X-Rollcall-Signature"])  # fmt: skip
            assert not verify(b"wrong", headers["X-Rollcall-Timestamp"], body,
                              headers["X-Rollcall-Signature"])  # fmt: skip
            assert headers["X-Rollcall-Delivery"] == created["metadata"]["uid"]
        doc = json.loads(receiver.posts[-1][1])
        assert doc["phase"] == "Succeeded" and doc["summary"]["present"] == 2
        assert doc["name"] == "hooked" and doc["namespace"] == k.ns
        time.sleep(1.5)
        assert len(receiver.posts) == 2  # delivered once, not again
    finally:
        receiver.close()


# What the chart's operator ServiceAccount needs, grouped by why (the lead's chart mirrors this).
OPERATOR_CLUSTER_RULES: list[dict[str, Any]] = [
    # kopf (framework): resource discovery and namespace scanning
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]  # fmt: skip
OPERATOR_NAMESPACE_RULES: list[dict[str, Any]] = [
    # the RJs: watch them, keep kopf's annotations, write status, own Jobs (blockOwnerDeletion)
    {"apiGroups": ["rollcall.io"], "resources": ["recognitionjobs"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["rollcall.io"], "resources": ["recognitionjobs/status"],
     "verbs": ["get", "patch"]},
    {"apiGroups": ["rollcall.io"], "resources": ["recognitionjobs/finalizers"],
     "verbs": ["update"]},
    # the Jobs it creates, suspends and watches; their pods for exit codes and messages
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # the namespace's webhook signing Secret (its name is the operator's setting, not the RJ's)
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Events on transitions
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]  # fmt: skip


def test_operator_runs_with_least_privilege_rbac(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str,
    k8s_api: client.ApiClient, control_plane: Any, tmp_path: Path,
) -> None:  # fmt: skip
    rbac: Any = client.RbacAuthorizationV1Api(k8s_api)
    sa, cluster_role = "rollcall-operator", f"rollcall-operator-{k.ns}"
    k.core.create_namespaced_service_account(k.ns, {"metadata": {"name": sa}})
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": k.ns}]
    rbac.create_cluster_role({"metadata": {"name": cluster_role}, "rules": OPERATOR_CLUSTER_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": cluster_role}, "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": cluster_role}})  # fmt: skip
    rbac.create_namespaced_role(k.ns, {"metadata": {"name": sa}, "rules": OPERATOR_NAMESPACE_RULES})
    rbac.create_namespaced_role_binding(k.ns, {
        "metadata": {"name": sa}, "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa}})  # fmt: skip
    try:
        token = k.core.create_namespaced_service_account_token(
            sa, k.ns, {"spec": {"expirationSeconds": 3600}}).status.token  # fmt: skip
        kubeconfig = control_plane.kubeconfig_for(sa, token, tmp_path / "operator-kubeconfig")
        k.core.create_namespaced_secret(k.ns, {
            "metadata": {"name": "hook"}, "stringData": {"hmac": "s"}})  # fmt: skip
        receiver = Receiver()
        try:
            op = start_operator(kubeconfig=str(kubeconfig))
            k.create(rj_body("least", callback={
                "url": receiver.url}))  # fmt: skip
            k.create(rj_body("least-bad", "bad"))
            assert k.phase_is("least", "Succeeded")["summary"]["present"] == 2
            assert k.phase_is("least-bad", "Failed")["reason"] == "BadInput"
            wait_for(lambda: (k.status("least").get("webhook") or {}).get("delivered") is True,
                     "webhook delivered with the SA's secret access")  # fmt: skip
            wait_for(lambda: "Succeeded" in k.events("least"), "events posted")
            assert "Forbidden" not in op.logs() and "403" not in op.logs(), op.logs()
        finally:
            receiver.close()
    finally:
        rbac.delete_cluster_role_binding(cluster_role)
        rbac.delete_cluster_role(cluster_role)


def test_two_operators_racing_still_make_one_job_per_rj(
    k: K, start_operator: Callable[..., Operator], script: Script, photos: str
) -> None:
    """Both standalone, both create: the deterministic Job name turns the loser's create into 409."""
    start_operator()
    start_operator()
    names = [f"race-{i}" for i in range(6)]
    for name in names:
        k.create(rj_body(name))
    for name in names:
        k.phase_is(name, "Succeeded")
    assert sorted(j.metadata.name for j in k.jobs()) == names
    assert all(script.seen[n] == 1 for n in names)
