"""Start the API: ``python -m service`` (``HOST``, default 0.0.0.0; ``PORT``, default 8000)."""

from __future__ import annotations

from service.api.server import serve

if __name__ == "__main__":
    serve()
