"""``python hack/localk8s.py`` in the foreground stops its etcd and kube-apiserver on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

HACK = Path(__file__).parent.parent / "hack"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_control_plane_children(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HACK / "localk8s.py"), "--workdir", str(tmp_path / "cp")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("export KUBECONFIG="):
                break
        else:
            pytest.fail(f"the control plane never came up (exit {proc.wait()})")
        children = psutil.Process(proc.pid).children(recursive=True)
        names = {c.name() for c in children}
        assert {"etcd", "kube-apiserver"} <= names, names
        proc.send_signal(sig)
        assert proc.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.name() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
