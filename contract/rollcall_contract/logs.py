"""The one log format of every rollcall component: one JSON object per line.

``{"time", "level", "logger", "message", ...extra}`` from the API, the operator and the job alike,
so one log pipeline query covers a request from submission to the job's last line. Callers pass
ids and counts in ``extra``; nothing here adds or could add face data or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

# LogRecord attributes that are not caller-supplied ``extra`` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "taskName",
}


_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)


class JsonFormatter(logging.Formatter):
    """time (UTC, ms), level, logger, message, any ``extra=`` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key == "k8s_ref" and isinstance(value, dict):
                # kopf's per-object loggers: keep which object, not kopf's internals
                out["object"] = f"{value.get('namespace') or ''}/{value.get('name') or ''}"
            elif not key.startswith("k8s_") and isinstance(value, _PLAIN):
                # plain data only: frameworks pass whole objects (kopf its settings) as extras
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(
    level: str = "info",
    *,
    json_format: bool = True,
    stream: IO[str] | None = None,
    filters: Iterable[logging.Filter] = (),
    plain_format: str = "%(asctime)s %(levelname)s %(name)s %(message)s",
) -> logging.Handler:
    """Route every logger through one handler on the root logger; returns that handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    for f in filters:
        handler.addFilter(f)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(plain_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf says "Handler ... succeeded" for every watch event at INFO: keep its warnings only
    if root.level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return handler
