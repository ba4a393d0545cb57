"""Evaluate every built-in embedder card on registry photos and print a markdown table.

    .venv/bin/python bench/eval_faces.py [--cards ID,ID] [--json OUT] [--threads N] [--unfused]
    make eval

Anyone can rerun it: every photo comes from a pinned registry package (listed in the output),
the models are built from theirs (``build.py``). Faces are found once with the default detector;
each card then aligns and embeds the same faces, so the cards differ only by the embedder.

Per card: TAR at FAR 1e-3 and the EER over genuine pairs (real: one person in two photos;
augmented: a face against a mirrored, darkened, shrunk copy or all three — a weaker proxy;
masked: a synthetic mask over the lower face) and impostor pairs (two faces of one group photo, and known
different people across photos); then the roll call of issue #10 (``evaluation.py``) under the
card's own threshold and margin, under today's greedy rule without a margin, and at the operating
point chosen on this set (no false present, fewest misses). The chosen point is fitted on the
same photos it is reported on: read it as an upper bound, and the card's own row as the check.

``--unfused`` runs each embedder's graph as written, with onnxruntime's graph optimisations off, so
an int8 card's QuantizeLinear/DequantizeLinear pairs stay around float convolutions instead of being
fused into int8 kernels: the arithmetic of a provider without fused int8 kernels, such as CUDA's.
It checks an int8 card's decisions on a machine that has no GPU; it is not a GPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from rollcall_job.faces import DetectedFace, FaceEngine, load_engine, read_image
from rollcall_job.matcher import Metric
from rollcall_job.models import evaluation as ev
from rollcall_job.models.assets import photo
from rollcall_job.models.build import (
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    SELECTABLE_EMBEDDERS,
    build_models,
    link_detectors,
    write_embedder,
)
from rollcall_job.models.cache import MODELS_VERSION, cache_root
from rollcall_job.models.cards import EMBEDDER_CARD, ModelCard, load_card
from rollcall_job.models.npm import extract_npm_member
from rollcall_job.runtime import session_options

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("eval_faces")

FACE_API = ("@vladmandic/face-api", "1.7.15")  # demo/sample1-6.jpg: group photos, MIT package

# (name, identity or None for a group photo of distinct people, source package@version)
PHOTOS: tuple[tuple[str, str | None, str], ...] = (
    ("obama.jpg", "obama", "face_recognition@1.3.0 (PyPI sdist)"),
    ("obama2.jpg", "obama", "face_recognition@1.3.0 (PyPI sdist)"),
    ("obama3.jpg", "obama", "face_recognition@1.3.0 (PyPI sdist)"),
    ("obama_partial_face.jpg", "obama", "face_recognition@1.3.0 (PyPI sdist)"),  # cut by the edge
    ("obama_partial_face2.jpg", "obama", "face_recognition@1.3.0 (PyPI sdist)"),
    ("biden.jpg", "biden", "face_recognition@1.3.0 (PyPI sdist)"),
    ("Tom_Hanks_54745.png", "hanks", "insightface@2.1 (PyPI sdist)"),
    ("astronaut.png", "collins", "scikit-image skimage.data.astronaut()"),
    ("t1.jpg", None, "insightface@2.1 (PyPI sdist)"),
    *((f"face-api-sample{i}.jpg", None, "@vladmandic/face-api@1.7.15 (npm)") for i in range(1, 7)),
)
VIEWS = ("flip", "dark", "small", "far")  # augmented genuine views; "mask" is reported apart
ENROL_VIEWS = ("flip", "dark")  # a student's gallery rows: two other views of their face
MAX_TRIALS_PER_PHOTO = 6
# What a card shipped with before this evaluation (issue #10): reported as the "before" row.
BEFORE = {"dlib-resnet-v1": 0.6}
FAR = 1e-3


def photo_path(name: str) -> Path:
    """A named photo of the set, fetched from its package into the cache on first use."""
    if not name.startswith("face-api-"):
        return photo(name)
    target = cache_root() / "photos" / "eval-v1" / name
    if target.is_file():
        return target
    member = "package/demo/" + name.removeprefix("face-api-")
    return extract_npm_member(*FACE_API, member, target)


@dataclass(frozen=True)
class Face:
    photo: str
    index: int
    identity: str
    group: str | None  # the group photo it belongs to (faces of one group are distinct people)
    face: DetectedFace


@dataclass
class PhotoFaces:
    name: str
    image: npt.NDArray[np.uint8]
    faces: list[Face]


def detect_all(engine: FaceEngine) -> list[PhotoFaces]:
    """Every photo's faces: the largest for one-person photos, all for group photos."""
    out = []
    for name, identity, _ in PHOTOS:
        image = read_image(photo_path(name))
        found = engine.detect(image)
        if identity is not None:
            found = sorted(found, key=lambda f: -f.size)[:1]
        if not found:
            log.warning("%s: no face found, skipped", name)
            continue
        faces = [
            Face(name, i, identity or f"{name}#{i}", None if identity else name, f)
            for i, f in enumerate(sorted(found, key=lambda f: f.box[0]))
        ]
        out.append(PhotoFaces(name, image, faces))
    return out


def _with_landmarks(face: DetectedFace, landmarks: npt.NDArray[np.float32]) -> DetectedFace:
    return dataclasses.replace(face, landmarks=np.ascontiguousarray(landmarks, dtype=np.float32))


def masked_photo(p: PhotoFaces, only: Sequence[int] | None = None) -> npt.NDArray[np.uint8]:
    """The photo with a mask drawn on each face (or on the faces listed in ``only``)."""
    image = p.image
    for f in p.faces:
        if only is None or f.index in only:
            colour = ev.MASK_COLOURS_BGR[f.index % len(ev.MASK_COLOURS_BGR)]
            image, _ = ev.mask(image, f.face.landmarks, colour)
    return image


def view_embeddings(engine: FaceEngine, photos: Sequence[PhotoFaces]) -> dict[str, np.ndarray]:
    """Per view name, (n_faces_total, dim) embeddings in the order of the flattened faces."""
    views: dict[str, list[tuple[npt.NDArray[np.uint8], list[DetectedFace]]]] = {
        v: [] for v in ("orig", *VIEWS, "mask")
    }
    for p in photos:
        faces = [f.face for f in p.faces]
        views["orig"].append((p.image, faces))
        views["mask"].append((masked_photo(p), faces))
        for f in p.faces:
            lm = f.face.landmarks
            for name, fn in (("flip", ev.flip), ("dark", ev.darken), ("small", ev.shrink)):
                img, pts = fn(p.image, lm)
                views[name].append((img, [_with_landmarks(f.face, pts)]))
            img, pts = ev.darken(*ev.shrink(*ev.flip(p.image, lm)))  # far back, dim, mirrored
            views["far"].append((img, [_with_landmarks(f.face, pts)]))
    return {v: np.concatenate(engine.embed_photos(items)) for v, items in views.items()}


def verification(
    photos: Sequence[PhotoFaces], emb: dict[str, np.ndarray], metric: Metric
) -> dict[str, Any]:
    """Genuine (real, augmented, masked) and impostor distances, TAR at FAR 1e-3, EER."""
    flat = [f for p in photos for f in p.faces]
    pos = {(f.photo, f.index): i for i, f in enumerate(flat)}
    orig = emb["orig"]

    def d(a: np.ndarray, b: np.ndarray) -> float:
        return float(ev.pair_distances(a[None], b[None], metric)[0])

    real = [
        d(orig[i], orig[j])
        for i, j in itertools.combinations(range(len(flat)), 2)
        if flat[i].group is None and flat[i].identity == flat[j].identity
    ]
    aug = [d(orig[i], emb[v][i]) for i in range(len(flat)) for v in VIEWS]
    masked = [d(orig[i], emb["mask"][i]) for i in range(len(flat))]
    impostor = []
    for i, j in itertools.permutations(range(len(flat)), 2):
        a, b = flat[i], flat[j]
        same_group = a.group is not None and a.group == b.group
        known_apart = a.group is None and b.group is None and a.identity != b.identity
        if not (same_group or known_apart):
            continue
        if i < j:
            impostor.append(d(orig[i], orig[j]))
        if same_group:  # a changed view of one person against another person
            impostor.extend(d(emb[v][i], orig[j]) for v in (*VIEWS, "mask"))
    del pos
    out: dict[str, Any] = {
        "pairs": {
            "real": len(real),
            "augmented": len(aug),
            "masked": len(masked),
            "impostor": len(impostor),
        }
    }
    for kind, genuine in (("real", real), ("augmented", aug), ("masked", masked)):
        tar, thr = ev.tar_at_far(genuine, impostor, FAR)
        out[f"tar_{kind}"] = tar
        out["far_threshold"] = thr
    out["eer"] = ev.equal_error_rate(real + aug, impostor)
    out["closest_impostor"] = float(min(impostor))
    out["farthest_real"] = float(max(real)) if real else None
    return out


def gallery_of(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, npt.NDArray[np.intp]]:
    """Stack per-student row blocks; offsets of each student's first row."""
    sizes = [len(r) for r in rows]
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
    return np.concatenate(rows).astype(np.float32), offsets


def trials(
    engine: FaceEngine,
    photos: Sequence[PhotoFaces],
    emb: dict[str, np.ndarray],
    metric: Metric,
) -> dict[str, list[ev.Trial]]:
    """The roll calls: per group photo, enrol k of n people (from other views of their faces),
    then identify with them blacked out (absent), untouched (present) and masked."""
    flat = [f for p in photos for f in p.faces]
    index = {(f.photo, f.index): i for i, f in enumerate(flat)}
    out: dict[str, list[ev.Trial]] = {"absent": [], "present": [], "masked": []}
    for p in photos:
        n = len(p.faces)
        if p.faces[0].group is None or n < 3:
            continue
        k = max(1, n // 2)
        combos = list(itertools.combinations(range(n), k))
        step = max(1, len(combos) // MAX_TRIALS_PER_PHOTO)
        for combo in combos[::step][:MAX_TRIALS_PER_PHOTO]:
            rows = [np.stack([emb[v][index[(p.name, i)]] for v in ENROL_VIEWS]) for i in combo]
            gallery, offsets = gallery_of(rows)
            tag = f"{p.name}:{'+'.join(map(str, combo))}"
            others = [f for f in p.faces if f.index not in combo]
            blank = ev.black_out(p.image, [p.faces[i].face.box for i in combo])
            for kind, image in (
                ("absent", blank),
                ("absent-masked", masked_photo(PhotoFaces(p.name, blank, p.faces), None)),
            ):
                probes = engine.embed(image, [f.face for f in others])
                dist = ev.distance_matrix(probes, gallery, offsets, metric)
                out["absent"].append(ev.Trial(f"{kind} {tag}", dist, (-1,) * k))
            # Enrolled from full-size views, seen far back in a dim class photo.
            probes = emb["far"][[index[(p.name, i)] for i in range(n)]]
            dist = ev.distance_matrix(probes, gallery, offsets, metric)
            out["present"].append(ev.Trial(f"present {tag}", dist, tuple(combo)))
            probes = emb["mask"][[index[(p.name, i)] for i in range(n)]]
            dist = ev.distance_matrix(probes, gallery, offsets, metric)
            out["masked"].append(ev.Trial(f"masked {tag}", dist, tuple(combo)))
    # Real photos of one person: enrol everyone known from one photo, identify another photo.
    singles = [f for f in flat if f.group is None]
    people = sorted({f.identity for f in singles})
    for probe in singles:
        sources = [f for f in singles if f is not probe]
        rows, truth_ok = [], True
        for person in people:
            own = [emb["orig"][index[(f.photo, f.index)]] for f in sources if f.identity == person]
            if not own:
                truth_ok = False
                break
            rows.append(np.stack(own[:1]))
        if not truth_ok:
            continue  # the probe's person has no other photo: nothing to enrol them from
        gallery, offsets = gallery_of(rows)
        dist = ev.distance_matrix(
            emb["orig"][[index[(probe.photo, probe.index)]]], gallery, offsets, metric
        )
        truth = tuple(0 if person == probe.identity else -1 for person in people)
        out["present"].append(ev.Trial(f"real {probe.photo}", dist, truth))
    return out


def card_dir(card_id: str) -> Path:
    """A model dir whose embedder is ``card_id`` and whose detectors are the default ones."""
    default = build_models()
    if card_id == DEFAULT_EMBEDDER:
        return default
    if card_id in SELECTABLE_EMBEDDERS:
        return default / card_id
    folder = cache_root() / "eval" / f"v{MODELS_VERSION}" / card_id
    if not (folder / EMBEDDER_CARD).is_file():
        scratch = folder.parent / f".{card_id}-scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        write_embedder(card_id, folder, scratch)
    link_detectors(default, folder)
    return folder


def grid(metric: Metric) -> tuple[list[float], list[float]]:
    if metric == "cosine":
        return [round(0.30 + 0.02 * i, 2) for i in range(31)], [
            round(0.02 * i, 2) for i in range(11)
        ]
    return [round(0.30 + 0.02 * i, 2) for i in range(26)], [round(0.02 * i, 2) for i in range(11)]


def rates(t: ev.Tally) -> dict[str, Any]:
    return {
        **dataclasses.asdict(t),
        "false_present_rate": t.false_present_rate,
        "missed_rate": t.missed_rate,
    }


def unfused(engine: FaceEngine, path: Path, threads: int) -> None:
    """Swap the engine's embedder session for one that runs ``path`` as written (``--unfused``)."""
    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    engine.embedder.session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def evaluate_card(
    card_id: str, photos: Sequence[PhotoFaces], threads: int, *, as_written: bool = False
) -> dict[str, Any]:
    folder = card_dir(card_id)
    engine = load_engine(folder, threads=threads, batch_size=16)
    card: ModelCard = load_card(folder / EMBEDDER_CARD)
    if as_written:
        unfused(engine, card.path("model", folder), threads)
    metric = cast(Metric, card.metric)
    started = time.perf_counter()
    emb = view_embeddings(engine, photos)
    result: dict[str, Any] = {"card": card_id, "metric": metric, "source": card.source}
    result["unfused"] = as_written
    result["licence"] = card.licence
    result.update(verification(photos, emb, metric))
    sets = trials(engine, photos, emb, metric)
    everything = [t for ts in sets.values() for t in ts]
    assert card.threshold is not None
    margin = float(getattr(card, "margin", None) or 0.0)
    result["card_threshold"], result["card_margin"] = card.threshold, margin
    for label, thr, m in (
        ("rates_card", card.threshold, margin),
        ("rates_card_greedy", card.threshold, None),
    ):
        result[label] = {k: rates(ev.run_rule(v, thr, m, metric)) for k, v in sets.items()}
    if card_id in BEFORE:
        result["before"] = {
            "threshold": BEFORE[card_id],
            "rates": {
                k: rates(ev.run_rule(v, BEFORE[card_id], None, metric)) for k, v in sets.items()
            },
        }
    thresholds, margins = grid(metric)
    try:
        t, m, _ = ev.choose_operating_point(everything, thresholds, margins, metric)
        result["chosen"] = {"threshold": t, "margin": m}
        result["chosen_rates"] = {k: rates(ev.run_rule(v, t, m, metric)) for k, v in sets.items()}
        result["chosen_greedy"] = {
            k: rates(ev.run_rule(v, t, None, metric)) for k, v in sets.items()
        }
    except ValueError:
        result["chosen"] = None
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _roll(r: dict[str, Any]) -> str:
    absent = r["absent"]
    present, masked = r["present"], r["masked"]
    return (
        f"{absent['false_present']}/{absent['absent']} | "
        f"{present['missed']}/{present['present']} | {present['wrong_face'] + masked['wrong_face']} | "
        f"{masked['missed']}/{masked['present']}"
    )


def table(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table (one row per card and rule)."""
    head = (
        "| card | rule | threshold | margin | absent marked present | present missed "
        "| wrong face | masked missed | TAR@FAR1e-3 real / aug / masked | EER "
        "| farthest real / closest impostor |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        tar = f"{_pct(r['tar_real'])} / {_pct(r['tar_augmented'])} / {_pct(r['tar_masked'])}"
        real = "-" if r["farthest_real"] is None else f"{r['farthest_real']:.3f}"
        gap = f"{real} / {r['closest_impostor']:.3f}"
        lines = [
            ("card's", r["card_threshold"], r["card_margin"], r["rates_card"]),
            ("greedy, no margin", r["card_threshold"], "-", r["rates_card_greedy"]),
        ]
        if r.get("before"):
            b = r["before"]
            lines.append(("before #10 (greedy)", b["threshold"], "-", b["rates"]))
        if r.get("chosen"):
            c = r["chosen"]
            lines.append(("chosen here", c["threshold"], c["margin"], r["chosen_rates"]))
            lines.append(("chosen, no margin", c["threshold"], "-", r["chosen_greedy"]))
        for rule, thr, m, rr in lines:
            rows.append(
                f"| {r['card']} | {rule} | {thr} | {m} | {_roll(rr)} | {tar} | {_pct(r['eer'])} "
                f"| {gap} |"
            )
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", default=",".join(EMBEDDERS), help="card ids, comma-separated")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="embedders' graphs as written, optimisations off (int8: no fused int8 kernels)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    detector_engine = load_engine(build_models(), threads=args.threads)
    photos = detect_all(detector_engine)
    n_faces = sum(len(p.faces) for p in photos)
    mode = ", graphs as written (--unfused)" if args.unfused else ""
    print(
        f"# Embedder evaluation (models v{MODELS_VERSION}, detector "
        f"{detector_engine.detector_card.id}{mode})\n"
    )
    print(f"{len(photos)} photos, {n_faces} faces:")
    for p in photos:
        source = next(s for name, _, s in PHOTOS if name == p.name)
        print(f"- {p.name}: {len(p.faces)} face(s), {source}")
    results = [
        evaluate_card(c, photos, args.threads, as_written=args.unfused)
        for c in args.cards.split(",")
        if c
    ]
    r0 = results[0]["pairs"]
    print(
        f"\nPairs: {r0['real']} real genuine, {r0['augmented']} augmented genuine "
        f"(flip, dark, small, far = all three), {r0['masked']} masked genuine, {r0['impostor']} impostor "
        f"(FAR 1e-3 with fewer than 1000 impostors means none accepted).\n"
        "Roll call columns count students: absent marked present = false present / absent; "
        "present missed = missed / present (untouched photo and real cross-photo trials); "
        "wrong face = marked present through someone else's face; masked missed = masked "
        "students not marked (unsure is the right answer for many).\n"
    )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"default": DEFAULT_EMBEDDER, "cards": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
