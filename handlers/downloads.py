"""``/v1/downloads/{token}``: stream an exported file behind a signed, expiring link.

The link is the credential, so scripts can fetch it with no Authorization header (as
they do Scroll Cloud's ``downloadUrl``). A request that does carry another tenant's
credential is refused. Range requests are honoured for resumable downloads.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Blueprint, Response, request
from werkzeug.wsgi import wrap_file

from bridge.views import attachment_disposition
from handlers.auth import bridge, optional_caller
from handlers.errors import problem

bp = Blueprint("downloads", __name__, url_prefix="/v1/downloads")


@bp.get("/<token>")
@bp.get("/<token>/<path:filename>")
def download(token: str, filename: str | None = None) -> Response:
    """Stream the file, whole or the requested byte range."""
    service = bridge().service
    _job, artifact = service.open_download(token, optional_caller())
    size = service.artifacts.size(artifact.key)
    headers = {
        "Content-Type": artifact.content_type,
        "Content-Disposition": attachment_disposition(artifact.filename),
        "Accept-Ranges": "bytes",
        "ETag": f'"{artifact.sha256}"',
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    start, length, status = 0, size, 200
    byte_range = request.range
    if_range = request.headers.get("If-Range")
    if byte_range is not None and (if_range is None or if_range.strip('"') == artifact.sha256):
        bounds = byte_range.range_for_length(size) if len(byte_range.ranges) == 1 else None
        if bounds is None:
            response = problem(
                416, "Range Not Satisfiable", f"The file has {size} bytes.", "range_not_satisfiable"
            )
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        start, stop = bounds
        length, status = stop - start, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(length)
    open_file = getattr(service.artifacts, "open_file", None)
    if status == 200 and open_file is not None:
        # A whole local file goes to the server's file wrapper: gunicorn sendfile()s it.
        body: Iterable[bytes] = wrap_file(request.environ, open_file(artifact.key))
    else:
        body = service.artifacts.open(artifact.key, start, length)
    return Response(body, status=status, headers=headers, direct_passthrough=True)
