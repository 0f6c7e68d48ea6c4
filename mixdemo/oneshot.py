"""One-shot download of server responses (an ASGI middleware for the Gradio app).

Gradio serves any file of its cache to whoever holds its ``/gradio_api/file=`` URL, with no tie to
the session that produced it. Responses of the ``segment_proxy`` endpoint are written under
:func:`response_root` (inside Gradio's cache, so Gradio serves them without another copy); this
middleware deletes a response's folder as soon as it has been sent once. A second fetch of the
same URL — by the same user or anybody else — gets ``403``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

FILE_ROUTE = "/gradio_api/file="
RESPONSE_FOLDER = "mixdemo-server"


def gradio_cache_dir() -> Path:
    """Gradio's upload/cache folder (``GRADIO_TEMP_DIR`` or ``$TMPDIR/gradio``), resolved."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


APP_CACHE_FOLDER = "mixdemo-gradio"
"""The app's own Gradio cache under the system's temporary folder, one per user (``app.py`` sets
``GRADIO_TEMP_DIR`` to it unless set): shared with no other Gradio app, so what a previous process left there may
be swept, and readable by its user alone."""


def app_cache_dir() -> Path:
    """:data:`APP_CACHE_FOLDER`, suffixed with the user's id, under the system's temporary folder, resolved."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return (Path(tempfile.gettempdir()) / f"{APP_CACHE_FOLDER}-{user}").resolve()


def make_private_dir(folder: Path) -> Path:
    """``folder`` made if missing and readable by its owner alone (0700): the views and uploads Gradio writes
    there with the usual permissions stay out of other users' reach on a shared machine."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def sweep_stale(max_age_s: float) -> int:
    """Remove what lies in Gradio's cache longer than ``max_age_s`` (uploads, views, responses that a process
    killed before it could delete them left behind; a running app's own are younger, or its sweep removes them),
    when that cache is :func:`app_cache_dir`, the app's own; a cache chosen with ``GRADIO_TEMP_DIR`` may be shared,
    so it is left alone. Returns how many entries were removed (nothing of what they held is logged)."""
    import time

    root = gradio_cache_dir()
    if root != app_cache_dir() or not root.is_dir():
        return 0
    now, removed = time.time(), 0
    for entry in root.iterdir():
        try:
            if now - entry.lstat().st_mtime <= max_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def response_root() -> Path:
    """Parent folder of the server's response folders (inside Gradio's cache)."""
    return gradio_cache_dir() / RESPONSE_FOLDER


def _response_folder(url_path: str) -> Path | None:
    """The response folder a ``/gradio_api/file=`` path points into, or None for any other file."""
    if FILE_ROUTE not in url_path:
        return None
    target = Path(unquote(url_path.split(FILE_ROUTE, 1)[1])).resolve()
    root = response_root()
    if target.parent.parent != root or not target.name.endswith(".npy"):
        return None
    return target.parent


class OneShotResponses:
    """ASGI middleware: after a complete ``200`` GET of a response file, delete its folder."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request through; remember whether the whole response body was sent."""
        folder = None
        if scope.get("type") == "http" and scope.get("method") == "GET":
            folder = _response_folder(scope.get("path", ""))
        if folder is None:
            await self.app(scope, receive, send)
            return
        state = {"status": 0, "done": False}

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if state["done"] and state["status"] == 200:
                shutil.rmtree(folder, ignore_errors=True)


def middleware() -> Any:
    """The Starlette ``Middleware`` entry for ``FastAPI(middleware=[...])``."""
    from starlette.middleware import Middleware

    return Middleware(OneShotResponses)


def fresh_subdir(parent: Path, max_age_s: float) -> Path:
    """A new private folder under ``parent``; sibling folders older than ``max_age_s`` are removed."""
    import time

    parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in parent.iterdir():
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(dir=parent))
