"""Helpers to run the real API in tests, benchmarks and demos: key files, the app in-process or
in a uvicorn thread, and the CPU set-ups the API benchmarks compare."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from rollcall_api.app import create_app
from rollcall_api.auth import hash_key, new_key
from rollcall_api.settings import Settings


def write_key_file(path: Path, schools: dict[str, list[str]]) -> dict[str, str]:
    """Issue one key per school (school -> namespaces); write their hashes; return school -> key."""
    issued = {school: new_key() for school in schools}
    doc = {
        hash_key(key): {"school": school, "namespaces": schools[school]}
        for school, key in issued.items()
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return issued


def api_settings(
    tmp_path: Path,
    kubeconfig: Path,
    redis_url: str,
    schools: dict[str, list[str]],
    **overrides: Any,
) -> tuple[Settings, dict[str, str]]:
    """Settings for a test's API (keys issued into ``tmp_path/keys.yaml``, no key reloading
    unless ``overrides`` say so) and school -> issued key."""
    issued = write_key_file(tmp_path / "keys.yaml", schools)
    settings = Settings(
        kubeconfig=kubeconfig,
        keys_file=tmp_path / "keys.yaml",
        redis_url=redis_url,
        **{"keys_reload_seconds": 0, **overrides},
    )
    return settings, issued


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan run, behind an httpx client on the test's own event loop."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


@contextlib.contextmanager
def serve_in_thread(settings: Settings, port: int | None = None) -> Iterator[str]:
    """Run the API with uvicorn on a loopback port in a daemon thread; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
        timeout_graceful_shutdown=1,  # open event streams would otherwise hold shutdown
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass(frozen=True)
class CpuSetup:
    """Which CPUs the server under test may use, which the rest of a benchmark may use, and how
    strongly the server's session claims CPU over other sessions.

    On a cluster the API pod has its own CPU request while the control plane and the clients run
    on other machines; on one small shared machine they all compete for the same cores. A
    benchmark shows both: ``shared`` (every process on every CPU, as the kernel schedules them)
    and ``own-cpu`` (the server on one CPU with its session at autogroup nice -20, so it runs
    there whenever it is runnable, as a CPU request lets a pod; everything else on every CPU,
    taking what the server leaves). Splitting the CPUs instead (the rest kept off the server's
    CPU) starved the apiserver: submit p99 went from 0.5 to 1.2 s at load 8. The kernel shares
    CPU between sessions (autogroup) before it looks at a process's niceness, so the session's
    nice is set, in ``/proc/<pid>/autogroup``: the server must lead a session of its own
    (``start_new_session``), or its whole session is favoured with it.
    """

    name: str
    server: frozenset[int]
    rest: frozenset[int]
    server_nice: int = 0

    @property
    def how(self) -> str:
        return (
            f"the server on CPU {_cpus(self.server)}, its session at autogroup nice "
            f"{self.server_nice}; control plane, Redis and load generator on CPU "
            f"{_cpus(self.rest)} (with other sessions' processes)"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def cpu_setups(
    cpus: Iterable[int], wanted: Iterable[str] = ("shared", "own-cpu")
) -> list[CpuSetup]:
    """The wanted set-ups over these CPUs; ``own-cpu`` needs two, and gives the server the first."""
    ordered = sorted(set(cpus))
    every = frozenset(ordered)
    made = {"shared": CpuSetup("shared", every, every)}
    if len(ordered) >= 2:
        made["own-cpu"] = CpuSetup("own-cpu", frozenset(ordered[:1]), every, server_nice=-20)
    unknown = set(wanted) - {"shared", "own-cpu"}
    if unknown:
        raise ValueError(f"unknown CPU set-up(s): {', '.join(sorted(unknown))}")
    return [made[name] for name in wanted if name in made]


def pin(pids: Iterable[int], cpus: frozenset[int]) -> None:
    """Set the CPU affinity of every thread of these processes (Linux sets it per thread)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            continue
        for tid in tids:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(tid, cpus)


def apply_setup(setup: CpuSetup, server: int, others: Iterable[int]) -> str:
    """Pin the server and the others, and set the server session's nice; says what took effect.

    Raising a session's priority needs CAP_SYS_NICE: without it the pinning still applies, and
    the answer says the nice did not.
    """
    pin([server], setup.server)
    pin(others, setup.rest)
    try:
        Path(f"/proc/{server}/autogroup").write_text(f"{setup.server_nice}\n")
        got = Path(f"/proc/{server}/autogroup").read_text().split()[-1]
    except OSError as exc:
        return f"server session nice not set ({exc.strerror})"
    return f"server session nice {got}"
