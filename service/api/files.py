"""Files a worker renders on request (plots, draws exports), served from storage.

A ``FileCall`` names its file by a digest of the call (``FileCall.file_name``). The first
request for it asks an interactive worker to write it beside the fit's results; every
later one streams the stored file, in chunks, without a worker. The file of a fit never
changes (a fit's draws are final and its id is never reused), so its name is its ETag and
clients may cache it for as long as they like.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Caller
from service.core.protocol import FileCall, FileWritten

#: A stored file is immutable; keys make it private to its owner's caches.
CACHE_CONTROL = "private, max-age=86400, immutable"


async def file_answer(
    caller: Caller,
    request: Request,
    call: FileCall,
    media_type: str,
    download_name: str | None = None,
) -> Response:
    """Serve ``call``'s file, asking a worker to write it first when it is not stored."""
    name = call.file_name()
    etag = f'"{name}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if download_name is not None:
        headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    artifacts = caller.services.artifacts

    def stored() -> tuple[int, Iterator[bytes]] | None:
        try:
            return artifacts.open_stream(call.fit_id, name)
        except FileNotFoundError:
            return None

    opened = await run_in_threadpool(stored)
    if opened is None:
        reply = await caller.services.dispatcher.call(call, caller.owner)
        written = FileWritten.model_validate_json(reply)
        opened = await run_in_threadpool(artifacts.open_stream, call.fit_id, written.name)
    size, chunks = opened
    headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type=media_type, headers=headers)
