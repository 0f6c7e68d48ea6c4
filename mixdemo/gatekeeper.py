"""Requests refused before Gradio's routes see them (an ASGI middleware for the Gradio app).

Gradio answers some malformed requests with an unhandled exception: HTTP 500 and a traceback of 20 to 80 lines in
the server's log for each request, which anybody who can reach the app can repeat (a log flood), and whose text
quotes the request's values (an uploaded file's name among them). Checked here, with Gradio's own models and the
app's own events, they get a 4xx answer that says what is wrong and one line in the log:

- ``POST /gradio_api/queue/join`` naming an event (``fn_index``) the app does not have (Gradio: ``KeyError``, 500)
  or one that runs in the page alone (Gradio queues it, then prints its ``IndexError``), or giving an event fewer
  inputs than it takes (Gradio queues it, then prints its ``ValueError`` with the values);
- ``POST /gradio_api/queue/join`` or ``/gradio_api/call/<name>`` with an empty ``session_hash`` (Gradio files the
  event under a session of its own id, then looks for it under the empty one: ``KeyError``, 500);
- ``POST /gradio_api/call/<name>``, ``/call/v2/<name>``, ``/run/<name>``, ``/api/<name>`` naming an endpoint the app
  does not have (``FnIndexInferError`` quoting the name, or ``KeyError``, 500), or, for ``/call/v2``, arguments
  the endpoint does not take (``TypeError``, 500);
- a join, a call by name or a component call whose ``session_hash`` is longer than :data:`MAX_SESSION_HASH` (each
  is a key of the app's store: 260 kB ones were kept);
- a JSON body holding a number JSON has not (``NaN``, ``Infinity``, ``1e400``), which no browser's
  ``JSON.stringify`` writes: where Gradio's model refused it, its 422 could not be written (``ValueError``, 500);
- a join, component call or call by name whose body passes :data:`MAX_CHECKED_BODY` (413): it could not be checked;
- ``POST /gradio_api/component_server`` naming a component the app does not have (``KeyError``, 500), or, as a
  form, without the fields ``component_id`` (a number), ``session_hash`` and ``fn_name`` (``KeyError``, or a
  ``ValidationError`` quoting the value, 500);
- ``GET /gradio_api/deep_link`` where the app has no ``gr.DeepLinkButton`` (404): Gradio wrote the state of the
  session named (for whoever knows its hash) into its cache, kept there for whoever loads that link;
- ``GET /gradio_api/dev/reload`` where the app does not run in reload mode (404): Gradio served that stream in any
  mode, never ending, each one polled every 50 ms, as many as a client cared to open;
- ``GET /?page=<name>`` for a page the app does not have (``KeyError`` quoting the name, 500);
- ``GET /gradio_api/custom_component/<id>/...`` for an id of no custom component of the app (Gradio's route printed
  the request's path, its values, to the log before it answered 404);
- any request whose ``X-Forwarded-Host`` or ``X-Gradio-Server`` header makes no URL (a port that is no number, an
  unclosed ``[``): Gradio builds the app's URL from them for the page, its config and events (``InvalidURL``
  quoting the header, 500); any form (``multipart/form-data``) whose boundary is longer than the multipart
  parser takes (its ``FormParserError`` is not the ``MultiPartException`` Gradio answers with a 400: 500);
- ``GET /gradio_api/queue/data`` for a session with nothing queued (an empty one too), and
  ``GET /gradio_api/call/<name>/<event_id>`` for an event with nothing queued (Gradio's 404 is raised once its
  stream has begun: "response already started", a dropped connection and two tracebacks).

A ``Range`` header on ``GET /gradio_api/file=...`` that Gradio's file route cannot read (a list of ranges,
``bytes=0-1,2-3``, or ``bytes=1-2-3``: it split the value at its ``-`` into two, ``ValueError``, 500) is dropped: the
whole file is sent, as HTTP lets a server do with any ``Range``.

A request whose body Gradio's model refuses is passed on: Gradio's 422 already says why, without a traceback.

A client that leaves before it has sent its whole body (a page closed during an upload) made Gradio's parser raise
Starlette's ``ClientDisconnect`` out of the route: a traceback of some 78 lines for nobody; it is one line here.

An event that fails (a value its component refuses, say) is answered by Gradio's queue with its error, and Gradio
printed the whole traceback too, with the exception's message, which quotes the request's values: with
:func:`quiet_event_failures` the log gets one line (the exception's type and where it was raised), and the stack,
without the message, at DEBUG; so too a direct call's failure and a screen recording's (``POST
/gradio_api/process_recording`` with a ``remove_segment_start`` that is no number, where ffmpeg is installed).
"""

from __future__ import annotations

import json
import logging
import math
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
_CALL_STREAM = re.compile(re.escape(API_PREFIX) + r"/call/(?:v2/)?[^/]+/(?P<event_id>[^/]+)$")
"""``GET /gradio_api/call/<name>/<event_id>`` (and ``/call/v2/...``): the stream of a call's event."""
MAX_CHECKED_BODY = 1 << 20
"""Bodies longer than this (bytes) are refused on the routes checked here (413), passed on unchecked elsewhere: a
join's, a call's or a component call's body names files, it does not hold them, and is a few hundred bytes in this
app (its page's joins: 89 to 151 bytes). An app that adds a ``gr.ImageEditor`` would need more: its page sends layer
images to the component server as a form."""
FILE_ROUTES = (API_PREFIX + "/file=", API_PREFIX + "/file/")
"""Gradio's file routes (``file/`` is the older form of ``file=``)."""
_CUSTOM_COMPONENT = re.compile(re.escape(API_PREFIX) + r"/custom_component/(?P<id>[^/]+)/[^/]+/[^/]+/[^/]+$")
"""``GET /gradio_api/custom_component/<id>/<environment>/<type>/<file_name>``: a custom component's code."""
_CALL = re.compile(re.escape(API_PREFIX) + r"/(?P<kind>call/v2|call|run|api)/(?P<name>[^/]+)$")
"""``POST /gradio_api/call/<name>`` (its ``v2``) and ``/run/<name>``, ``/api/<name>``: an endpoint called by name."""
DEEP_LINK_ROUTE = API_PREFIX + "/deep_link"
"""``GET /gradio_api/deep_link?session_hash=...``: a copy of a session's state on disk, as a link to it."""
RELOAD_ROUTE = API_PREFIX + "/dev/reload"
"""``GET /gradio_api/dev/reload``: the stream that tells a page in reload mode (``gradio app.py``) its code changed."""
EMPTY_SESSION = "The session (session_hash) is empty: give one, or leave it out."
MAX_SESSION_HASH = 128
"""The longest session hash taken (Gradio's page makes 11 characters, gradio_client 36): each is a key of the app's
store, which bounds how many sessions it keeps, not how long their keys are."""
LONG_SESSION = f"The session (session_hash) is longer than {MAX_SESSION_HASH} characters."


def session_refusal(session_hash: str | None) -> str | None:
    """Why a request's session hash is refused (empty, or longer than :data:`MAX_SESSION_HASH`), or None."""
    if session_hash == "":
        return EMPTY_SESSION
    if session_hash is not None and len(session_hash) > MAX_SESSION_HASH:
        return LONG_SESSION
    return None
UNKNOWN_ENDPOINT = "This app has no API endpoint of that name: see /gradio_api/info for its endpoints."


def forwarded_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request is refused for a header Gradio builds the app's URL from (``X-Forwarded-Host``,
    ``X-Gradio-Server``: their first value, as Gradio reads it) that makes no URL, or None."""
    import httpx

    seen = set()
    for key, value in headers:
        name = key.lower()
        if name not in (b"x-forwarded-host", b"x-gradio-server") or name in seen:
            continue
        seen.add(name)
        first = value.decode("latin-1").split(",")[0].strip()
        try:
            if first:
                httpx.URL(f"http://{first}" if name == b"x-forwarded-host" else first)
        except httpx.InvalidURL:
            return f"The {name.decode()} header makes no URL."
    return None


def boundary_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a form (``multipart/form-data``) is refused for a boundary longer than the multipart parser takes (RFC
    2046 allows 70 characters), or None."""
    from python_multipart import multipart

    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    kind, options = multipart.parse_options_header(content_type)
    limit = getattr(multipart, "MAX_BOUNDARY_LENGTH", 256)
    if kind == b"multipart/form-data" and len(options.get(b"boundary", b"")) > limit:
        return f"The form's boundary is longer than {limit} characters."
    return None


def unreadable_range(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's ``Range`` header (its first) is one Gradio's file route cannot read: it splits what follows
    ``bytes=`` at ``-`` into exactly two (start and end), so more than one ``-`` (a list of ranges) raised."""
    value = next((v for k, v in headers if k.lower() == b"range"), b"").decode("latin-1").strip()
    return value.startswith("bytes=") and value[6:].count("-") > 1


def _route(scope: dict) -> str | None:
    """Which checked route an HTTP request is for (``join``, ``component``, ``call``, ``stream``, ``call stream``,
    ``custom component``, ``deep link``, ``reload stream``, ``page``; ``json`` for any other POST of the API that is
    not a form), else None."""
    if scope.get("type") != "http":
        return None
    method, path = scope.get("method"), scope.get("path", "").rstrip("/")
    if method == "POST" and path.endswith(JOIN_ROUTE):
        return "join"
    if method == "POST" and path.endswith(COMPONENT_ROUTE):
        return "component"
    if method == "GET" and path.endswith(STREAM_ROUTE):
        return "stream"
    if method == "GET" and _CALL_STREAM.search(path):
        return "call stream"
    if method == "GET" and _CUSTOM_COMPONENT.search(path):
        return "custom component"
    if method == "GET" and path.endswith(DEEP_LINK_ROUTE):
        return "deep link"
    if method == "GET" and path.endswith(RELOAD_ROUTE):
        return "reload stream"
    if method in ("GET", "HEAD") and path == scope.get("root_path", "").rstrip("/"):
        return "page"
    if method == "POST" and _CALL.search(path):
        return "call"
    if method == "POST" and API_PREFIX + "/" in path and not _is_form(scope, b"application/x-www-form-urlencoded"):
        return "json"
    return None


def _is_form(scope: dict, *other: bytes) -> bool:
    """Whether a request's Content-Type is ``multipart/form-data`` (or one of ``other``), as Gradio tells it."""
    content_type = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-type"), b"").lower()
    return content_type.startswith((b"multipart/form-data", *other))


class _NonFinite(ValueError):
    """A JSON number past a double's range, or ``NaN``/``Infinity``."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _no_constant(text: str) -> float:
    raise _NonFinite(text)


def nonfinite_refusal(body: bytes) -> str | None:
    """Why a JSON body is refused (a number JSON has not: ``NaN``, ``Infinity``, or one past a double's range, which
    Python reads as infinite; FastAPI could not write its own 422 quoting it), or None to pass it on (it is not JSON
    at all, which Gradio answers)."""
    try:
        json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except _NonFinite:
        return "The body holds a number JSON has not (NaN, Infinity, or past a double's range)."
    except (ValueError, RecursionError):
        return None
    return None


def join_refusal(body: bytes, blocks: Any) -> str | None:
    """Why a queue join is refused (its event unknown to ``blocks`` and to the request's session, one of the page
    alone, or given fewer inputs than it takes), or None to pass it on (it is well formed, or Gradio's own validation
    answers it)."""
    from gradio.data_classes import PredictBody
    from pydantic import ValidationError

    try:
        request = PredictBody.model_validate_json(body)
    except ValidationError:
        return None  # Gradio's 422 says why
    if why := session_refusal(request.session_hash):
        return why
    if request.fn_index is None:
        return None  # Gradio's 400: "No function index provided."
    return _event_refusal(request, _config(blocks, request.session_hash).fns.get(request.fn_index))


def _number(value: int) -> str:
    """An id as a refusal (and its log line) quotes it: whole up to 20 digits, else how many it has (a request may
    send thousands)."""
    text = str(value)
    return text if len(text.lstrip("-")) <= 20 else f"of {len(text.lstrip('-'))} digits"


def _event_refusal(request: Any, fn: Any) -> str | None:
    """Why a request (a ``PredictBody``) for the event ``fn`` (None: unknown) is refused, or None."""
    if fn is None:
        return f"This app has no event {_number(request.fn_index)}."
    label = request.fn_index if request.fn_index is not None else f"/{fn.api_name}"
    if fn.fn is None:
        return f"Event {label} runs in the page alone; it has nothing to call on the server."
    if not fn.cancels and not fn.batch and len(request.data) < len(fn.inputs):
        return (f"Event {label} takes {len(fn.inputs)} input{'s' * (len(fn.inputs) != 1)}; "
                f"the request gave {len(request.data)}.")
    return None


def _config(blocks: Any, session_hash: str | None) -> Any:
    """The events and components that Gradio looks a request up in: those of the request's session when it has one
    (``gr.render`` adds its events and components to the session's copy alone), else the app's. Never creates a
    session, as Gradio's lookup does."""
    holder = getattr(blocks, "state_holder", None)
    session = holder.session_data.get(session_hash) if holder is not None and session_hash else None
    return session.blocks_config if session is not None else blocks


def call_refusal(path: str, body: bytes, blocks: Any, api_info: Any = None) -> str | None:
    """Why a call of an endpoint by name (``POST .../call/<name>``, ``/call/v2/<name>``, ``/run/<name>``,
    ``/api/<name>``) is refused: no event of ``blocks`` has that API name (for ``/call/v2``: no endpoint of
    ``api_info()``, the app's API description, has it, or the body's arguments are not the endpoint's), its
    ``fn_index`` names no event, or its session is empty; None to pass it on."""
    from gradio.data_classes import PredictBody, SimplePredictBody
    from pydantic import ValidationError

    match = _CALL.search(path.rstrip("/"))
    if match is None:
        return None
    kind, name = match["kind"], match["name"]
    if kind == "call/v2":
        return _call_v2_refusal(name, body, api_info() if api_info else blocks.get_api_info())
    try:
        request = (SimplePredictBody if kind == "call" else PredictBody).model_validate_json(body)
    except ValidationError:
        return None  # Gradio's 422
    if why := session_refusal(request.session_hash):
        return why
    fns = _config(blocks, request.session_hash).fns
    if kind != "call":  # a direct call (/run, /api: the page's, for an event it does not queue), under the join's rules
        fn = (fns.get(request.fn_index) if request.fn_index is not None
              else next((fn for fn in fns.values() if fn.api_name == name), None))
        if fn is None and request.fn_index is None:
            return UNKNOWN_ENDPOINT
        if fn is not None and fn.queue and not getattr(blocks, "api_open", True):
            return None  # Gradio's 404: "join the queue" (it runs no queued event directly)
        return _event_refusal(request, fn)
    return None if any(fn.api_name == name for fn in fns.values()) else UNKNOWN_ENDPOINT


def _call_v2_refusal(name: str, body: bytes, info: dict) -> str | None:
    """:func:`call_refusal` for ``/call/v2/<name>``: its body, an object of arguments by name, checked against the
    endpoint's parameters in ``info`` (the app's API description) as Gradio reads them."""
    from gradio_client.utils import construct_args

    endpoint = info.get("named_endpoints", {}).get("/" + name)
    if endpoint is None:
        return UNKNOWN_ENDPOINT
    try:
        args = json.loads(body)
    except (ValueError, RecursionError):
        return None  # Gradio's 422
    if not isinstance(args, dict):
        return None
    parameters = endpoint.get("parameters", [])
    if endpoint.get("oauth_token") or not any(p.get("parameter_name") == "oauth_token" for p in parameters):
        args.pop("oauth_token", None)
    try:
        construct_args(parameters, (), args)
    except (TypeError, ValueError):
        names = ", ".join(str(p.get("parameter_name")) for p in parameters) or "none"
        return f"Endpoint /{name} takes these arguments by name: {names}; the request gave others, or too few."
    return None


def component_refusal(body: bytes, blocks: Any) -> str | None:
    """Why a component-server call is refused (its component unknown to ``blocks``), or None to pass it on."""
    from gradio.data_classes import ComponentServerJSONBody
    from pydantic import ValidationError

    try:
        request = ComponentServerJSONBody.model_validate_json(body)
    except ValidationError:
        return None
    return _component_refusal(request, blocks)


def component_form_refusal(fields: dict[str, str], blocks: Any) -> str | None:
    """Why a component-server call sent as a form (``fields``: its fields, not its files) is refused (a field
    missing, a ``component_id`` that is no number, a component unknown to ``blocks``), or None to pass it on."""
    from gradio.data_classes import ComponentServerBlobBody, DataWithFiles
    from pydantic import ValidationError

    try:
        request = ComponentServerBlobBody(data=DataWithFiles(data=fields, files=[]),
                                          component_id=fields["component_id"], session_hash=fields["session_hash"],
                                          fn_name=fields["fn_name"])
    except (KeyError, ValidationError):
        return "A component call's form needs the fields component_id (a number), session_hash and fn_name."
    return _component_refusal(request, blocks)


def _component_refusal(request: Any, blocks: Any) -> str | None:
    """Why a parsed component-server call (JSON or form) is refused: its session, or a component unknown to
    ``blocks`` and to that session; None to pass it on."""
    if why := session_refusal(request.session_hash):
        return why
    if request.component_id not in _config(blocks, request.session_hash).blocks:
        return f"This app has no component {_number(request.component_id)}."
    return None


async def _form_fields(scope: dict, body: bytes) -> dict[str, str] | None:
    """The fields (not the files) of a form's ``body``, the last of each name, as Starlette's multipart parser (the
    one Gradio's copies) reads them; None when it reads no form (Gradio answers that with a 400)."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def stream():  # noqa: ANN202 - an async generator of the one body
        yield body

    try:
        form = await MultiPartParser(Headers(scope=scope), stream()).parse()
    except Exception:  # noqa: BLE001 - no form the parser reads: Gradio's own parser answers it
        return None
    try:
        return {key: value for key, value in form.multi_items() if isinstance(value, str)}
    finally:
        await form.close()


def custom_component_refusal(path: str, blocks: Any) -> str | None:
    """Why a request for a custom component's code is refused (its id is that of no component of ``blocks`` whose
    class comes from outside Gradio), or None to pass it on."""
    match = _CUSTOM_COMPONENT.search(path.rstrip("/"))
    if match is None:
        return None
    ids = {type(block).get_component_class_id() for block in blocks.blocks.values()
           if type(block).__module__.split(".")[0] != "gradio" and hasattr(block, "get_component_class_id")}
    return None if match["id"] in ids else "This app has no custom component of that id."


def deep_link_refusal(blocks: Any) -> str | None:
    """Why a deep link is refused (``blocks`` has no ``gr.DeepLinkButton``, whose page alone asks for one), or None.
    Gradio's route writes the state of the session it names (its views' files, its status lines) into its cache as
    ``deep_links/<hash>/state.json``, for whoever then loads the page with that link."""
    if any(type(block).__name__ == "DeepLinkButton" for block in blocks.blocks.values()):
        return None
    return "This app makes no deep links."


def reload_stream_refusal(blocks: Any) -> str | None:
    """Why the reload stream is refused (``blocks`` is not in reload mode, whose page alone opens it), or None.
    Gradio serves it in any mode: a stream that never ends and wakes every 50 ms, as many as a client opens."""
    return None if getattr(blocks, "dev_mode", False) else "This app does not run in reload mode."


def page_refusal(query_string: bytes, blocks: Any) -> str | None:
    """Why a request for the app's page (``GET /``) is refused (its ``page`` names no page of ``blocks``), or None
    to pass it on."""
    pages = (getattr(blocks, "config", None) or {}).get("page", {})
    asked = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("page", [])
    return None if all(page in pages for page in asked) else "This app has no page of that name."


def stream_refusal(query_string: bytes, blocks: Any) -> str | None:
    """Why a queue stream is refused (its session has nothing queued, which Gradio finds only once its stream has
    begun), or None to pass it on. A session named twice is read as Gradio reads it: the last one."""
    session = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("session_hash", [None])[-1]
    if session is None:
        return None  # Gradio's 422: the parameter is required
    if session not in blocks._queue.pending_messages_per_session:
        return "Nothing is queued for this session: join the queue first."
    return None


def call_stream_refusal(path: str, blocks: Any) -> str | None:
    """Why the stream of a call's event (``GET .../call/<name>/<event_id>``) is refused (nothing is queued for the
    session Gradio finds for the event, as for :func:`stream_refusal`), or None to pass it on."""
    match = _CALL_STREAM.search(path.rstrip("/"))
    if match is None:
        return None
    event_id, queue = match["event_id"], blocks._queue
    event = queue.event_ids_to_events.get(event_id)
    if event is not None:  # Gradio's lookup: the event's session, else one still holding its id, else the id
        session = event.session_hash
    else:
        session = next((s for s, ids in queue.pending_event_ids_session.items() if event_id in ids), event_id)
    if session not in queue.pending_messages_per_session:
        return "Nothing is queued for this event: call the endpoint first (POST), then read its event's stream."
    return None


_BODILESS = {
    "stream": lambda scope, blocks: stream_refusal(scope.get("query_string", b""), blocks),
    "page": lambda scope, blocks: page_refusal(scope.get("query_string", b""), blocks),
    "call stream": lambda scope, blocks: call_stream_refusal(scope.get("path", ""), blocks),
    "deep link": lambda scope, blocks: deep_link_refusal(blocks),
    "reload stream": lambda scope, blocks: reload_stream_refusal(blocks),
    "custom component": lambda scope, blocks: custom_component_refusal(scope.get("path", ""), blocks),
}
"""The checked routes whose request has no body to read: each one's refusal (a 404) from the scope alone."""


class MalformedRequestsRefused:
    """ASGI middleware: the requests listed in this module's docstring are answered here (422; 404 for a stream
    with nothing queued, an endpoint, a page or a custom component the app lacks; 413 for a body too long to check;
    400 for a header), with one line in the log; every other request goes on unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.requests import ClientDisconnect

        try:
            await self._checked(scope, receive, send)
        except ClientDisconnect:
            log.info("a client left before it had sent its whole request (%s); nothing to answer",
                     scope.get("method"))

    async def _checked(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            headers = scope.get("headers", [])
            why = forwarded_refusal(headers) or (boundary_refusal(headers) if scope.get("method") == "POST" else None)
            if why:
                await _refuse(send, 400, why, "header")
                return
            if (scope.get("method") in ("GET", "HEAD") and any(r in scope.get("path", "") for r in FILE_ROUTES)
                    and unreadable_range(headers)):
                log.debug("a Range Gradio's file route cannot read is dropped: the whole file is sent")
                scope = {**scope, "headers": [(k, v) for k, v in headers if k.lower() != b"range"]}
        route = _route(scope)
        blocks = _blocks(scope) if route else None
        if blocks is None:
            await self.app(scope, receive, send)
            return
        if route in _BODILESS:
            why = _BODILESS[route](scope, blocks)
            if why:
                await _refuse(send, 404, why, route)
                return
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        if body is None and messages[-1]["type"] == "http.request" and route != "json":
            await _refuse(send, 413, f"The body passes {MAX_CHECKED_BODY} bytes: a page's request names its "
                                     "files, it does not hold them.", route)
            return
        why = None if body is None else nonfinite_refusal(body)
        if body is not None and not why:
            if route == "join":
                why = join_refusal(body, blocks)
            elif route == "component" and _is_form(scope):
                fields = await _form_fields(scope, body)
                why = None if fields is None else component_form_refusal(fields, blocks)
            elif route == "component":
                why = component_refusal(body, blocks)
            elif route == "call":
                why = call_refusal(scope.get("path", ""), body, blocks,
                                   lambda: getattr(scope.get("app"), "api_info", None) or blocks.get_api_info())
        if why:
            await _refuse(send, 404 if why == UNKNOWN_ENDPOINT else 422, why, route)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


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
    """Stands in for the :mod:`traceback` module in a Gradio module (``gradio.queueing``): ``print_exc`` logs one
    line (``what`` failed, the exception's type, where it was raised and, when that is in a library, the app's own
    innermost frame) and, at DEBUG, the stack without the exception's message."""

    def __init__(self, what: str = "an event") -> None:
        self.what = what

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
        log.warning("%s failed: %s.%s%s", self.what, exc_type.__module__, exc_type.__qualname__, where)
        log.debug("its stack (the message left out):\n%s", "".join(traceback.format_list(frames)))

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)


QUIETED = {"gradio.queueing": "an event", "gradio.routes": "a direct call",
           "gradio.screen_recording_utils": "a screen recording's processing"}
"""The Gradio modules whose printed tracebacks :func:`quiet_event_failures` makes one line, and what failed there:
the queue's events; ``/run/<name>``, ``/api/<name>`` (an app with ``api_open``); ``/process_recording`` where ffmpeg
is installed (its ``remove_segment_start`` read as a number, the message quoting it)."""


def quiet_event_failures() -> None:
    """Make Gradio's queue log a failed event in one line (:class:`_OneLineTracebacks`), not as a printed traceback
    quoting the request's values, and the other modules of :data:`QUIETED` likewise; :func:`mixdemo.ui.launch_demo`
    calls it."""
    import importlib

    for name, what in QUIETED.items():
        module = importlib.import_module(name)
        if not isinstance(module.traceback, _OneLineTracebacks):
            module.traceback = _OneLineTracebacks(what)
