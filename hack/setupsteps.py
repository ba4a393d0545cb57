"""Run the set-up steps (make targets) side by side where they are independent, one line per step.

A cold first run spends minutes in the Go control-plane build while the Python env, kubectl/helm
and the models could be made meanwhile; run one after the other, those minutes add up, and a
newcomer sees nothing for them. This driver starts every step whose prerequisites are done, keeps
each step's output in its own log (shown when the step fails, so parallel output never interleaves)
and prints a line as each step ends with its time and what remains.

Standard library only: it runs before the Python env exists (``python3 hack/setupsteps.py STEP...``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# What each step needs done first. tools and models run in the env; kueue waits for the control
# plane only so that two Go builds never share the two cores (and their module downloads) at once.
DEPENDS: Mapping[str, tuple[str, ...]] = {
    "tools": ("venv",),
    "models": ("venv",),
    "kueue": ("controlplane",),
}
HEARTBEAT_SECONDS = 60.0
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Status:
    """Where the run stands: steps done, running, and not yet started (in their order)."""

    done: tuple[str, ...]
    running: tuple[str, ...]
    waiting: tuple[str, ...]


def prerequisites(step: str, steps: Sequence[str]) -> tuple[str, ...]:
    """The steps of this run that ``step`` waits for (a prerequisite not asked for is not waited on)."""
    return tuple(d for d in DEPENDS.get(step, ()) if d in steps)


def validate(steps: Sequence[str]) -> None:
    """Refuse a duplicated step: the driver would run it twice, side by side."""
    seen: set[str] = set()
    for step in steps:
        if step in seen:
            raise ValueError(f"step {step!r} given twice")
        seen.add(step)


def startable(status: Status, steps: Sequence[str]) -> tuple[str, ...]:
    """Waiting steps whose prerequisites are all done, in the order they were asked for."""
    return tuple(
        s for s in status.waiting if all(d in status.done for d in prerequisites(s, steps))
    )


def fmt_seconds(seconds: float) -> str:
    """60 s and over as minutes and seconds, as a newcomer reads a wait."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def finished_line(step: str, seconds: float, status: Status, total: int) -> str:
    """The line printed when ``step`` succeeds; ``status`` is the state right after it."""
    line = f"[{len(status.done)}/{total}] {step}: {fmt_seconds(seconds)}"
    remaining = []
    if status.running:
        remaining.append("running: " + ", ".join(status.running))
    if status.waiting:
        remaining.append("next: " + ", ".join(status.waiting))
    return line + (" — " + "; ".join(remaining) if remaining else " — set-up done")


def heartbeat_line(elapsed: float, running: Mapping[str, float]) -> str:
    """The line printed while long steps run, so a cold first run never looks stuck."""
    parts = ", ".join(f"{step} {fmt_seconds(t)}" for step, t in running.items())
    return f"      … {fmt_seconds(elapsed)} in; still running: {parts}"


# --- the shell: processes, logs and the clock ------------------------------------------------


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    log: Path
    started: float


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _stop(running: Iterable[_Running]) -> None:
    for r in running:
        if r.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.process.pid, signal.SIGTERM)
    for r in running:
        r.process.wait()


def run(steps: Sequence[str], make: Sequence[str], out: IO[str]) -> int:
    """Run ``make <step>`` for each step, side by side as DEPENDS allows; 0 when all succeed."""
    validate(steps)
    logs = Path(tempfile.mkdtemp(prefix="rollcall-setup-"))
    start = time.monotonic()
    running: dict[str, _Running] = {}
    print(f"set-up: {', '.join(steps)} (logs in {logs})", file=out, flush=True)
    try:
        code = _loop(steps, make, logs, running, out)
    finally:  # Ctrl-C or a failed step: the steps still running (own sessions) are stopped too
        _stop(running.values())
    if code == 0:
        print(f"set-up took {fmt_seconds(time.monotonic() - start)}", file=out, flush=True)
        shutil.rmtree(logs, ignore_errors=True)
    return code


def _loop(
    steps: Sequence[str],
    make: Sequence[str],
    logs: Path,
    running: dict[str, _Running],
    out: IO[str],
) -> int:
    start = last_beat = time.monotonic()
    done: list[str] = []
    waiting = list(steps)
    while waiting or running:
        for step in startable(Status(tuple(done), tuple(running), tuple(waiting)), steps):
            waiting.remove(step)
            log = logs / f"{step}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [*make, "--no-print-directory", step],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            running[step] = _Running(proc, log, time.monotonic())
        time.sleep(0.2)
        now = time.monotonic()
        for step, r in list(running.items()):
            code = r.process.poll()
            if code is None:
                continue
            del running[step]
            if code != 0:
                print(f"{step} failed (exit {code}); the end of {r.log}:", file=out)
                print(_tail(r.log, LOG_TAIL_LINES), file=out, flush=True)
                return code
            done.append(step)
            status = Status(tuple(done), tuple(running), tuple(waiting))
            print(finished_line(step, now - r.started, status, len(steps)), file=out, flush=True)
        if running and now - last_beat >= HEARTBEAT_SECONDS:
            last_beat = now
            times = {s: now - r.started for s, r in running.items()}
            print(heartbeat_line(now - start, times), file=out, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="make command")
    parser.add_argument("steps", nargs="+", help="make targets, e.g. system venv controlplane")
    args = parser.parse_args(argv)
    try:
        return run(args.steps, args.make.split(), sys.stdout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
