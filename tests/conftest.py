"""Fixtures for real servers: a Kubernetes control plane, a process node agent and redis-server.

Everything here is real: etcd + kube-apiserver + controller-manager + scheduler built from the Go
module proxy (hack/localk8s.py), a node agent that runs bound pods (hack/nodeagent.py), and the
Debian redis-server (hack/redisrig.py). One control plane per session; a fresh namespace per test.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localk8s import (
    ControlPlane,
    ensure_tools,
    install_crds,
    local_volume,
    restricted_namespace,
)
from localk8s import control_plane as start_control_plane
from nodeagent import NodeAgent, NodePool, ProcessRunner, Runner
from redisrig import RedisServer, redis_server

pytest_plugins = ["redistopo_fixtures"]  # Redis Cluster and Sentinel topologies (hack/)

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "charts" / "rollcall" / "crds"
GPU_NODE = "gpu-node-0"


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> Iterator[str]:
    """The URL of the session's redis-server, emptied before each test."""
    client_ = redis.Redis.from_url(redis_proc.url)
    client_.flushall()
    client_.close()
    yield redis_proc.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client_ = redis.Redis.from_url(redis_url)
    yield client_
    client_.close()


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback."""
    with start_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """An admin kubeconfig (system:masters via a static token)."""
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    # kubernetes.config and ApiClient.close ship without annotations (despite the py.typed).
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    """The directory holding kubectl and helm (from the registry package, cached)."""
    return ensure_tools()


@pytest.fixture(scope="session")
def crds(k8s_api: client.ApiClient) -> list[str]:
    """Install every CRD under charts/rollcall/crds and wait until each is Established."""
    return install_crds(k8s_api, CRD_DIR)


@pytest.fixture(scope="session")
def node_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the node agent keeps volumes (<root>/volumes/<ns>/<claim>) and pod folders."""
    return tmp_path_factory.mktemp("node")


@pytest.fixture(scope="session")
def gpu_node(k8s_api: client.ApiClient, node_root: Path) -> Iterator[NodeAgent]:
    """A Ready Node with 8 `nvidia.com/gpu`, whose bound pods run as local processes by default."""
    bin_dir = str(Path(sys.executable).parent)
    agent = NodeAgent(k8s_api, GPU_NODE, ProcessRunner(k8s_api, node_root, extra_path=[bin_dir]))
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def namespace(k8s_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that enforces the restricted Pod Security profile."""
    core = client.CoreV1Api(k8s_api)
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    restricted_namespace(k8s_api, name)
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
def local_claim(k8s_api: client.ApiClient, namespace: str, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``local_claim("photos")`` makes a bound PVC in the test namespace; returns its folder.

    Pods mounting the claim schedule normally and the node agent maps the mount to that folder.
    """
    core = client.CoreV1Api(k8s_api)

    def make(name: str, *, read_only: bool = False) -> Path:
        folder = tmp_path / "claims" / name
        local_volume(core, namespace, name, folder, read_only=read_only)
        return folder

    return make


@pytest.fixture
def node_agent(gpu_node: NodeAgent, namespace: str) -> Iterator[NodeAgent]:
    """The GPU node's agent; `node_agent.use(namespace, runner)` scripts this test's pods."""
    yield gpu_node
    gpu_node.use(namespace, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real servers they use, so `-m 'not k8s'` works without bookkeeping."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"redis_url", "redis_client", "redis_proc"}:
            item.add_marker(pytest.mark.redis)
        if names & {"control_plane", "kubeconfig", "k8s_api", "namespace", "gpu_node", "crds"}:
            item.add_marker(pytest.mark.k8s)


@pytest.fixture
def node_pool(
    k8s_api: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[Callable[..., NodePool]]:
    """Factory: ``node_pool(runner, nodes=4, gpus=2)`` starts Ready Nodes of this test's own pool.

    Only pods with the pool's node selector and toleration land there (operator settings
    ``node_selector``/``tolerations``); the Nodes are deleted after the test.
    """
    pools: list[NodePool] = []

    def start(runner: Runner, *, nodes: int = 4, gpus: int = 2) -> NodePool:
        name = f"pool-{uuid.uuid4().hex[:6]}"
        pools.append(NodePool.start(k8s_api, name, runner, nodes=nodes, gpus=gpus))
        return pools[-1]

    yield start
    for pool in pools:
        pool.remove()
