"""Label and annotation names every component writes or selects on, spelled once.

RJs (made by the API) and Jobs (made by the operator) carry the same class and mode labels, so one
selector finds both.
"""

from __future__ import annotations

import re

PART_OF = "rollcall"
MANAGED_BY = "app.kubernetes.io/managed-by"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"

CLASS = "rollcall.io/class"
MODE = "rollcall.io/mode"
RJ_NAME = "rollcall.io/rj-name"
RJ_UID = "rollcall.io/rj-uid"
# On the Job: the model card it runs (the RJ's spec.model, or the cluster's for "default"); the
# operator copies it into the RJ's status.model when it folds the Job.
MODEL = "rollcall.io/model"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

ANNOTATION_RJ = "rollcall.io/recognitionjob"
ANNOTATION_SCHOOL = "rollcall.io/school"
ANNOTATION_REQUEST_ID = "rollcall.io/request-id"

MANAGER_API = "rollcall-api"
MANAGER_OPERATOR = "rollcall-operator"

_MAX = 63
_VALID = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def is_label_value(value: str) -> bool:
    """True when ``value`` is a valid label value as it is (≤63, alphanumeric at both ends)."""
    return len(value) <= _MAX and bool(_VALID.fullmatch(value))


def label_value(value: str) -> str:
    """A value safe as a label value: invalid characters become ``-``, cut to 63, ends trimmed."""
    cut = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:_MAX]
    return cut.strip("._-")
