"""Import galleries from the old in-process layout into the safe one (``gallery.GalleryStore``).

The legacy layout assumed here (one set of keys per class and period; ``{base}`` is
``{prefix}:{class_code}:{period}``, prefix ``attendance`` by default):

- ``{base}:face:{student_id}`` — sorted set: the ids of that student's embeddings (score = when
  added);
- ``{base}:features`` — hash: embedding id -> ``pickle.dumps(numpy_array)`` (the 128/512 floats);
- ``{base}:photos`` — hash: embedding id -> path of the enrolment photo it came from.

The old loader ran ``pickle.loads`` on those values: anyone able to write to Redis could run code in
the web tier. Here values go through ``safe_loads``, an unpickler whose ``find_class`` hands out
only the few numpy callables a plain numeric array needs (each wrapped to reject object dtypes and
subclasses); any other global — ``os.system``, ``builtins.eval``, ``subprocess.Popen`` — raises
before anything is called, so a malicious pickle is refused without being executed.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import redis

from rollcall_job.gallery import GalleryMeta, GalleryStore, Redis

FloatArray = npt.NDArray[np.float32]
_NUMERIC_KINDS = frozenset("biuf")


class UnsafePickle(pickle.UnpicklingError):
    """The pickle asks for something other than a plain numeric numpy array."""


def _checked_dtype(dtype: Any) -> np.dtype[Any]:
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsafePickle(f"refused non-numeric dtype {dt!r}")
    return dt


def _safe_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype[Any]:
    if not isinstance(obj, str):
        raise UnsafePickle(f"refused dtype spec of type {type(obj).__name__}")
    return _checked_dtype(obj)


_MAX_ELEMENTS = 1 << 20  # an embedding is a few hundred floats; refuse allocation bombs


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> npt.NDArray[Any]:
    if subtype is not _ALLOWED[("numpy", "ndarray")]:
        raise UnsafePickle("refused ndarray subclass")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickle("refused array shape")
    if int(np.prod(shape)) > _MAX_ELEMENTS:
        raise UnsafePickle("refused oversized array")
    return np.ndarray.__new__(np.ndarray, shape, _checked_dtype(dtype))


def _refuse(*_: Any) -> Any:
    raise UnsafePickle("numpy.ndarray may only be named, not called")


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> npt.NDArray[Any]:
    if not isinstance(buf, bytes | bytearray | pickle.PickleBuffer):
        raise UnsafePickle("refused array buffer of unexpected type")
    if len(memoryview(buf)) > 8 * _MAX_ELEMENTS:
        raise UnsafePickle("refused oversized array")
    arr = np.frombuffer(memoryview(buf), dtype=_checked_dtype(dtype))
    return arr.reshape(shape, order="F" if order == "F" else "C")


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles spell bytes as ``_codecs.encode(str, 'latin1')``; only that is allowed."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickle("refused _codecs.encode other than str -> latin1")
    return text.encode("latin1")


class _Guarded:
    """An allowed callable that a BUILD opcode cannot patch (no __dict__, no setattr)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "_fn", fn)

    _fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickle("refused attribute write on an allowed global")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickle("refused BUILD on an allowed global")


_ALLOWED: dict[tuple[str, str], _Guarded] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _Guarded(_safe_reconstruct)
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _Guarded(_safe_frombuffer)
_ALLOWED[("numpy", "ndarray")] = _Guarded(_refuse)  # a marker _safe_reconstruct accepts as subtype
_ALLOWED[("numpy", "dtype")] = _Guarded(_safe_dtype)
_ALLOWED[("_codecs", "encode")] = _Guarded(_latin1_encode)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refused global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle("refused persistent id")


def safe_loads(data: bytes) -> FloatArray:
    """Unpickle one legacy embedding: only a plain numeric array (or list of numbers) passes."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickle:
        raise
    except Exception as e:  # truncated / garbage data, bad shapes in setstate, ...
        raise UnsafePickle(f"unreadable pickle: {e!r}") from e
    if isinstance(obj, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in obj
    ):
        obj = np.asarray(obj, dtype=np.float64)
    if type(obj) is not np.ndarray or obj.dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickle(f"refused unpickled {type(obj).__name__}")
    arr = cast(npt.NDArray[Any], obj)
    return arr.astype(np.float32).reshape(-1)


@dataclass(frozen=True)
class LegacyLayout:
    prefix: str = "attendance"
    class_code: str = ""
    period: str = ""

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.class_code}:{self.period}"

    def face(self, student_id: str) -> str:
        return f"{self.base}:face:{student_id}"

    @property
    def features(self) -> str:
        return f"{self.base}:features"

    @property
    def photos(self) -> str:
        return f"{self.base}:photos"


@dataclass
class ImportReport:
    students: int = 0
    embeddings: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (student, emb id, why)
    missing: list[tuple[str, str]] = field(default_factory=list)  # ids in a zset with no feature
    skipped_students: list[str] = field(default_factory=list)  # no usable embedding at all


def _scan_students(client: Redis, layout: LegacyLayout) -> Iterator[str]:
    head = layout.face("")
    for key in client.scan_iter(match=head.replace("[", "\\[") + "*", count=1000):
        yield cast(bytes, key).decode()[len(head) :]


def read_legacy(
    client: Redis, layout: LegacyLayout, dim: int
) -> tuple[dict[str, FloatArray], ImportReport]:
    """Read and safely decode a legacy class gallery (pipelined: two round trips per batch)."""
    report = ImportReport()
    students = sorted(set(_scan_students(client, layout)))
    out: dict[str, FloatArray] = {}
    batch = 500
    for start in range(0, len(students), batch):
        chunk = students[start : start + batch]
        pipe = client.pipeline(transaction=False)
        for sid in chunk:
            pipe.zrange(layout.face(sid), 0, -1)
        id_lists = [[i.decode() for i in ids] for ids in pipe.execute()]
        flat = [i for ids in id_lists for i in ids]
        values = cast(list[bytes | None], client.hmget(layout.features, flat)) if flat else []
        pos = 0
        for sid, ids in zip(chunk, id_lists, strict=True):
            rows = []
            for emb_id in ids:
                raw = values[pos]
                pos += 1
                if raw is None:
                    report.missing.append((sid, emb_id))
                    continue
                try:
                    vec = safe_loads(raw)
                except UnsafePickle as e:
                    report.refused.append((sid, emb_id, str(e)))
                    continue
                if vec.shape != (dim,) or not np.isfinite(vec).all():
                    report.refused.append((sid, emb_id, f"shape {vec.shape}, expected ({dim},)"))
                    continue
                rows.append(vec)
            if rows:
                out[sid] = np.stack(rows)
                report.embeddings += len(rows)
            else:
                report.skipped_students.append(sid)
    report.students = len(out)
    return out, report


def import_legacy(
    client: Redis,
    layout: LegacyLayout,
    *,
    tenant: str,
    gallery: str,
    meta: GalleryMeta,
    target: Redis | None = None,
    replace: bool = True,
) -> ImportReport:
    """Convert one legacy class/period into ``gallery`` of school ``tenant`` (its namespace; all
    rows, one MULTI/EXEC on the target).

    Every legacy embedding is kept as its own row (not averaged): the matcher takes each student's
    best row, which is what the old one-vs-all loop did.
    """
    students, report = read_legacy(client, layout, meta.dim)
    GalleryStore(target or client, tenant).put(gallery, meta, students, replace=replace)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m rollcall_job.legacy``: import one class/period, print the report as JSON."""
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m rollcall_job.legacy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--from-url", required=True, help="Redis holding the legacy layout")
    ap.add_argument("--to-url", help="Redis to write the gallery to (default: --from-url)")
    ap.add_argument("--prefix", default="attendance")
    ap.add_argument("--class-code", required=True)
    ap.add_argument("--period", required=True)
    ap.add_argument("--tenant", required=True, help="the school's namespace the gallery belongs to")
    ap.add_argument("--gallery", required=True, help="gallery name to write")
    ap.add_argument(
        "--model-id",
        default="dlib-resnet-v1",
        help="embedder card id the legacy features came from",
    )
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    args = ap.parse_args(argv)
    source = redis.Redis.from_url(args.from_url)
    target = redis.Redis.from_url(args.to_url) if args.to_url else source
    report = import_legacy(
        source,
        LegacyLayout(args.prefix, args.class_code, args.period),
        tenant=args.tenant,
        gallery=args.gallery,
        meta=GalleryMeta(args.model_id, args.dim, args.metric),
        target=target,
    )
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0 if report.students else 1


if __name__ == "__main__":
    raise SystemExit(main())
