"""pytest fixtures for the Redis topologies of hack/redistopo.py (registered in tests/conftest.py).

Both topologies load the components' real ACL users (``rollcall_contract.acl``): an admin for the
rig, the API user and one job user per school in ``TENANTS``; passwords are random per session.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from redistopo import Acl, Cluster, SentinelGroup, redis_cluster, sentinel_group
from rollcall_contract import acl

TENANTS = ("school-a", "school-b", "school-c")


@dataclass(frozen=True)
class Users:
    """User -> password of every ACL user the topologies load."""

    passwords: dict[str, str] = field(repr=False)

    @property
    def acl(self) -> Acl:
        entries = [(acl.ADMIN_USER, acl.admin_rules(), self.passwords[acl.ADMIN_USER])]
        entries.append((acl.API_USER, acl.api_rules(), self.passwords[acl.API_USER]))
        entries.append((acl.OPERATOR_USER, acl.operator_rules(), self.passwords[acl.OPERATOR_USER]))
        entries += [(acl.job_user(t), acl.job_user_rules(t), self.job(t)[1]) for t in TENANTS]
        return Acl(acl.acl_file(entries), acl.ADMIN_USER, self.passwords[acl.ADMIN_USER])

    def job(self, tenant: str) -> tuple[str, str]:
        """(user, password) of school ``tenant``'s jobs."""
        user = acl.job_user(tenant)
        return user, self.passwords[user]

    def admin(self) -> tuple[str, str]:
        return acl.ADMIN_USER, self.passwords[acl.ADMIN_USER]

    def api(self) -> tuple[str, str]:
        return acl.API_USER, self.passwords[acl.API_USER]

    def operator(self) -> tuple[str, str]:
        return acl.OPERATOR_USER, self.passwords[acl.OPERATOR_USER]


@pytest.fixture(scope="session")
def topology_users() -> Users:
    names = [acl.ADMIN_USER, acl.API_USER, acl.OPERATOR_USER, *map(acl.job_user, TENANTS)]
    return Users({n: secrets.token_urlsafe(18) for n in names})


@pytest.fixture(scope="session")
def redis_cluster_topology(
    tmp_path_factory: pytest.TempPathFactory, topology_users: Users
) -> Iterator[Cluster]:
    """Three primaries with a replica each (six redis-server processes), ACL users loaded."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster"), topology_users.acl) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_to_break(tmp_path: Path, topology_users: Users) -> Iterator[Cluster]:
    """A cluster of its own for a test that kills a node."""
    with redis_cluster(tmp_path / "cluster", topology_users.acl) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel_topology(tmp_path: Path, topology_users: Users) -> Iterator[SentinelGroup]:
    """A master, two replicas and three sentinels, ACL users loaded; one per test, because tests
    kill its master."""
    with sentinel_group(tmp_path / "sentinel", acl=topology_users.acl) as group:
        yield group
