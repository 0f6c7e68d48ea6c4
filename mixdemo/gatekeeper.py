"""Requests refused before Gradio's routes see them (an ASGI middleware for the Gradio app).

Gradio answers some malformed requests with an unhandled exception: HTTP 500 and a traceback of 20 to 80 lines in
the server's log for each request, which anybody who can reach the app can repeat (a log flood), and whose text
quotes the request's values (an uploaded file's name among them). Checked here, with Gradio's own models and the
app's own events, they get a 4xx answer that says what is wrong and one line in the log:

- ``POST /gradio_api/queue/join`` naming an event (``fn_index``) the app does not have (Gradio: ``KeyError``, 500)
  or one that runs in the page alone (Gradio queues it, then prints its ``IndexError``), or giving an event fewer
  inputs than it takes (Gradio queues it, then prints its ``ValueError`` with the values);
- ``POST /gradio_api/component_server`` naming a component the app does not have (``KeyError``, 500);
- ``GET /gradio_api/queue/data`` for a session with nothing queued (Gradio's 404 is raised once its stream has
  begun: "response already started" and two tracebacks);
- ``POST /gradio_api/run/NAME`` (and ``/gradio_api/api/NAME``), the direct call the page makes for an event outside
  the queue, under the join's rules, and naming (without ``fn_index``) an endpoint the app lacks (Gradio:
  ``KeyError``, ``FnIndexInferError`` or ``ValueError``, 500, its traceback printed);
- ``POST /gradio_api/call/NAME`` naming an endpoint the app lacks (``FnIndexInferError``, 500), and
  ``/gradio_api/call/v2/NAME`` one that is not in its API (``KeyError``, 500; an ``undocumented`` endpoint called
  without ``?all_endpoints`` still gets Gradio's).

A request whose body Gradio's model refuses is passed on: Gradio's 422 already says why, without a traceback.

An event that fails (a value its component refuses, say) is answered by Gradio's queue with its error, and Gradio
printed the whole traceback too, with the exception's message, which quotes the request's values: with
:func:`quiet_event_failures` the log gets one line (the exception's type and where it was raised), and the stack,
without the message, at DEBUG.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

API_PREFIX = "/gradio_api"
JOIN_ROUTE = API_PREFIX + "/queue/join"
COMPONENT_ROUTE = API_PREFIX + "/component_server"
STREAM_ROUTE = API_PREFIX + "/queue/data"
MAX_CHECKED_BODY = 1 << 20
"""Bodies longer than this (bytes) are passed on unchecked: a join's or a component call's body names files, it
does not hold them, and is a few hundred bytes."""


NAMED_ROUTES = re.compile(re.escape(API_PREFIX) + r"/(?:(?P<run>run|api)|(?P<call>call)(?P<v2>/v2)?)/(?P<name>[^/]+)$")
"""``/gradio_api/run/NAME``, ``/gradio_api/api/NAME``, ``/gradio_api/call/NAME``, ``/gradio_api/call/v2/NAME``."""


def _route(scope: dict) -> tuple[str, str] | None:
    """Which checked route an HTTP request is for (``join``, ``component``, ``stream``, ``run``, ``call`` or
    ``call/v2``) and the endpoint name its path gives (``""`` if none), else None."""
    if scope.get("type") != "http":
        return None
    method, path = scope.get("method"), scope.get("path", "").rstrip("/")
    if method == "POST" and path.endswith(JOIN_ROUTE):
        return "join", ""
    if method == "POST" and path.endswith(COMPONENT_ROUTE):
        return "component", ""
    if method == "GET" and path.endswith(STREAM_ROUTE):
        return "stream", ""
    named = NAMED_ROUTES.search(path) if method == "POST" else None
    if named is None:
        return None
    return ("run" if named["run"] else "call/v2" if named["v2"] else "call"), named["name"]


def join_refusal(body: bytes, blocks: Any) -> str | None:
    """Why a queue join is refused (its event unknown to ``blocks`` and to the request's session, or given fewer
    inputs than it takes), or None to pass it on (it is well formed, or Gradio's own validation answers it)."""
    from gradio.data_classes import PredictBody
    from pydantic import ValidationError

    try:
        request = PredictBody.model_validate_json(body)
    except ValidationError:
        return None  # Gradio's 422 says why
    if request.fn_index is None:
        return None  # Gradio's 400: "No function index provided."
    return _event_refusal(request, _config(blocks, request.session_hash).fns.get(request.fn_index))


def run_refusal(name: str, body: bytes, blocks: Any) -> str | None:
    """Why a direct call (``/gradio_api/run/NAME``) is refused: as a join (:func:`join_refusal`) when it gives an
    ``fn_index``, else when no event of the app is named ``name`` or the one named is given too few inputs."""
    from gradio.data_classes import PredictBody
    from pydantic import ValidationError

    try:
        request = PredictBody.model_validate_json(body)
    except ValidationError:
        return None
    fns = _config(blocks, request.session_hash).fns
    if request.fn_index is not None:
        return _event_refusal(request, fns.get(request.fn_index))
    fn = next((fn for fn in fns.values() if fn.api_name == name), None)
    return f"This app has no endpoint /{name}." if fn is None else _event_refusal(request, fn)


def call_refusal(name: str, body: bytes, blocks: Any, v2: bool = False) -> str | None:
    """Why a call of the simple API (``/gradio_api/call/NAME``; ``v2``: ``/gradio_api/call/v2/NAME``) is refused:
    no event of the app (of its API, for ``v2``) is named ``name``."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None  # Gradio's 422
    session_hash = request.get("session_hash") if not v2 and isinstance(request.get("session_hash"), str) else None
    fns = _config(blocks, session_hash).fns.values()
    if any(fn.api_name == name and (not v2 or (fn.fn is not None and fn.api_visibility != "private")) for fn in fns):
        return None
    return f"This app has no endpoint /{name}."


def _event_refusal(request: Any, fn: Any) -> str | None:
    """Why a request (a ``PredictBody``) for the event ``fn`` (None: unknown) is refused, or None."""
    if fn is None:
        return f"This app has no event {request.fn_index}."
    label = request.fn_index if request.fn_index is not None else f"/{fn.api_name}"
    if fn.fn is None:
        return f"Event {label} runs in the page alone; it has nothing to call on the server."
    if not fn.cancels and not fn.batch and len(request.data) < len(fn.inputs):
        return (f"Event {label} takes {len(fn.inputs)} input{'s' * (len(fn.inputs) != 1)}; "
                f"the request gave {len(request.data)}.")
    return None


def component_refusal(body: bytes, blocks: Any) -> str | None:
    """Why a component-server call is refused (its component unknown to ``blocks`` and to the request's session), or
    None to pass it on."""
    from gradio.data_classes import ComponentServerJSONBody
    from pydantic import ValidationError

    try:
        request = ComponentServerJSONBody.model_validate_json(body)
    except ValidationError:
        return None
    known = _config(blocks, request.session_hash).blocks
    if request.component_id not in blocks.blocks and request.component_id not in known:
        return f"This app has no component {request.component_id}."
    return None


def _config(blocks: Any, session_hash: str | None) -> Any:
    """The events and components that Gradio looks a request up in: those of the request's session when it has one
    (``gr.render`` adds its events and components to the session's copy alone), else the app's. Never creates a
    session, as Gradio's lookup does."""
    holder = getattr(blocks, "state_holder", None)
    session = holder.session_data.get(session_hash) if holder is not None and session_hash else None
    return session.blocks_config if session is not None else blocks


def stream_refusal(query_string: bytes, blocks: Any) -> str | None:
    """Why a queue stream is refused (its session has nothing queued, which Gradio finds only once its stream has
    begun), or None to pass it on."""
    session = parse_qs(query_string.decode("latin-1")).get("session_hash", [None])[0]
    if session is None:
        return None  # Gradio's 422: the parameter is required
    if session not in blocks._queue.pending_messages_per_session:
        return "Nothing is queued for this session: join the queue first."
    return None


class MalformedRequestsRefused:
    """ASGI middleware: the requests listed in this module's docstring are answered here (422, or 404 for a stream
    with nothing queued), with one line in the log; every other request goes on unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route, name = _route(scope) or (None, "")
        blocks = _blocks(scope) if route else None
        if blocks is None:
            await self.app(scope, receive, send)
            return
        if route == "stream":
            why = stream_refusal(scope.get("query_string", b""), blocks)
            if why:
                await _refuse(send, 404, why, route)
                return
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        why = None if body is None else _refusal(route, name, body, blocks)
        if why:
            await _refuse(send, 422, why, route)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _refusal(route: str, name: str, body: bytes, blocks: Any) -> str | None:
    """Why a request with a body to ``route`` (for the endpoint ``name``) is refused, or None."""
    if route == "join":
        return join_refusal(body, blocks)
    if route == "component":
        return component_refusal(body, blocks)
    if route == "run":
        return run_refusal(name, body, blocks)
    return call_refusal(name, body, blocks, v2=route == "call/v2")


def _blocks(scope: dict) -> Any:
    """The Blocks of the Gradio app serving this request (Starlette puts the app in the scope), or None."""
    get_blocks = getattr(scope.get("app"), "get_blocks", None)
    try:
        return get_blocks() if get_blocks else None
    except Exception:  # noqa: BLE001 - not a configured Gradio app: nothing to check against
        return None


async def _read_body(receive: Any) -> tuple[list[dict], bytes | None]:
    """The request's messages as received (to replay them) and its body, or None for the body when it is longer
    than :data:`MAX_CHECKED_BODY` or the client left."""
    messages, size, chunks = [], 0, []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_CHECKED_BODY:
            return messages, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


async def _refuse(send: Any, status: int, why: str, route: str) -> None:
    """Answer ``status`` with ``{"detail": why}`` (the form of Gradio's own refusals) and log one line."""
    log.warning("refused a malformed %s request (HTTP %d): %s", route, status, why)
    body = json.dumps({"detail": why}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def middleware() -> Any:
    """The Starlette ``Middleware`` entry of :class:`MalformedRequestsRefused`, for ``FastAPI(middleware=[...])``."""
    from starlette.middleware import Middleware

    return Middleware(MalformedRequestsRefused)


PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The app's own code lies here (``app.py``, ``mixdemo/``): a failed event's line names its innermost frame in it."""


def _own(frame: traceback.FrameSummary) -> bool:
    """Whether a frame is in the app's own code (under :data:`PROJECT_ROOT`, not in an environment's packages)."""
    path = Path(frame.filename).resolve()
    return path.is_relative_to(PROJECT_ROOT) and "site-packages" not in path.parts


class _OneLineTracebacks:
    """Stands in for the :mod:`traceback` module in ``gradio.queueing``: ``print_exc`` logs one line (the
    exception's type, where it was raised and, when that is in a library, the app's own innermost frame) and, at
    DEBUG, the stack without the exception's message."""

    def print_exc(self, *args: Any, **kwargs: Any) -> None:
        exc_type, _, tb = sys.exc_info()
        if exc_type is None:
            return
        frames = traceback.extract_tb(tb)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        own = [frame for frame in frames if _own(frame)]
        if own and own[-1] is not frames[-1]:  # raised in a library (json, torch, Gradio): which line of the app
            mine = own[-1]
            where += f", from {Path(mine.filename).resolve().relative_to(PROJECT_ROOT)}:{mine.lineno} in {mine.name}"
        log.warning("an event failed: %s.%s%s", exc_type.__module__, exc_type.__qualname__, where)
        log.debug("its stack (the message left out):\n%s", "".join(traceback.format_list(frames)))

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)


def quiet_event_failures() -> None:
    """Make Gradio's queue log a failed event in one line (:class:`_OneLineTracebacks`), not as a printed traceback
    quoting the request's values; :func:`mixdemo.ui.launch_demo` calls it."""
    import gradio.queueing

    if not isinstance(gradio.queueing.traceback, _OneLineTracebacks):
        gradio.queueing.traceback = _OneLineTracebacks()  # type: ignore[assignment]
