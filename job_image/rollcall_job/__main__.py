"""``python -m rollcall_job`` / ``rollcall-job``: the recognition container's entry point.

Reads ``JobSettings`` from the ROLLCALL_* environment the operator renders, runs identify or enroll,
publishes results atomically, writes a <= 4 KiB JSON summary to the termination log and exits with a
``contract.ExitCode``: BAD_INPUT when retrying cannot help (the Job's podFailurePolicy fails the Job
at once), TRANSIENT when it can (Redis unreachable; after recognition only once the write phase's
own retries are spent, ``writeretry``), 1 for anything unexpected (retried up to the
Job's backoffLimit). Logs are JSON lines on stdout with counts and timings only: no embeddings, no
secrets (the Redis URL's password is redacted).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from rollcall_contract import keys, logs, redisclient
from rollcall_contract.jobenv import TERMINATION_LOG, ExitCode, JobSettings
from rollcall_job.enroll import EnrollOutcome, enroll, student_photos
from rollcall_job.gallery import GalleryError, GalleryNotFound, GalleryStore
from rollcall_job.photos import list_photos
from rollcall_job.pipeline import BadInput, EmbedderSpec, embedder_spec, identify, no_gallery
from rollcall_job.progress import Progress, log_sink, redis_sink
from rollcall_job.protocols import Engine, ImageBGR
from rollcall_job.quality import QualityGate
from rollcall_job.recheck import erased_since, publish_checked, too_late
from rollcall_job.results import write_results
from rollcall_job.termination import error_message, summary_message
from rollcall_job.writeretry import retrying

log = logging.getLogger("rollcall_job")
# Enroll mode looks this far down (only in photos with no face) to tell "too small" from "no face".
SMALL_FACE_FLOOR_PX = 20


def configure_logging(stream: Any = None) -> None:
    logs.configure(os.environ.get("ROLLCALL_LOG_LEVEL", "INFO"), stream=stream or sys.stdout)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user names are kept: they help debugging);
    cluster and sentinel URLs too (several hosts, a ``sentinel_password`` parameter)."""
    return redisclient.redact(url)


def resolve_model_dir(settings: JobSettings) -> Path:
    """``model`` "default" is the built-in models; any other name is a sub-folder of cards."""
    from rollcall_job.faces import default_model_dir

    base = settings.model_dir or default_model_dir()
    if settings.model in ("", "default"):
        return base
    candidate = base / settings.model
    if settings.model in (".", "..") or "/" in settings.model or not candidate.is_dir():
        raise BadInput(f"unknown model {settings.model!r}")
    return candidate


EngineLoader = Callable[[JobSettings, int], Engine[Any]]


def load_engine(settings: JobSettings, min_face_px: int) -> Engine[Any]:
    from rollcall_job.faces import load_engine as load
    from rollcall_job.models.integrity import IntegrityError

    model_dir = resolve_model_dir(settings)
    if not model_dir.is_dir():
        raise BadInput(f"model directory {model_dir} does not exist (run `make models`)")
    try:
        return load(
            model_dir,
            providers=settings.providers or None,
            threads=settings.threads,
            batch_size=settings.batch_size,
            min_face_px=min_face_px,
        )
    except IntegrityError as e:  # a corrupt or swapped model file: a retry reads the same bytes
        raise BadInput(str(e)) from None


def _attempt() -> str:
    """Unique per try of the Job: the pod name (HOSTNAME) and the process id."""
    return f"{os.environ.get('HOSTNAME', 'local')}-{os.getpid()}"


def redis_client(url: str, ca_file: Path | None = None) -> redis.Redis:
    """Bounded connect/read timeouts (a hung Redis becomes TRANSIENT, not a stuck Job); a 1 MiB
    read buffer, because a class gallery arrives as one multi-megabyte reply; TLS with ``ca_file``."""
    return redisclient.sync_client(
        url, ca_file, socket_connect_timeout=5, socket_timeout=60, socket_read_size=1 << 20
    )


def check_names(settings: JobSettings) -> None:
    """Every key this job touches is under its own namespace (``ROLLCALL_JOB_NAMESPACE``, set by
    the operator from the RJ's metadata, never from a spec field); refuse names keys would refuse."""
    try:
        keys.gallery_match(settings.job_namespace, settings.gallery)
        keys.job_progress(settings.job_namespace, settings.job_uid)
    except ValueError as e:
        raise BadInput(str(e)) from None


def run(
    settings: JobSettings,
    *,
    engine_loader: EngineLoader = load_engine,
    before_publish: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], str]:
    """Do the job; returns (summary, results key). Raises BadInput / redis errors / anything.

    ``before_publish``: a test seam, run once just before the first results publish (RENAME).
    """
    if settings.mode not in ("identify", "enroll"):
        raise BadInput(f"unknown mode {settings.mode!r}")
    check_names(settings)
    if not settings.input_dir.is_dir():
        raise BadInput(f"input directory {settings.input_dir} does not exist")
    if too_late(_submitted_ms(settings), int(time.time() * 1000)):
        raise BadInput(
            f"the RJ was submitted at {settings.submitted_at}, over "
            f"{keys.ERASED_START_WITHIN_SECONDS // 3_600} h ago: an erase made since may no longer "
            "be on record, so this job does not run; submit a new RJ"
        )
    try:
        client = redis_client(settings.redis_url, settings.redis_ca_file)
    except ValueError as e:  # a CA file with a plain redis:// URL: fix the settings
        raise BadInput(str(e)) from None
    try:
        client.ping()  # fail fast (TRANSIENT) before seconds of model loading
        # erases recorded from here on are "while the job ran", and with the RJ's submission
        # time those stamped after it too (recheck: the ordering argument)
        began = GalleryStore(client, settings.job_namespace).tombstones(settings.gallery)
        if settings.mode == "enroll":
            return _enroll(settings, client, engine_loader, began, before_publish)
        return _identify(settings, client, engine_loader, began, before_publish)
    finally:
        client.close()


def _progress(settings: JobSettings, client: redis.Redis, total: int) -> Progress:
    sink = redis_sink(client, settings.job_namespace, settings.job_uid, settings.result_ttl_seconds)
    progress = Progress(total, [sink, log_sink()], interval=settings.progress_interval_seconds)
    progress.start()
    return progress


def _erased_since(
    settings: JobSettings,
    store: GalleryStore,
    began: Mapping[str, str],
    *,
    class_wide: bool = False,
) -> Callable[[Sequence[str]], set[str]]:
    """Which of some ids were erased since the RJ was submitted (tombstones read now vs ``began``
    and the submission time: ``recheck.erased_since``); ``class_wide``: all of them once the
    class's gallery was erased so."""
    submitted_ms = _submitted_ms(settings)
    return lambda ids: erased_since(
        began, store.tombstones(settings.gallery), ids, submitted_ms, class_wide=class_wide
    )


def _submitted_ms(settings: JobSettings) -> int | None:
    at = settings.submitted_at
    return None if at is None else int(at.timestamp() * 1000)


def _identify(
    settings: JobSettings,
    client: redis.Redis,
    engine_loader: EngineLoader,
    began: Mapping[str, str],
    before_publish: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], str]:
    photos = list_photos(settings.input_dir)
    if not photos:
        raise BadInput(f"no photos in {settings.input_dir}")
    engine = engine_loader(settings, settings.min_face_px)
    spec = embedder_spec(engine.embedder_card, settings.threshold, settings.margin)
    try:
        gallery = GalleryStore(client, settings.job_namespace).load(
            settings.gallery, spec.meta, settings.roster or None
        )
    except GalleryNotFound as e:  # e.g. a new default model: the class must be enrolled again
        raise no_gallery(settings.class_code, settings.gallery, spec.meta.model_id) from e
    if len(gallery) == 0:
        raise BadInput(f"gallery {settings.gallery!r} has none of the roster enrolled")
    if settings.annotate and settings.output_dir is None:
        log.warning("annotate is on but no output dir is set: no annotated copies")
    progress = _progress(settings, client, len(photos))
    result = identify(
        engine,
        photos,
        gallery,
        roster=settings.roster,
        threshold=spec.threshold,
        margin=spec.margin,
        gate=QualityGate(min_face_px=settings.min_face_px),
        top_k=settings.top_k,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        annotate_dir=settings.output_dir if settings.annotate else None,
        on_photo=progress.advance,
    )
    progress.finish()
    recognised = result.decided
    del gallery, result  # from here the templates live in ``recognised`` only (dropped on erasure)
    store = GalleryStore(client, settings.job_namespace)
    publish = _publisher(settings, client, before_publish)
    tombstoned = _erased_since(settings, store, began)
    for attempt in retrying(settings.redis_retry_seconds, "publish"):
        with attempt:
            # erased before the first publish (while the RJ was queued, too): never named
            decided = recognised
            if erased := tombstoned(decided.mentioned()):
                decided = decided.without(erased)
            decided, key, _ = publish_checked(
                decided,
                publish,
                lambda ids: store.enrolled(settings.gallery, spec.meta.model_id, ids),
                tombstoned,
            )
    result = decided.outcome()
    summary: dict[str, Any] = result.documents["summary"]
    if result.photos_ok == 0:
        raise BadInput("no photo could be read: " + _first_reasons(summary))
    return summary, key


def _publisher(
    settings: JobSettings, client: redis.Redis, before_publish: Callable[[], None] | None
) -> Callable[[Mapping[str, Any]], str]:
    """Publishes documents as this job's results (``write_results``); ``before_publish`` is run
    before the first publish only."""
    seam = [before_publish]

    def publish(documents: Mapping[str, Any]) -> str:
        hook, seam[0] = seam[0], None
        return write_results(
            client,
            settings.job_namespace,
            settings.job_uid,
            _attempt(),
            documents,
            ttl_seconds=settings.result_ttl_seconds,
            before_publish=hook,
            replicas=redisclient.parse(settings.redis_url).replicas,
        )

    return publish


def _enroll(
    settings: JobSettings,
    client: redis.Redis,
    engine_loader: EngineLoader,
    began: Mapping[str, str],
    before_publish: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], str]:
    engine = engine_loader(settings, settings.min_face_px)
    spec = embedder_spec(engine.embedder_card, settings.threshold)
    store = GalleryStore(client, settings.job_namespace)
    existing = store.meta(settings.gallery, spec.meta.model_id)
    if existing is not None:
        existing.check(spec.meta)  # refuse before minutes of work, not after
    fine: list[Engine[Any]] = []

    def small_faces(image: ImageBGR) -> int:
        if not fine:  # loaded on the first faceless photo only
            fine.append(engine_loader(settings, min(settings.min_face_px, SMALL_FACE_FLOOR_PX)))
        return len(fine[0].detect(image))

    by_student = student_photos(settings.input_dir)
    total = sum(len(p) for p in by_student.values())
    # who is enrolled now: one of them gone by the put was erased meanwhile (``GalleryStore.put``)
    held = (
        set()
        if existing is None
        else store.enrolled(settings.gallery, spec.meta.model_id, list(by_student))
    )
    progress = _progress(settings, client, total)
    outcome = enroll(
        engine,
        settings.input_dir,
        metric=spec.meta.metric,
        model_id=spec.meta.model_id,
        min_face_px=settings.min_face_px,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        small_faces=small_faces,
        on_photo=progress.advance,
    )
    progress.finish()
    # a class-wide erase since the RJ's submission counts every folder as erased
    tombstoned = _erased_since(settings, store, began, class_wide=True)
    publish = _publisher(settings, client, before_publish)
    for attempt in retrying(settings.redis_retry_seconds, "enrol"):
        with attempt:
            summary, key = _write_enrolment(
                settings, client, store, spec, outcome, held, tombstoned, publish
            )
    if not outcome.students:
        raise BadInput("no student could be enrolled: " + _first_reasons(summary))
    return summary, key


def _write_enrolment(
    settings: JobSettings,
    client: redis.Redis,
    store: GalleryStore,
    spec: EmbedderSpec,
    outcome: EnrollOutcome,
    held: set[str],
    tombstoned: Callable[[Sequence[str]], set[str]],
    publish: Callable[[Mapping[str, Any]], str],
) -> tuple[dict[str, Any], str]:
    """Write an enrolment's templates and publish its result, from the start each time it runs
    (``writeretry``): who was erased is read again, the put and the publish are idempotent."""
    # erased so far (a tombstone since the RJ's submission): not written at all
    erased = tombstoned(outcome.enrolled.mentioned())
    students = {s: e for s, e in outcome.students.items() if s not in erased}
    replicas = redisclient.parse(settings.redis_url).replicas
    if students:
        erased |= store.put(settings.gallery, spec.meta, students, held=held)
        # the results' WAIT counts their own primary's replicas: on a cluster the gallery's may
        # be another, so confirm it now, before any result says "enrolled"
        results_key = keys.job_results(settings.job_namespace, settings.job_uid)
        gallery_key = keys.gallery(settings.job_namespace, settings.gallery, spec.meta.model_id)
        if not redisclient.same_primary(client, gallery_key, results_key):
            store.confirm(settings.gallery, spec.meta.model_id, replicas)
    written = frozenset(students) - erased
    enrolled = replace(outcome.enrolled, held=frozenset(held), written=written)
    if erased:  # left out of the put: not named by the result either
        enrolled = enrolled.without(erased)
    # re-read after publishing: a student erased after the put is named by no result that stays
    enrolled, key, _ = publish_checked(
        enrolled,
        publish,
        lambda ids: store.enrolled(settings.gallery, spec.meta.model_id, ids),
        tombstoned,
    )
    # the erase may have looked before the put and found nothing: remove what the put wrote
    undo = written - enrolled.written
    withdrawn = (
        store.withdraw(settings.gallery, spec.meta, {s: students[s] for s in undo})
        if undo
        else set()
    )
    if withdrawn:  # written after every results WAIT, on any topology: confirmed on its own
        store.confirm(settings.gallery, spec.meta.model_id, replicas)
    summary: dict[str, Any] = enrolled.documents()["summary"]
    if summary["erased_while_running"]:
        log.info(
            "students erased while the job ran are not enrolled again nor named",
            extra={"erased": summary["erased_while_running"], "withdrawn": len(withdrawn)},
        )
    return summary, key


def _first_reasons(summary: dict[str, Any]) -> str:
    failed = summary.get("failed") or []
    return ", ".join(f"{f['photo']}: {f['reason']}" for f in failed[:5]) or "no usable photo"


def _write_termination(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        log.warning("cannot write termination log %s: %s", path, e.strerror)


def main(argv: list[str] | None = None, *, engine_loader: EngineLoader = load_engine) -> int:
    configure_logging()
    term_path = Path(os.environ.get("ROLLCALL_TERMINATION_LOG", TERMINATION_LOG))
    try:
        settings = JobSettings()
    except ValidationError as e:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
        log.error("invalid job settings: %s", fields)
        _write_termination(
            term_path, error_message(f"invalid settings: {fields}", reason="BadInput")
        )
        return int(ExitCode.BAD_INPUT)
    term_path = settings.termination_log
    log.info(
        "job start",
        extra={
            "job": settings.job_name,
            "namespace": settings.job_namespace,
            "mode": settings.mode,
            "class_code": settings.class_code,
            "redis": redact_url(settings.redis_url),
        },
    )
    try:
        summary, key = run(settings, engine_loader=engine_loader)
    except (BadInput, GalleryError) as e:
        log.error("bad input: %s", e)
        _write_termination(term_path, error_message(str(e), reason="BadInput"))
        return int(ExitCode.BAD_INPUT)
    except redis.exceptions.NoPermissionError:
        # this namespace's Redis user does not cover the keys: a configuration error, not transient
        msg = "redis refused permission for this job's keys (is the Redis Secret this namespace's?)"
        log.error(msg)
        _write_termination(term_path, error_message(msg, reason="BadInput"))
        return int(ExitCode.BAD_INPUT)
    except redisclient.TRANSIENT_ERRORS as e:  # unreachable, loading, or a failover under way
        # redis-py's messages name host and port, never the password; redact anyway
        msg = f"redis unavailable ({type(e).__name__}) at {redact_url(settings.redis_url)}"
        log.error(msg)
        _write_termination(term_path, error_message(msg, reason="Transient"))
        return int(ExitCode.TRANSIENT)
    except Exception as e:
        log.exception("job failed")
        _write_termination(term_path, error_message(f"{type(e).__name__}: {e}", reason="Error"))
        return 1
    _write_termination(term_path, summary_message(summary, result_key=key))
    log.info(
        "job done",
        extra={
            "result_key": key,
            **{k: v for k, v in summary.items() if isinstance(v, int | float | str)},
        },
    )
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
