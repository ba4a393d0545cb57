"""How many faces the job loop's detect-ahead thread embeds: enough that both threads carry equal
CPU by the running estimates, never more than the photo has, none before both are known."""

from __future__ import annotations

import pytest

from rollcall_job.balance import EmbedShare


@pytest.mark.parametrize(
    ("ahead_s", "face_s", "n", "k"),
    [
        (None, 0.008, 6, 0),  # nothing known of the detect-ahead thread yet
        (0.020, None, 6, 0),  # nor of a face
        (0.020, 0.008, 6, 2),  # 640x480 frame: 20 + 2 * 8 against 4 * 8 CPU-ms
        (0.020, 0.008, 0, 0),
        (0.020, 0.008, 1, 0),  # one face: embedding it ahead would tip the balance
        (0.0, 0.008, 6, 3),  # free detection: half each
        (0.0, 0.008, 7, 4),  # round half to even: 3.5 -> 4
        (0.500, 0.008, 30, 0),  # a class photo's detection outweighs its faces
        (0.100, 0.008, 30, 9),
        (0.020, 0.0, 6, 0),
    ],
)
def test_faces_ahead(ahead_s: float | None, face_s: float | None, n: int, k: int) -> None:
    assert EmbedShare(ahead_s, face_s).faces_ahead(n) == k


def test_estimates_follow_what_each_thread_reports() -> None:
    share = EmbedShare()
    share.saw_ahead(0.020)
    share.saw_faces(0, 1.0)  # no faces: nothing learnt
    assert (share.ahead_s, share.face_s) == (0.020, None)
    share.saw_faces(4, 0.032)
    assert share.face_s == pytest.approx(0.008)
    share.saw_ahead(0.030)  # a slower photo moves the estimate part of the way
    assert share.ahead_s is not None and 0.020 < share.ahead_s < 0.030
    assert share.faces_ahead(6) in (1, 2)
