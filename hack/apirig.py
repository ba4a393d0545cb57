"""Helpers to run the real API in tests, benchmarks and demos: key files and a uvicorn thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
