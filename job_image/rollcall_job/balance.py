"""How many of a photo's faces the detect-ahead thread embeds itself, so the job loop's two
threads carry equal CPU.

The loop's detect-ahead thread decodes, detects, aligns and gates photo N+1 while the consumer
embeds photo N. Embedding is most of a frame's CPU (six faces at 640x480 on one thread each: 50
of 70 CPU-ms), so the consumer alone would pace the loop and the other core would idle, unless
each session took two intra-op threads, whose wake-ups cost CPU of their own. Instead the
detect-ahead thread embeds the first ``k`` faces itself and the consumer the rest, ``k`` chosen
from running estimates so that ``ahead + k * face == (n - k) * face``. Pure: the loop times
each part (thread CPU time) and reports it here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

SMOOTHING = 0.3  # weight of a new observation in the running estimates


@dataclass
class EmbedShare:
    """Running estimates: CPU seconds of the detect-ahead thread's own work per photo, and of
    embedding one face. Both threads report; a lock keeps each update whole."""

    ahead_s: float | None = None
    face_s: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def faces_ahead(self, n: int) -> int:
        """Faces of an ``n``-face photo the detect-ahead thread should embed (0 until both
        estimates exist: the first photos show what each part costs)."""
        ahead, face = self.ahead_s, self.face_s
        if n <= 0 or ahead is None or face is None or face <= 0.0:
            return 0
        k = round((n * face - ahead) / (2.0 * face))
        return min(max(k, 0), n)

    def saw_ahead(self, seconds: float) -> None:
        """The detect-ahead thread's own work on one photo took ``seconds`` of its CPU."""
        with self._lock:
            self.ahead_s = _blend(self.ahead_s, seconds)

    def saw_faces(self, faces: int, seconds: float) -> None:
        """Embedding ``faces`` faces took ``seconds`` of the calling thread's CPU."""
        if faces > 0:
            with self._lock:
                self.face_s = _blend(self.face_s, seconds / faces)


def _blend(old: float | None, new: float) -> float:
    return new if old is None else (1.0 - SMOOTHING) * old + SMOOTHING * new
