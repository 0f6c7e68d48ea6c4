"""One-shot download of server responses (an ASGI middleware for the Gradio app).

Gradio serves any file of its cache to whoever holds its ``/gradio_api/file=`` URL, with no tie to
the session that produced it. Responses of the ``segment_proxy`` endpoint are written under
:func:`response_root` (inside Gradio's cache, so Gradio serves them without another copy); this
middleware deletes a response's folder as soon as it has been sent once. A second fetch of the
same URL — by the same user or anybody else — gets ``403``.

Gradio names each upload by its content (``<cache>/<hash of the bytes>/<file name>``), the name its own views and
figures get too: two uploads of the same file, or an upload of a copy of a figure the app serves, are one file,
which the first handler to read its upload deletes. :class:`UniqueUploads` gives every uploaded file a random name
of its own (the uploader's file name never reaches the disk), and a handler reads and deletes only such a file
(:func:`is_foreign`: a request may name any file of Gradio's cache, which is not its to read or delete).
"""

from __future__ import annotations

import contextvars
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

FILE_ROUTE = "/gradio_api/file="
UPLOAD_ROUTE = "/gradio_api/upload"
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


class CacheDirError(OSError):
    """The app's cache folder cannot be made its user's alone; the message says what to do."""


def make_private_dir(folder: Path) -> Path:
    """``folder`` made if missing and readable by its owner alone (0700): the views and uploads Gradio writes
    there with the usual permissions stay out of other users' reach on a shared machine. A :class:`CacheDirError`
    if a file stands there, or a folder of another user's (its name is predictable: made first, it stays theirs,
    whatever its mode)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CacheDirError(f"The app's cache {folder} is not a folder: remove that file, or set GRADIO_TEMP_DIR to "
                            "a folder of your own.") from None
    if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
        raise CacheDirError(f"The app's cache {folder} was made by another user, who could read the uploads there: "
                            "remove it, or set GRADIO_TEMP_DIR to a folder of your own.")
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
    """The response folder a ``/gradio_api/file=`` path points into, or None for any other file (and for a path no
    file can have: with a NUL byte, which ``resolve`` refuses with ``ValueError``; Gradio answers it 403)."""
    if FILE_ROUTE not in url_path:
        return None
    try:
        target = Path(unquote(url_path.split(FILE_ROUTE, 1)[1])).resolve()
    except (ValueError, OSError):
        return None
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


# ------------------------------------------------------------------------------ uploads, each its own file
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm", ".npy")
"""The format suffixes an upload's new name keeps (the readers tell NIfTI, zip and DICOM apart by them)."""
_UPLOAD_NAME = re.compile(r"upload-[0-9a-f]{32}(?:" + "|".join(re.escape(x) for x in UPLOAD_SUFFIXES) + ")?")


def upload_file_name(original: str) -> str:
    """A fresh random name for an uploaded file: ``upload-<128 random bits in hex>`` and the format suffix of the
    ``original`` name (:data:`UPLOAD_SUFFIXES`, lower case), nothing else of it."""
    low = original.lower()
    suffix = next((x for x in UPLOAD_SUFFIXES if low.endswith(x) and len(low) > len(x)), "")
    return f"upload-{secrets.token_hex(16)}{suffix}"


def is_upload(path: str | os.PathLike) -> bool:
    """True for a file that Gradio's upload route wrote for one upload through :class:`UniqueUploads`:
    ``<cache>/<folder>/<upload_file_name(...)>``."""
    target = Path(path).resolve()
    return target.parent.parent == gradio_cache_dir() and _UPLOAD_NAME.fullmatch(target.name) is not None


def is_foreign(path: str | os.PathLike) -> bool:
    """True for a file of Gradio's cache that no upload made for the request naming it: a view, a figure of the
    page, a download or an answer, or an upload named by its content that two uploads may share. Gradio hands a
    handler any path of its cache that a request names; the handler must neither read such a file nor delete it
    (another page, or everyone's, shows it). Files outside the cache (the command line's, the tests') are not."""
    target = Path(path).resolve()
    return target.is_relative_to(gradio_cache_dir()) and not is_upload(target)


_FILENAME_PARAM = re.compile(rb';\s*filename\*?\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;]*)', re.IGNORECASE)


NOT_A_FILE = b"files-not-a-file"
"""The new name of a part named ``files`` that is no file: Gradio's upload route took every ``files`` part for a
file and raised ``TypeError`` (500, a traceback) on a field; under this name it ignores it."""


def _renamed_head(head: bytes) -> bytes:
    """A multipart part's header block with the file name of its Content-Disposition replaced by
    :func:`upload_file_name` (a ``filename*`` beside it dropped); a part that Gradio does not take for a file
    (no ``filename``) is left as it is, unless it is named ``files``: then it is named :data:`NOT_A_FILE`."""
    # Gradio's own parser of these headers
    from python_multipart.multipart import parse_options_header

    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if not line.lower().startswith(b"content-disposition:"):
            continue
        _, options = parse_options_header(line.split(b":", 1)[1])
        if b"filename" not in options:  # a field, as Gradio reads it (it ignores ``filename*``)
            if options.get(b"name") == b"files":
                lines[i] = b'Content-Disposition: form-data; name="' + NOT_A_FILE + b'"'
            continue
        name = upload_file_name(options[b"filename"].decode("utf-8", "replace"))
        lines[i] = _FILENAME_PARAM.sub(b"", line) + b'; filename="' + name.encode("ascii") + b'"'
    return b"\r\n".join(lines)


class _PartRenamer:
    """Streams a multipart/form-data body, renaming each file part (:func:`_renamed_head`) and passing the data
    through untouched. The boundary cannot occur in the data (RFC 2046), so each ``--boundary`` is a delimiter."""

    MAX_HEAD = 16 * 1024  # Gradio refuses a part whose headers pass 8 KiB

    def __init__(self, boundary: bytes) -> None:
        self.mark = b"--" + boundary
        self.buf = b""
        self.in_head = False

    def feed(self, data: bytes, final: bool) -> bytes:
        """The body's next bytes, renamed; what could still be the start of a delimiter or a head waits for more
        (all of it goes out with the ``final`` chunk)."""
        self.buf += data
        out = []
        while True:
            if self.in_head:
                end = self.buf.find(b"\r\n\r\n")
                if end >= 0:
                    out.append(_renamed_head(self.buf[:end]) + b"\r\n\r\n")
                    self.buf = self.buf[end + 4:]
                    self.in_head = False
                elif len(self.buf) > self.MAX_HEAD or final:  # the closing delimiter, or no head Gradio would take
                    self.in_head = False
                else:
                    break
            else:
                at = self.buf.find(self.mark)
                if at < 0:
                    cut = len(self.buf) if final else max(len(self.buf) - len(self.mark) + 1, 0)
                    out.append(self.buf[:cut])
                    self.buf = self.buf[cut:]
                    break
                cut = at + len(self.mark)
                out.append(self.buf[:cut])
                self.buf = self.buf[cut:]
                self.in_head = True
        return b"".join(out)


def _boundary(scope: dict) -> bytes | None:
    """The multipart boundary of a request's Content-Type, or None when it is not multipart/form-data."""
    from python_multipart.multipart import parse_options_header

    for key, value in scope.get("headers", []):
        if key.lower() == b"content-type":
            kind, options = parse_options_header(value)
            return options.get(b"boundary") if kind == b"multipart/form-data" else None
    return None


_PARSED_FILES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("mixdemo_parsed_files", default=None)
"""The temporary files Gradio's upload parser made for the upload request being served (:class:`UniqueUploads`)."""


def _recorded_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """``tempfile.NamedTemporaryFile``, its name recorded for the upload request being served (:data:`_PARSED_FILES`)."""
    made = tempfile.NamedTemporaryFile(*args, **kwargs)  # Gradio's parser closes and moves it
    parsed = _PARSED_FILES.get()
    if parsed is not None:
        parsed.append(made.name)
    return made


def record_parsed_files() -> None:
    """Make Gradio's upload parser (``gradio.route_utils``, which writes each file part to a temporary file in its
    cache and moves it into place once the body is parsed) record each such file for :class:`UniqueUploads`, which
    removes those left in place: a client that left half-way, or a file part Gradio does not take (not named
    ``files``), left one there, the upload's bytes in it, for as long as the app ran."""
    import gradio.route_utils

    gradio.route_utils.NamedTemporaryFile = _recorded_temporary_file


def _remove_left(names: list[str]) -> None:
    """Remove those of ``names`` still in place: temporary files Gradio's parser made and did not move."""
    for name in names:
        try:
            os.unlink(name)
        except OSError:  # moved into place: the upload itself
            pass


class UniqueUploads:
    """ASGI middleware: every file posted to Gradio's upload route is renamed in the request
    (:func:`upload_file_name`), so Gradio saves it as a file of its own, which only its uploader's request names
    (:func:`is_upload`), rather than at the path its content names, shared with any other upload of the same
    bytes and with Gradio's own copy of a view or figure of the same bytes and name. A temporary file Gradio's
    parser made for the request and did not move into place is removed once the request is over
    (:func:`record_parsed_files`)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        record_parsed_files()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Rename the file parts of an upload's body as it streams in; pass anything else through."""
        boundary = None
        if (scope.get("type") == "http" and scope.get("method") == "POST"
                and scope.get("path", "").rstrip("/").endswith(UPLOAD_ROUTE)):
            boundary = _boundary(scope)
        if not boundary:
            await self.app(scope, receive, send)
            return
        renamer = _PartRenamer(boundary)

        async def renamed() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                final = not message.get("more_body", False)
                message = {**message, "body": renamer.feed(message.get("body", b""), final)}
            return message

        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]  # the body's
        # length changes with the names
        parsed: list[str] = []  # the temporary files Gradio's parser makes for this request
        token = _PARSED_FILES.set(parsed)
        try:
            await self.app({**scope, "headers": headers}, renamed, send)
        finally:
            _PARSED_FILES.reset(token)
            _remove_left(parsed)


def middlewares() -> list:
    """The app's Starlette ``Middleware`` entries for ``FastAPI(middleware=[...])``: answers served once
    (:class:`OneShotResponses`), each upload a file of its own (:class:`UniqueUploads`)."""
    from starlette.middleware import Middleware

    return [Middleware(OneShotResponses), Middleware(UniqueUploads)]


def fresh_subdir(parent: Path, max_age_s: float) -> Path:
    """A new private folder (0700) under ``parent``; sibling folders older than ``max_age_s`` are removed.

    Its name is 128 random bits from :mod:`secrets`: Gradio serves a file of its cache to whoever holds its URL,
    so the folder's name is what keeps a session's download, or a client's answer, from any other user;
    ``tempfile.mkdtemp`` names hold 8 characters of a Mersenne Twister that every temporary name of the process
    draws from, and are not meant to be unguessable."""
    import time

    parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in parent.iterdir():
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    while True:
        folder = parent / secrets.token_hex(16)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # 2**-128: never, in practice
            continue
        os.chmod(folder, 0o700)  # whatever the umask
        return folder
