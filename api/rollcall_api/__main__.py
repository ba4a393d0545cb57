"""``rollcall-api``: serve the API with uvicorn (one worker; it never does CPU-heavy work)."""

from __future__ import annotations

import uvicorn

from rollcall_api.app import create_app
from rollcall_api.logs import configure_logging, flush_on_exit
from rollcall_api.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    flush_on_exit()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
