"""Redis ACL users of rollcall: who may touch which keys with which commands. Pure; one place.

Each school's jobs, the operator and the API reach Redis as their own user, so a credential that
leaks out of one school namespace reaches that school's keys only:

- ``rollcall-job-<tenant>``: ``~rollcall:<tenant>:*`` (``keys.tenant_pattern``) and only the
  commands the recognition container sends — no SCAN/KEYS (it could list other schools' key
  names), no FLUSHALL/FLUSHDB/CONFIG/ACL/DEBUG/SCRIPT/EVAL/MODULE/SHUTDOWN (``-@all`` first).
- ``rollcall-operator``: read-only (``%R~``) on job progress hashes, HMGET and PING only.
- ``rollcall-api``: serves every school (its own auth maps keys to namespaces): read progress,
  read/rewrite results, idempotency claims, and gallery reads/erasure (erase endpoints), which
  waits for the replicas (WAIT, and ``INFO replication`` alone of INFO's sections).

The chart renders its ACL file from ``chart_rules()`` (written to ``charts/rollcall/files/`` by
``python -m rollcall_contract.acl``; a test keeps them equal), and the tests start redis-server
with ``acl_file`` of the same rules. Passwords enter only as SHA-256 hashes (``#<hex>``), so the ACL
file never holds one.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from rollcall_contract import keys

ADMIN_USER = "rollcall-admin"
API_USER = "rollcall-api"
OPERATOR_USER = "rollcall-operator"
JOB_USER_PREFIX = "rollcall-job-"

# What redis-py's RedisCluster sends before any key command (the slot map, the command table for
# key extraction) and to follow an ASK redirection while a resharding moves a slot (ASKING: without
# it every command on a key already moved fails until the migration ends); harmless on a single
# node, where nobody sends them.
CLUSTER_CLIENT_COMMANDS: tuple[str, ...] = ("cluster|slots", "command", "asking")
# What the recognition container sends (gallery.py, results.py, progress.py, __main__.py), plus
# SELECT for a URL naming another database. CLIENT SETINFO (redis-py's connect banner) is left out:
# redis-py ignores its refusal, and Redis 7.0 does not know the subcommand.
JOB_COMMANDS: tuple[str, ...] = (
    "ping", "select",
    "get", "set", "del", "expire", "rename",
    "hgetall", "hmget", "hlen", "hset",
    "watch", "unwatch", "multi", "exec", "discard",
    "wait",  # results reached a replica before the job reports success (cluster, Sentinel)
    *CLUSTER_CLIENT_COMMANDS,
)  # fmt: skip
OPERATOR_COMMANDS: tuple[str, ...] = ("ping", "select", "hmget", *CLUSTER_CLIENT_COMMANDS)
API_COMMANDS: tuple[str, ...] = (
    "ping", "select",
    "get", "set", "del", "unlink", "exists", "expire", "ttl",
    "hgetall", "hmget", "hget", "hlen", "hkeys", "hexists", "hset", "hdel", "hscan",
    "scan",  # gallery_match: every model's gallery of a class, for erasure
    "eval", "evalsha",  # compare-and-delete of an idempotency claim (scripts run under this ACL)
    "watch", "unwatch", "multi", "exec", "discard",
    "wait",  # an erase answers 200 once the primary's replicas hold it (rollcall_api.erasure)
    "info|replication",  # ...and asks the primary how many it has: that INFO section only
    *CLUSTER_CLIENT_COMMANDS,
)  # fmt: skip

_ANY = "*"  # any tenant, any job uid (tenants and uids hold no ':' — keys.py checks them)
_PROGRESS = f"{keys.PREFIX}:{_ANY}:job:{_ANY}:progress"
_RESULTS = f"{keys.PREFIX}:{_ANY}:job:{_ANY}:results"
_GALLERIES = f"{keys.PREFIX}:{_ANY}:gallery:{_ANY}"
_IDEMPOTENCY = f"{keys.PREFIX}:{_ANY}:idem:{_ANY}"
# The chart substitutes each school namespace for this placeholder in the job rules.
TENANT_PLACEHOLDER = "{tenant}"


def _rules(patterns: Iterable[str], commands: Sequence[str]) -> list[str]:
    """``resetkeys resetchannels -@all`` first, so nothing is granted that is not listed."""
    return ["resetkeys", "resetchannels", *patterns, "-@all", *(f"+{c}" for c in commands)]


def job_user(tenant: str) -> str:
    """The ACL user of school ``tenant``'s recognition jobs."""
    return JOB_USER_PREFIX + keys.check_tenant(tenant)


def job_user_rules(tenant: str) -> list[str]:
    """Only that school's keys, only the commands a job sends."""
    return _rules([f"~{keys.tenant_pattern(tenant)}"], JOB_COMMANDS)


def operator_rules() -> list[str]:
    """Reads job progress of every school (to fold it into RJ status); writes nothing."""
    return _rules([f"%R~{_PROGRESS}"], OPERATOR_COMMANDS)


def api_rules() -> list[str]:
    """Progress read-only; results, idempotency claims and galleries read/write (erasure)."""
    patterns = [f"%R~{_PROGRESS}", f"~{_RESULTS}", f"~{_IDEMPOTENCY}", f"~{_GALLERIES}"]
    return _rules(patterns, API_COMMANDS)


def admin_rules() -> list[str]:
    """Everything: for an operator of the installation (migrations, backups), never a component."""
    return ["resetkeys", "resetchannels", "~*", "&*", "+@all"]


def password_hash(password: str) -> str:
    """The ``#<sha256 hex>`` form of a password, as an ACL file stores it."""
    if not password:
        raise ValueError("an ACL user needs a non-empty password")
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_line(user: str, rules: Sequence[str], password: str) -> str:
    """One ACL file line: ``user <name> reset on #<hash> <rules...>``."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"invalid ACL user name {user!r}")
    return " ".join(["user", user, "reset", "on", password_hash(password), *rules])


def acl_file(users: Sequence[tuple[str, Sequence[str], str]]) -> str:
    """An ACL file for ``(user, rules, password)`` entries; the default user is switched off."""
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [acl_line(user, rules, password) for user, rules, password in users]
    return "\n".join(lines) + "\n"


def chart_rules() -> dict[str, str]:
    """The rules the chart renders (job rules with ``TENANT_PLACEHOLDER`` for the namespace)."""
    job = _rules([f"~{keys.PREFIX}:{TENANT_PLACEHOLDER}:*"], JOB_COMMANDS)
    return {
        "admin": " ".join(admin_rules()),
        "api": " ".join(api_rules()),
        "operator": " ".join(operator_rules()),
        "job": " ".join(job),
    }


CHART_FILE = Path("charts/rollcall/files/redis-acl-rules.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``chart_rules()`` to the chart (argument: the repository root, default ``.``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[0]) if args else Path()
    target = root / CHART_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(chart_rules(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
