"""An erase wins over a running job even where it finds nothing to remove (real Redis, API code).

The erase of a student first leaves a tombstone in the class's tombstone hash; a job of the class
running meanwhile reads the tombstones after it publishes (``rollcall_job.recheck``). The cases
the gallery re-read alone cannot catch: a roster id with no template the job holds (not enrolled,
or enrolled only with another model), and a student enrolled for the first time, whose template
the job's put writes after the erase looked. The job is the real entry point (``run``) with the
toy engine; the erase is the API's own (``rollcall_api.erasure``), landing at the job's first
detection, between its tombstone read and its put, or just before its publish. Every stored
result is checked with the API's own test of naming (``erasure.mentions``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis

from rollcall_api.erasure import Erasure, mentions
from rollcall_contract import keys
from rollcall_contract.jobenv import JobSettings
from rollcall_job.__main__ import run
from rollcall_job.gallery import GalleryMeta, GalleryNotFound, GalleryStore, unpack
from rollcall_job.pipeline import BadInput
from test_erase_running_job import CLASS, TENANT, erase_class
from test_erase_running_job import erase as erase_student
from test_erase_running_job import stored as stored_or_none
from toyfaces import ToyEngine, photo, save

pytestmark = pytest.mark.redis

META = GalleryMeta("toy-v1", 3, "cosine")
OTHER = GalleryMeta("other-v1", 3, "cosine")  # another model's gallery of the same class
ERASED = "dee"


def erase(url: str) -> Erasure:
    """The API's erase of ``ERASED`` in the class (DELETE /v1/classes/6B/students/dee)."""
    return erase_student(url, ERASED)


def stored(client: redis.Redis, uid: str) -> dict[str, str]:
    return stored_or_none(client, uid) or {}


def templates_of(client: redis.Redis, student: str) -> list[str]:
    """Every gallery hash of the school holding ``student`` (any class, any model)."""
    found = client.scan_iter(match=f"{keys.tenant_prefix(TENANT)}gallery:{{*", _type="hash")
    return sorted(k.decode() for k in found if client.hexists(k, student))


def enrol_folder(root: Path, students: list[str]) -> Path:
    for sid in students:
        save(root / sid / "1.png", photo([(sid, 10, 10, 60)]))
    return root


@dataclass
class Rig:
    """The class with ann, bob and cy enrolled (toy model, a real enrol job); runs jobs of it
    through the real entry point, with the API's erase of ``ERASED`` at one of a job's seams."""

    engine: ToyEngine
    url: str
    client: redis.Redis
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    done: list[Erasure] = field(default_factory=list)
    eraser: Callable[[str], Erasure] = erase

    def run(
        self,
        mode: str,
        uid: str,
        folder: Path,
        roster: Sequence[str] = (),
        erase_at: str = "",
        submitted_at: datetime | None = None,
    ) -> dict[str, Any]:
        settings = self.settings(mode, uid, folder, roster, submitted_at)
        seams = self._erasing_at(erase_at)
        summary, _ = run(settings, engine_loader=lambda s, px: self.engine, **seams)
        return summary

    def settings(
        self,
        mode: str,
        uid: str,
        folder: Path,
        roster: Sequence[str] = (),
        submitted_at: datetime | None = None,
    ) -> JobSettings:
        return JobSettings(
            job_namespace=TENANT,
            job_name=f"rj-{uid}",
            job_uid=uid,
            mode=mode,
            class_code=CLASS,
            gallery=CLASS,
            roster=list(roster),
            input_dir=folder,
            redis_url=self.url,
            progress_interval_seconds=0,
            termination_log=self.tmp / f"term-{uid}",
            submitted_at=submitted_at,
        )

    def _once(self) -> None:
        if not self.done:
            self.done.append(self.eraser(self.url))

    def _erasing_at(self, where: str) -> dict[str, Any]:
        """Arrange the erase at ``where``; returns ``run``'s seams."""
        if where == "detect":
            detect = self.engine.detect

            def erasing_detect(image: Any) -> Any:
                self._once()
                return detect(image)

            self.monkeypatch.setattr(self.engine, "detect", erasing_detect)
        elif where == "put":  # after the job's last tombstone read before the put: the put writes
            put = GalleryStore.put

            def erasing_put(store: GalleryStore, *args: Any, **kwargs: Any) -> set[str]:
                self._once()
                return put(store, *args, **kwargs)

            self.monkeypatch.setattr(GalleryStore, "put", erasing_put)
        elif where == "before_publish":
            return {"before_publish": self._once}
        return {}


@pytest.fixture
def rig(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Rig:
    out = Rig(ToyEngine(), redis_url, redis_client, tmp_path, monkeypatch)
    out.run("enroll", "enrol-0", enrol_folder(tmp_path / "e0", ["ann", "bob", "cy"]))
    return out


# --- identify: roster ids the job holds no template of ------------------------------------------


@pytest.mark.parametrize("where", ["detect", "before_publish"])
@pytest.mark.parametrize("enrolment", ["none", "other_model", "held"])
def test_an_identify_job_drops_a_roster_id_erased_while_it_ran(
    rig: Rig, caplog: pytest.LogCaptureFixture, enrolment: str, where: str
) -> None:
    """dee is on the roster and: enrolled nowhere (not_enrolled), enrolled only with another
    model (the job does not hold them), or enrolled with the job's (held: the gallery re-read
    already caught that). Erased while the job runs, dee must leave no trace in the stored
    result: not on the roster, not absent, not not_enrolled; the others' marks unchanged."""
    if enrolment == "other_model":
        GalleryStore(rig.client, TENANT).put(CLASS, OTHER, {ERASED: [[0.0, 1.0, 1.0]]})
    elif enrolment == "held":
        rig.run("enroll", "enrol-dee", enrol_folder(rig.tmp / "e1", [ERASED]))
    folder = rig.tmp / "class"
    save(folder / "1.png", photo([("ann", 10, 10, 40), ("bob", 100, 10, 40)]))
    roster = ["ann", "bob", "cy", ERASED]
    with caplog.at_level(logging.INFO, logger="rollcall_job"):
        summary = rig.run("identify", "id-1", folder, roster, erase_at=where)
    assert rig.done[0].templates == (0 if enrolment == "none" else 1)
    fields = stored(rig.client, "id-1")
    assert fields and not mentions(fields, ERASED)
    att = json.loads(fields["attendance"])
    assert sorted(p["student"] for p in att["present"]) == ["ann", "bob"]
    assert (att["absent"], att["not_enrolled"]) == (["cy"], [])
    assert (summary["roster"], summary["erased_while_running"]) == (3, 1)
    assert not templates_of(rig.client, ERASED)
    for r in caplog.records:  # counts only: no line names the erased student
        assert ERASED not in r.getMessage() and ERASED not in json.dumps(vars(r), default=str)


def test_an_erase_before_the_job_began_is_not_while_it_ran(rig: Rig) -> None:
    """Without the RJ's submission time (a Job built by an operator from before it), the job's
    first read of the tombstones is where "while it ran" starts (recheck's docstring): a roster
    given after (or queued before) the erase names the id anew."""
    erase(rig.url)
    folder = rig.tmp / "class"
    save(folder / "1.png", photo([("ann", 10, 10, 40)]))
    summary = rig.run("identify", "id-2", folder, ["ann", ERASED])
    assert json.loads(stored(rig.client, "id-2")["attendance"])["not_enrolled"] == [ERASED]
    assert summary["erased_while_running"] == 0


# --- erased after the RJ's submission, before its pod's first read ------------------------------


def ago(seconds: float) -> datetime:
    """A creationTimestamp ``seconds`` ago (negative: to come), whole seconds as the apiserver's."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).replace(microsecond=0)


@pytest.mark.parametrize("enrolment", ["none", "held"])
def test_an_erase_while_the_rj_was_queued_wins_over_its_job(
    rig: Rig, caplog: pytest.LogCaptureFixture, enrolment: str
) -> None:
    """The RJ was submitted a minute ago (queued behind the GPU cap, or its first pod failed);
    dee was erased since, before the job's pod started. The erase's results scan is over before
    the job publishes, so the job itself must leave no trace of dee: not on the roster, not
    absent, not not_enrolled, never named by a publish (checked at the seam before the first)."""
    if enrolment == "held":
        rig.run("enroll", "enrol-dee", enrol_folder(rig.tmp / "e1", [ERASED]))
    rig.done.append(erase(rig.url))
    folder = rig.tmp / "class"
    save(folder / "1.png", photo([("ann", 10, 10, 40), ("bob", 100, 10, 40)]))
    first: list[bool] = []

    def seen_at_first_publish() -> None:  # the staged documents, as they are renamed into place
        staged = rig.client.scan_iter(match=f"{keys.job_results(TENANT, 'id-q')}:staging:*")
        found = cast(dict[bytes, bytes], rig.client.hgetall(next(staged)))
        raw = {k.decode(): v.decode() for k, v in found.items()}
        first.append(mentions(raw, ERASED))

    with caplog.at_level(logging.INFO, logger="rollcall_job"):
        summary, _ = run(
            rig.settings("identify", "id-q", folder, ["ann", "bob", "cy", ERASED], ago(60)),
            engine_loader=lambda s, px: rig.engine,
            before_publish=seen_at_first_publish,
        )
    fields = stored(rig.client, "id-q")
    assert fields and not mentions(fields, ERASED) and first == [False]
    att = json.loads(fields["attendance"])
    assert sorted(p["student"] for p in att["present"]) == ["ann", "bob"]
    assert (att["absent"], att["not_enrolled"]) == (["cy"], [])
    assert (summary["roster"], summary["erased_while_running"]) == (3, 1)
    for r in caplog.records:  # counts only: no line names the erased student
        assert ERASED not in r.getMessage() and ERASED not in json.dumps(vars(r), default=str)


def test_an_erase_before_the_rj_was_submitted_does_not_count(rig: Rig) -> None:
    """Erased, then (more than the clock margin later) an RJ naming dee submitted: its roster
    names dee anew, as before."""
    erase(rig.url)
    folder = rig.tmp / "class"
    save(folder / "1.png", photo([("ann", 10, 10, 40)]))
    summary = rig.run("identify", "id-3", folder, ["ann", ERASED], submitted_at=ago(-5))
    assert json.loads(stored(rig.client, "id-3")["attendance"])["not_enrolled"] == [ERASED]
    assert summary["erased_while_running"] == 0


@pytest.mark.parametrize("mode", ["identify", "enroll"])
def test_a_job_starting_a_day_after_its_submission_refuses_to_run(rig: Rig, mode: str) -> None:
    """An erase made while the RJ waited may have left the tombstones by now: the job cannot
    know, so it does nothing (bad input: submit a new RJ) rather than name or enrol the student."""
    folder = rig.tmp / "late"
    save(folder / "ann" / "1.png" if mode == "enroll" else folder / "1.png",
         photo([("ann", 10, 10, 40)]))  # fmt: skip
    gallery = keys.gallery(TENANT, CLASS, META.model_id)
    templates = rig.client.hgetall(gallery)
    with pytest.raises(BadInput, match="submit a new RJ"):
        rig.run(mode, f"late-{mode}", folder, ["ann"], submitted_at=ago(24 * 3600 + 60))
    assert stored_or_none(rig.client, f"late-{mode}") is None  # nothing published
    assert rig.client.hgetall(gallery) == templates  # nothing enrolled


# --- enrol: a student's first enrolment ---------------------------------------------------------


@pytest.mark.parametrize("where", ["detect", "put", "before_publish"])
def test_an_erase_wins_over_a_first_enrolment_under_way(rig: Rig, where: str) -> None:
    """dee has no template when the enrol job starts (beside eve, also new, and ann again). The
    erase lands before the put (at the first detection: the job's tombstone read before its put
    sees it; or just before the put, after that read: the put writes dee, the read after the
    publish sees the tombstone and the job removes the template itself, as the erase found
    none) or after the put (the erase removes it). No gallery holds dee after the job, the
    stored result does not name dee, the others are enrolled."""
    folder = enrol_folder(rig.tmp / "e2", ["ann", ERASED, "eve"])
    summary = rig.run("enroll", "enrol-1", folder, erase_at=where)
    assert rig.done[0].templates == (1 if where == "before_publish" else 0)
    assert not templates_of(rig.client, ERASED)
    ids = GalleryStore(rig.client, TENANT).load(CLASS, META).student_ids
    assert set(ids) == {"ann", "bob", "cy", "eve"}
    fields = stored(rig.client, "enrol-1")
    assert fields and not mentions(fields, ERASED) and mentions(fields, "eve")
    assert (summary["erased_while_running"], summary["enrolled"], summary["students"]) == (1, 2, 2)


def test_an_erase_before_an_enrolment_began_does_not_stop_it(rig: Rig) -> None:
    """Erase, then enrol again (a fresh start for the student): the enrolment stands."""
    erase(rig.url)
    summary = rig.run("enroll", "enrol-2", enrol_folder(rig.tmp / "e3", [ERASED]))
    assert templates_of(rig.client, ERASED) == [keys.gallery(TENANT, CLASS, META.model_id)]
    assert summary["erased_while_running"] == 0
    assert mentions(stored(rig.client, "enrol-2"), ERASED)


# --- enrol: the whole class erased -------------------------------------------------------------


def class_keys_left(client: redis.Redis) -> list[str]:
    """Every key of any model's gallery of the class (hash, meta, packed)."""
    found = client.scan_iter(match=keys.gallery_match(TENANT, CLASS) + "*")
    return sorted(k.decode() for k in found)


@pytest.mark.parametrize("where", ["queued", "detect", "put", "before_publish"])
def test_a_class_erase_wins_over_an_enrolment_under_way(rig: Rig, where: str) -> None:
    """The class gallery (ann, bob, cy) is erased while an enrol job of ann again, dee and eve
    (new) is queued (submitted a minute before, started after), at its first detection, after
    its last tombstone read before the put (the put writes a new gallery: the job withdraws it),
    or just before its publish (the erase deletes what the put wrote). After the job, no gallery
    of the class holds a template, none is left (no empty gallery either), and the result names
    no folder."""
    rig.eraser = erase_class
    submitted = None
    if where == "queued":
        rig.done.append(erase_class(rig.url))
        submitted = ago(60)
    folder = enrol_folder(rig.tmp / "e5", ["ann", ERASED, "eve"])
    summary = rig.run("enroll", "enrol-5", folder, erase_at=where, submitted_at=submitted)
    assert rig.done[0].templates == (5 if where == "before_publish" else 3)
    for s in ("ann", "bob", "cy", ERASED, "eve"):
        assert not templates_of(rig.client, s)
    assert class_keys_left(rig.client) == []
    with pytest.raises(GalleryNotFound):
        GalleryStore(rig.client, TENANT).load(CLASS, META)
    fields = stored(rig.client, "enrol-5")
    assert fields and not any(mentions(fields, s) for s in ("ann", ERASED, "eve"))
    assert (summary["erased_while_running"], summary["enrolled"], summary["students"]) == (3, 0, 0)


def test_a_class_erase_before_an_enrolment_was_submitted_does_not_stop_it(rig: Rig) -> None:
    """Class erased, then (more than the clock margin later) an enrolment submitted: it stands."""
    erase_class(rig.url)
    summary = rig.run(
        "enroll", "enrol-6", enrol_folder(rig.tmp / "e6", ["ann"]), submitted_at=ago(-5)
    )
    assert summary["enrolled"] == 1 and summary["erased_while_running"] == 0
    assert GalleryStore(rig.client, TENANT).load(CLASS, META).student_ids == ("ann",)


# --- the job's undo of its own put --------------------------------------------------------------


def test_withdraw_removes_only_the_templates_this_put_wrote(redis_client: redis.Redis) -> None:
    store = GalleryStore(redis_client, TENANT)
    rows = {"ann": [[1.0, 0.0, 0.0]], "bob": [[0.0, 1.0, 0.0]], "cy": [[0.0, 0.0, 1.0]]}
    store.put(CLASS, META, rows)
    # bob enrolled again since (other bytes): left alone; ann and cy as written: removed
    store.put(CLASS, META, {"bob": [[0.0, 0.9, 0.1]]})
    assert store.withdraw(CLASS, META, {s: rows[s] for s in ("ann", "bob", "cy")}) == {"ann", "cy"}
    gkey, mkey, pkey = (
        keys.gallery(TENANT, CLASS, META.model_id),
        keys.gallery_meta(TENANT, CLASS, META.model_id),
        keys.gallery_packed(TENANT, CLASS, META.model_id),
    )
    # the packed copy matches the hash and the meta's stamp, so a job trusts it
    stamp = cast(bytes, redis_client.hget(mkey, "updated")).decode()
    packed = unpack(cast(bytes, redis_client.get(pkey)), META, stamp, redis_client.hlen(gkey))
    assert packed is not None and packed.student_ids == ("bob",)
    np.testing.assert_allclose(packed.embeddings, [[0.0, 0.9, 0.1]], rtol=1e-6)
    # the last one: no gallery left (no meta, no packed copy), as after a class erase
    assert store.withdraw(CLASS, META, {"bob": [[0.0, 0.9, 0.1]]}) == {"bob"}
    assert not redis_client.exists(gkey, mkey, pkey)
    with pytest.raises(GalleryNotFound):
        store.load(CLASS, META)
    assert store.withdraw(CLASS, META, {"bob": [[0.0, 0.9, 0.1]]}) == set()
