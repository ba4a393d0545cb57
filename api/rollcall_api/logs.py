"""Structured (JSON) logs that carry the request id of the request being served."""

from __future__ import annotations

import logging
from contextvars import ContextVar

from rollcall_contract import logs
from rollcall_contract.logs import JsonFormatter

__all__ = ["JsonFormatter", "RequestIdFilter", "configure_logging", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("rollcall_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info", json_format: bool = True) -> None:
    """Route our and uvicorn's logs through one handler; our access log replaces uvicorn's."""
    logs.configure(
        level,
        json_format=json_format,
        filters=[RequestIdFilter()],
        plain_format="%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
    )
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
