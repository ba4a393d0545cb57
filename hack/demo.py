"""`make demo`: take attendance for one class end to end on this machine.

1. builds (or reuses) the control plane, kubectl/helm, the default ONNX models and sample photos;
2. starts the real control plane, Redis, the node agent, the operator and the API (hack/stack.py);
3. a school admin puts enrollment photos (one folder per student) and a class's photos on volumes;
4. through the `rollcall` CLI (REST): enrolls the class, then submits an attendance job and follows
   its live progress until the attendance table is printed;
5. says where the annotated photos are.

Photos come from registry packages (face_recognition's and insightface's test images, scikit-image's
astronaut) and are never committed. The six people of insightface's group photo are enrolled from
transformed crops (flipped, rescaled, brighter, JPEG re-encoded), so recognising them in the original
is a real match, not a copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from localk8s import cache_dir, ensure_binaries, ensure_tools
from rollcall_job.faces import load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models
from stack import BIN, Stack, running_stack

NAMESPACE = "school-demo"
CLASS = "grade7-b"
GROUP = [f"s-{i:02d}" for i in range(1, 7)]  # the six people in the group photo, left to right
ROSTER = [*GROUP, "s-obama", "s-biden", "s-collins"]


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def prepare_enrollment(folder: Path, model_dir: Path) -> None:
    """One folder per student: real photos, and transformed crops of the group photo's faces."""
    for sid, names in {
        "s-obama": ["obama.jpg", "obama2.jpg"],
        "s-biden": ["biden.jpg"],
        "s-collins": ["astronaut.png"],
    }.items():
        (folder / sid).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(photo(name), folder / sid / name)
    group = read_image(photo("t1.jpg"))
    faces = sorted(load_engine(model_dir).detect(group), key=lambda f: f.box[0])
    if len(faces) != len(GROUP):
        raise SystemExit(f"expected {len(GROUP)} faces in the group photo, found {len(faces)}")
    h, w = group.shape[:2]
    for sid, face in zip(GROUP, faces, strict=True):
        x1, y1, x2, y2 = face.box
        pad = 0.6 * max(x2 - x1, y2 - y1)
        crop = group[
            max(0, int(y1 - pad)) : min(h, int(y2 + pad)),
            max(0, int(x1 - pad)) : min(w, int(x2 + pad)),
        ]
        variant = cv2.flip(cv2.resize(crop, None, fx=1.6, fy=1.6), 1)
        variant = np.clip(variant.astype(np.float32) * 1.15 + 10, 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", variant, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        (folder / sid).mkdir(parents=True, exist_ok=True)
        (folder / sid / "enroll.jpg").write_bytes(jpeg.tobytes())


def prepare_class_photos(folder: Path) -> None:
    """Today's photos: the group, one more of a student, a photo with no face and a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo("t1.jpg"), folder / "group.jpg")
    shutil.copy(photo("obama3.jpg"), folder / "front-row.jpg")
    shutil.copy(photo("mask_white.jpg"), folder / "whiteboard.jpg")
    (folder / "camera-glitch.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")


def rollcall(stack: Stack, *args: str) -> None:
    cmd = [str(BIN / "rollcall"), *args]
    print("$ rollcall " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, env=stack.cli_env("demo-school"), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"rollcall {args[0]} exited with {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=cache_dir() / "run" / "demo")
    args = parser.parse_args()
    started = time.monotonic()

    say("Building or reusing the control plane, kubectl/helm, models and sample photos")
    print(f"control plane binaries: {ensure_binaries()}")
    print(f"kubectl and helm:       {ensure_tools()}")
    model_dir = build_models()
    print(f"models:                 {model_dir}")

    shutil.rmtree(args.workdir, ignore_errors=True)
    say(
        "Starting etcd, kube-apiserver, controller-manager, scheduler, Redis, node agent, operator, API"
    )
    with running_stack(
        args.workdir, schools={"demo-school": [NAMESPACE]}, model_dir=model_dir
    ) as stack:
        print(f"API:        {stack.api_url}   (docs at {stack.api_url}/docs)")
        print(f"kubeconfig: {stack.cp.kubeconfig}")

        say("A school admin puts photos on two volumes (PersistentVolumeClaims)")
        enrollment = stack.claim(NAMESPACE, "enrollment-photos")
        prepare_enrollment(enrollment, model_dir)
        today = stack.claim(NAMESPACE, "class-photos") / "2026-11-27" / "period-1"
        prepare_class_photos(today)
        print(f"enrollment: {sorted(p.name for p in enrollment.iterdir())}")
        print(f"class:      {sorted(p.name for p in today.iterdir())}")

        say("Enroll the class gallery through the REST API (a GPU Job per request)")
        rollcall(stack, "enroll", "--class", CLASS, "--claim", "enrollment-photos", "--watch")

        say("Take attendance from today's photos, following live progress")
        spec = args.workdir / "period-1.yaml"
        reviews = stack.claim(NAMESPACE, "reviews", read_only=False)
        # Annotated copies go to a writable claim, so they outlive the pod as in a real cluster.
        spec.write_text(
            yaml.safe_dump(
                {
                    "output": {
                        "annotate": True,
                        "claimName": "reviews",
                        "subPath": "2026-11-27/period-1",
                    }
                }
            )
        )
        rollcall(
            stack,
            "submit",
            "--file",
            str(spec),
            "--class",
            CLASS,
            "--claim",
            "class-photos",
            "--sub-path",
            "2026-11-27/period-1",
            "--roster",
            ",".join(ROSTER),
            "--watch",
        )

        say("What Kubernetes saw")
        kubectl = ensure_tools() / "kubectl"
        env = {**os.environ, "KUBECONFIG": str(stack.cp.kubeconfig)}
        subprocess.run([str(kubectl), "get", "rj,jobs", "-n", NAMESPACE], env=env, check=False)

        annotated = sorted(reviews.glob("**/*.jpg"))
        say("Annotated photos (boxes, student ids, scores) for a person to check")
        for path in annotated:
            print(f"  {path}")
        if not annotated:
            print("  (none written)")
    say(f"Demo finished in {time.monotonic() - started:.0f}s; everything it started is stopped")


if __name__ == "__main__":
    main()
