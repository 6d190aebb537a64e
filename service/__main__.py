"""Start the API: ``python -m service`` (port from ``PORT``, default 8000)."""

from __future__ import annotations

import os

import uvicorn

from service.core.settings import get_settings


def main() -> None:
    """Serve the API with uvicorn."""
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
        log_level=os.environ.get("LOG_LEVEL", "info"),
        workers=get_settings().api_workers,
    )


if __name__ == "__main__":
    main()
