"""Start a real redis-server on a free loopback port in a temp dir, for tests and the demo."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import retry_on_bind_failure, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RedisServer:
    port: int
    dir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            # NOAUTH: up, with the default user switched off (an ACL file is in use)
            if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server not ready: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def redis_server(
    workdir: Path, config: str = "", extra_args: Sequence[str] = ()
) -> Iterator[RedisServer]:
    """A throwaway redis-server (no persistence) that is stopped on exit.

    ``config``: redis.conf lines (an ``aclfile``, TLS settings...) read before the fixed options;
    ``extra_args``: more command-line options after them (``--sentinel`` makes it a Sentinel).
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: install the Debian package redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    conf = workdir / "redis.conf"
    conf.write_text(config)

    def launch() -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        args = [
            exe,
            str(conf),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
            "--protected-mode",
            "yes",
            *extra_args,
        ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port, proc, log)
        except BaseException:
            stop_process(proc, 10)
            raise
        return port, proc

    port, proc = retry_on_bind_failure(launch, log)
    try:
        yield RedisServer(port=port, dir=workdir, process=proc)
    finally:
        stop_process(proc, 10)
