"""Requests refused before Gradio's routes, and failed events logged in one line (``mixdemo.gatekeeper``)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from mixdemo import gatekeeper


@pytest.fixture(scope="module")
def blocks():
    """A Blocks with one event of two inputs, one that runs in the page alone, and a state."""
    import gradio as gr

    with gr.Blocks() as demo:
        a, b = gr.Number(), gr.Textbox()
        out = gr.Textbox()
        gr.Button().click(lambda x, y: f"{x}{y}", [a, b], out, api_name="both")
        gr.Button().click(None, None, None, js="() => {}")
    return demo


def _join(fn: object, data: list) -> bytes:
    return json.dumps({"data": data, "fn_index": fn, "session_hash": "s", "event_data": None}).encode()


def test_a_join_is_refused_for_an_event_the_app_lacks_or_one_of_the_page_or_too_few_inputs(blocks):
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    page_only = next(i for i, fn in blocks.fns.items() if fn.fn is None)
    assert gatekeeper.join_refusal(_join(10**6, []), blocks) == "This app has no event 1000000."
    assert gatekeeper.join_refusal(_join(-1, []), blocks) == "This app has no event -1."
    assert gatekeeper.join_refusal(_join(str(both), [1]), blocks) == (  # Gradio's model reads "0" as 0
        f"Event {both} takes 2 inputs; the request gave 1.")
    assert "runs in the page alone" in gatekeeper.join_refusal(_join(page_only, []), blocks)


def test_a_well_formed_join_or_one_gradio_answers_itself_is_passed_on(blocks):
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    assert gatekeeper.join_refusal(_join(both, [1, "x"]), blocks) is None
    assert gatekeeper.join_refusal(_join(both, [1, "x", "extra"]), blocks) is None  # Gradio ignores extra inputs
    assert gatekeeper.join_refusal(b"{not json", blocks) is None  # Gradio's 422
    assert gatekeeper.join_refusal(json.dumps({"fn_index": both}).encode(), blocks) is None  # no data: its 422
    assert gatekeeper.join_refusal(_join(None, []), blocks) is None  # its 400


def test_a_join_or_a_call_with_an_empty_session_is_refused(blocks):
    """Gradio filed such an event under a session of its own id, then looked for it under the empty one: 500."""
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    body = json.loads(_join(both, [1, "x"]))
    empty = json.dumps({**body, "session_hash": ""}).encode()
    assert gatekeeper.join_refusal(empty, blocks) == gatekeeper.EMPTY_SESSION
    call = json.dumps({"data": [1, "x"], "session_hash": ""}).encode()
    assert gatekeeper.call_refusal("/gradio_api/call/both", call, blocks) == gatekeeper.EMPTY_SESSION


def test_a_call_by_name_is_refused_for_an_endpoint_the_app_lacks_or_arguments_it_does_not_take(blocks):
    """``/call/<name>``, ``/run/<name>``, ``/api/<name>``: an API name no event has (Gradio: FnIndexInferError quoting
    the name, 500), or an fn_index no event has (KeyError); ``/call/v2/<name>``: a name the API description lacks
    (KeyError) or arguments by name the endpoint does not take (TypeError)."""
    data = json.dumps({"data": [1, "x"]}).encode()
    for route in ("call", "run", "api"):
        assert gatekeeper.call_refusal(f"/gradio_api/{route}/both", data, blocks) is None
        assert gatekeeper.call_refusal(f"/gradio_api/{route}/nothing/", data, blocks) == gatekeeper.UNKNOWN_ENDPOINT
        assert gatekeeper._route({"type": "http", "method": "POST", "path": f"/gradio_api/{route}/x"}) == "call"
    with_index = json.dumps({"data": [], "fn_index": 10**6}).encode()
    assert gatekeeper.call_refusal("/gradio_api/run/both", with_index, blocks) == "This app has no event 1000000."
    assert gatekeeper.call_refusal("/gradio_api/call/both", b"{not json", blocks) is None  # Gradio's 422

    def v2(args: object) -> str | None:
        return gatekeeper.call_refusal("/gradio_api/call/v2/both", json.dumps(args).encode(), blocks)

    assert gatekeeper.call_refusal("/gradio_api/call/v2/nothing", b"{}", blocks) == gatekeeper.UNKNOWN_ENDPOINT
    names = [p["parameter_name"] for p in blocks.get_api_info()["named_endpoints"]["/both"]["parameters"]]
    assert v2(dict.fromkeys(names, 1)) is None and v2([1, 2]) is None  # a list: Gradio's 422
    assert v2({**dict.fromkeys(names, 1), "other": 1}).startswith("Endpoint /both takes these arguments by name:")
    assert v2({}).startswith("Endpoint /both takes")  # too few


def test_a_json_body_with_a_number_json_has_not_is_refused():
    """NaN, Infinity, or past a double's range (Python reads 1e400 as inf): FastAPI's 422 quoting it could not be
    written (its JSON has no such number), so Gradio answered 500."""
    for body in (b'{"fn_index": 1e400}', b'{"data": [NaN]}', b'[-Infinity]', b'{"a": {"b": [1, -1e999]}}'):
        assert gatekeeper.nonfinite_refusal(body).startswith("The body holds a number JSON has not"), body
    for body in (b'{"fn_index": 1e300, "data": [1.5, -0.0, 12345678901234567890]}', b"{not json", b"[" * 10**5):
        assert gatekeeper.nonfinite_refusal(body) is None, body[:20]
    json_post = {"type": "http", "method": "POST", "path": "/gradio_api/cancel", "headers": []}
    assert gatekeeper._route(json_post) == "json"
    form = [(b"content-type", b"multipart/form-data; boundary=x")]
    assert gatekeeper._route({**json_post, "path": "/gradio_api/upload", "headers": form}) is None


def test_a_request_is_refused_for_a_proxy_header_that_makes_no_url_or_a_form_boundary_too_long():
    """Gradio builds the app's URL from X-Forwarded-Host (``http://`` and its first value) or X-Gradio-Server:
    ``InvalidURL``, 500. A boundary past the multipart parser's limit: its ``FormParserError``, 500."""
    for value in (b"x:abc", b"[::1", b"example.org:1x, other"):
        assert gatekeeper.forwarded_refusal([(b"X-Forwarded-Host", value)]) == (
            "The x-forwarded-host header makes no URL.")
    assert gatekeeper.forwarded_refusal([(b"x-gradio-server", b"http://x:abc")]).startswith("The x-gradio-server")
    for fine in ([(b"x-forwarded-host", b"example.org:8080, [::1")], [(b"x-forwarded-host", b"")],
                 [(b"x-forwarded-host", b"a.org"), (b"x-forwarded-host", b"x:abc")],  # Gradio reads the first
                 [(b"x-gradio-server", b"https://example.org/app/")], [(b"host", b"x:abc")]):
        assert gatekeeper.forwarded_refusal(fine) is None, fine

    def form(boundary: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"multipart/form-data; boundary=" + boundary)]

    assert gatekeeper.boundary_refusal(form(b"b" * 257)) == "The form's boundary is longer than 256 characters."
    assert gatekeeper.boundary_refusal(form(b"b" * 70)) is None
    assert gatekeeper.boundary_refusal([(b"content-type", b"text/plain; boundary=" + b"b" * 300)]) is None


def test_a_range_gradio_s_file_route_cannot_read_is_dropped_from_a_file_request():
    """Gradio's file route split the Range after ``bytes=`` at its ``-`` into two: a list of ranges (or ``1-2-3``)
    was a ValueError, 500. The header is dropped (the whole file is sent); other requests keep theirs."""
    import asyncio

    for value in (b"bytes=0-1,2-3", b"bytes=1-2-3", b" bytes=0-1, 5-"):
        assert gatekeeper.unreadable_range([(b"Range", value)]), value
    for value in (b"bytes=0-1", b"bytes=5-", b"bytes=-5", b"bytes=abc", b"items=0-1,2-3"):
        assert not gatekeeper.unreadable_range([(b"range", value)]), value
    assert not gatekeeper.unreadable_range([(b"host", b"a-b-c")])

    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["headers"])

    for path in ("/gradio_api/file=/tmp/a.png", "/gradio_api/file/tmp/a.png", "/static/a.png"):
        scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"range", b"bytes=0-1,2-3"), (b"a", b"b")]}
        asyncio.run(gatekeeper.MalformedRequestsRefused(inner)(scope, None, None))
    assert seen == [[(b"a", b"b")], [(b"a", b"b")], [(b"range", b"bytes=0-1,2-3"), (b"a", b"b")]]


def test_a_component_call_for_a_component_the_app_lacks_is_refused(blocks):
    def call(component: int) -> bytes:
        return json.dumps({"session_hash": "s", "component_id": component, "fn_name": "f", "data": None}).encode()

    assert gatekeeper.component_refusal(call(10**6), blocks) == "This app has no component 1000000."
    assert gatekeeper.component_refusal(call(next(iter(blocks.blocks))), blocks) is None
    assert gatekeeper.component_refusal(b"[]", blocks) is None


def test_a_component_call_as_a_form_without_its_fields_or_for_a_component_the_app_lacks_is_refused(blocks):
    """Gradio read the fields of such a form unchecked: KeyError, or a ValidationError quoting the value (500)."""
    import asyncio

    known = next(iter(blocks.blocks))
    fields = {"session_hash": "s", "component_id": str(known), "fn_name": "f"}
    assert gatekeeper.component_form_refusal(fields, blocks) is None
    assert gatekeeper.component_form_refusal({**fields, "component_id": "1000000"}, blocks) == (
        "This app has no component 1000000.")
    needs = "A component call's form needs the fields component_id (a number), session_hash and fn_name."
    assert gatekeeper.component_form_refusal({**fields, "component_id": "Doe^Jane"}, blocks) == needs
    assert gatekeeper.component_form_refusal({"session_hash": "s"}, blocks) == needs

    boundary = "b0undary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields.items()).encode()
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nfile\r\n'.encode()
    scope = {"headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    assert asyncio.run(gatekeeper._form_fields(scope, body + f"--{boundary}--\r\n".encode())) == fields
    assert asyncio.run(gatekeeper._form_fields(scope, b"no form")) is None


def test_a_custom_component_s_code_is_refused_for_an_id_of_no_custom_component_of_the_app(blocks, tmp_path,
                                                                                          monkeypatch):
    """Gradio's route printed the request's path (its values) to the log, then answered 404, for any id; the
    built-in components' code comes with the page. A component class from outside Gradio passes."""
    import importlib.util

    import gradio as gr

    textbox = gr.Textbox.get_component_class_id()
    for component in (textbox, "Doe^Jane"):
        path = f"/gradio_api/custom_component/{component}/client/js/index.js"
        assert gatekeeper.custom_component_refusal(path, blocks) == "This app has no custom component of that id."
        assert gatekeeper._route({"type": "http", "method": "GET", "path": path}) == "custom component"

    # a component class from a package of its own, in a temporary folder: Gradio writes a .pyi stub beside the
    # source of each component class it meets (here, not beside this test)
    source = tmp_path / "a_custom_component.py"
    source.write_text("import gradio as gr\n\n\nclass Custom(gr.Textbox):\n    pass\n")
    spec = importlib.util.spec_from_file_location("a_custom_component", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "a_custom_component", module)
    spec.loader.exec_module(module)
    Custom = module.Custom

    with gr.Blocks() as custom:
        Custom()
    own = f"/gradio_api/custom_component/{Custom.get_component_class_id()}/client/js/index.js"
    assert gatekeeper.custom_component_refusal(own, custom) is None
    assert gatekeeper.custom_component_refusal(own, blocks) is not None


def test_the_app_s_page_is_refused_for_a_page_name_the_app_lacks(blocks):
    """``GET /?page=<name>``: Gradio looked the name up in its pages unchecked (KeyError quoting it, 500)."""
    assert gatekeeper.page_refusal(b"", blocks) is None and gatekeeper.page_refusal(b"page=", blocks) is None
    assert gatekeeper.page_refusal(b"__theme=dark&view=api", blocks) is None
    for query in (b"page=Doe%5EJane", b"page=&page=other"):
        assert gatekeeper.page_refusal(query, blocks) == "This app has no page of that name."
    for method in ("GET", "HEAD"):
        assert gatekeeper._route({"type": "http", "method": method, "path": "/"}) == "page"
    assert gatekeeper._route({"type": "http", "method": "GET", "path": "/app/", "root_path": "/app"}) == "page"
    assert gatekeeper._route({"type": "http", "method": "GET", "path": "/config"}) is None


def test_a_stream_with_nothing_queued_is_refused(blocks):
    assert gatekeeper.stream_refusal(b"session_hash=nobody", blocks).startswith("Nothing is queued")
    assert gatekeeper.stream_refusal(b"session_hash=", blocks).startswith("Nothing is queued")  # an empty session
    assert gatekeeper.stream_refusal(b"", blocks) is None  # Gradio's 422: the parameter is required


def test_a_stream_naming_two_sessions_is_checked_by_the_one_gradio_reads(blocks, monkeypatch):
    """Gradio's query parameters take the last of a repeated name: checking the first let a queued session's hash,
    followed by another's, through to Gradio's 'response already started' tracebacks."""
    monkeypatch.setitem(blocks._queue.pending_messages_per_session, "queued", object())
    assert gatekeeper.stream_refusal(b"session_hash=queued", blocks) is None
    assert gatekeeper.stream_refusal(b"session_hash=queued&session_hash=nobody", blocks).startswith("Nothing is queued")
    assert gatekeeper.stream_refusal(b"session_hash=nobody&session_hash=queued", blocks) is None


def test_a_call_s_stream_for_an_event_with_nothing_queued_is_refused(blocks, monkeypatch):
    """``GET /gradio_api/call/<name>/<event_id>``: refused unless the session Gradio finds for the event (its own,
    one still holding its id, or the id itself) has messages queued."""
    queue = blocks._queue
    for path in ("/gradio_api/call/both/nobody", "/gradio_api/call/v2/both/nobody", "/gradio_api/call/v2/nobody/"):
        assert gatekeeper.call_stream_refusal(path, blocks).startswith("Nothing is queued for this event")
        assert gatekeeper._route({"type": "http", "method": "GET", "path": path}) == "call stream"
    assert gatekeeper._route({"type": "http", "method": "POST", "path": "/gradio_api/call/both"}) == "call"
    monkeypatch.setitem(queue.pending_messages_per_session, "page", object())
    monkeypatch.setitem(queue.pending_event_ids_session, "page", {"ev1"})
    monkeypatch.setitem(queue.pending_messages_per_session, "ev2", object())  # a call without a session of its own
    assert gatekeeper.call_stream_refusal("/gradio_api/call/both/ev1", blocks) is None
    assert gatekeeper.call_stream_refusal("/gradio_api/call/both/ev2", blocks) is None


def test_the_middleware_answers_a_refusal_and_replays_a_passed_body(blocks):
    """Run as ASGI: a refused join gets 422 with its reason and never reaches the app; a passed one reaches it with
    its body whole, though read in two parts."""
    import asyncio

    class App:
        def get_blocks(self):
            return blocks

    seen = []

    async def inner(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        while message.get("more_body"):
            message = await receive()
            seen[-1] += message["body"]

    def run(body: bytes) -> list[dict]:
        sent, parts = [], [{"type": "http.request", "body": body[:5], "more_body": True},
                           {"type": "http.request", "body": body[5:], "more_body": False}]

        async def receive():
            return parts.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "app": App()}
        asyncio.run(gatekeeper.MalformedRequestsRefused(inner)(scope, receive, send))
        return sent

    refused = run(_join(10**6, []))
    assert refused[0]["status"] == 422 and json.loads(refused[1]["body"]) == {"detail": "This app has no event 1000000."}
    assert seen == []
    too_long = run(_join(10**6, ["x" * gatekeeper.MAX_CHECKED_BODY]))  # not checked: refused all the same
    assert too_long[0]["status"] == 413 and seen == []
    assert run(b'{"data": [], "fn_index": 1e400, "session_hash": "s"}')[0]["status"] == 422 and seen == []
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    assert run(_join(both, [1, "x"])) == [] and seen == [_join(both, [1, "x"])]


def test_a_client_that_leaves_during_its_body_is_one_line_in_the_log(caplog):
    """Gradio's parser raised Starlette's ClientDisconnect out of the route (a page closed during an upload): the
    server logged its traceback; the middleware ends the request quietly, with one line."""
    import asyncio

    from starlette.requests import ClientDisconnect

    async def inner(scope, receive, send):
        raise ClientDisconnect()

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": []}
    with caplog.at_level(logging.INFO, logger="mixdemo.gatekeeper"):
        asyncio.run(gatekeeper.MalformedRequestsRefused(inner)(scope, None, None))
    assert [r.getMessage() for r in caplog.records] == [
        "a client left before it had sent its whole request (POST); nothing to answer"]


def test_a_failed_event_is_one_line_in_the_log_without_its_message(caplog, capsys):
    """What Gradio's queue printed as a whole traceback, quoting the request's value in the message: one WARNING
    line naming the exception's type and where it was raised; the stack, without the message, at DEBUG."""
    stand_in = gatekeeper._OneLineTracebacks()
    value = "^".join(("Doe", "Jane"))  # a request's value: the stack quotes source lines, not values
    with caplog.at_level(logging.DEBUG, logger="mixdemo.gatekeeper"):
        try:
            raise ValueError(f"Value: {value} is not in the list of choices")
        except ValueError:
            stand_in.print_exc()
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and warning[0].startswith("an event failed: builtins.ValueError at test_gatekeeper.py:")
    assert "Doe^Jane" not in caplog.text and "Traceback" not in capsys.readouterr().err
    assert stand_in.format_exc is not None  # the module's other functions are the traceback module's


def test_quiet_event_failures_replaces_gradio_s_queue_printing_once(monkeypatch):
    """The queue's, the direct calls' and the screen recordings' printed tracebacks (``POST /process_recording``
    with a ``remove_segment_start`` that is no number printed ``ValueError`` quoting it, where ffmpeg is
    installed)."""
    import importlib
    import traceback

    modules = [importlib.import_module(name) for name in gatekeeper.QUIETED]
    assert [m.__name__ for m in modules] == ["gradio.queueing", "gradio.routes", "gradio.screen_recording_utils"]
    for module in modules:
        monkeypatch.setattr(module, "traceback", traceback)
    gatekeeper.quiet_event_failures()
    first = [module.traceback for module in modules]
    gatekeeper.quiet_event_failures()
    assert all(isinstance(f, gatekeeper._OneLineTracebacks) for f in first)
    assert [module.traceback for module in modules] == first and first[2].what == "a screen recording's processing"
    assert sys.modules["traceback"] is traceback  # the module itself is untouched


def test_an_event_or_component_that_gr_render_made_for_a_session_is_passed_on():
    """``gr.render`` adds its events and components to the session's copy of the app's configuration alone, where
    Gradio looks them up: a page's click on a rendered button was refused ("This app has no event 3")."""
    import gradio as gr
    from gradio.state_holder import StateHolder

    with gr.Blocks() as demo:
        n = gr.Number(value=1)

        @gr.render(inputs=[n])
        def rendered(k):
            gr.Button().click(lambda: None, None, None)

    holder = StateHolder()
    holder.set_blocks(demo)
    config = holder["s"].blocks_config  # the session of `_join`
    made = max(demo.fns) + 1  # what the page's render run adds to its session
    config.fns[made] = next(iter(demo.fns.values()))
    config.blocks[10**5] = n
    assert gatekeeper.join_refusal(_join(made, [None]), demo) is None
    component = {"session_hash": "s", "component_id": 10**5, "fn_name": "f", "data": None}
    assert gatekeeper.component_refusal(json.dumps(component).encode(), demo) is None
    other = json.loads(_join(made, [None]))
    other["session_hash"] = "another page"  # another session has no such event, and none is created for it
    assert gatekeeper.join_refusal(json.dumps(other).encode(), demo) == f"This app has no event {made}."
    assert "another page" not in holder.session_data
    component["session_hash"] = "another page"
    assert gatekeeper.component_refusal(json.dumps(component).encode(), demo) == "This app has no component 100000."


def test_a_failed_event_raised_in_a_library_names_the_app_s_own_line(caplog):
    """An error raised inside a library (here ``json``) was logged as ``... at decoder.py:353 in raw_decode``
    alone, which tells an operator nothing of the app's code that failed: its innermost frame there is named too."""
    def handler(text: str) -> object:
        return json.loads(text)

    with caplog.at_level(logging.WARNING, logger="mixdemo.gatekeeper"):
        try:
            handler("{Doe^Jane")
        except ValueError:
            gatekeeper._OneLineTracebacks().print_exc()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("an event failed: json.decoder.JSONDecodeError at decoder.py:"), line
    assert ", from tests/test_gatekeeper.py:" in line and line.endswith(" in handler"), line
    assert "Doe^Jane" not in line


def test_direct_calls_are_refused_as_joins_are_and_calls_by_name_of_no_endpoint(blocks):
    """``/gradio_api/run/NAME`` (the page's call of an event outside the queue) and ``/gradio_api/call/NAME``
    answered an unknown event or endpoint, or too few inputs, with HTTP 500 and a traceback, as the join did."""
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    page_only = next(i for i, fn in blocks.fns.items() if fn.fn is None)

    def refusal(path: str, body: bytes) -> str | None:
        return gatekeeper.call_refusal(path, body, blocks)

    run = "/gradio_api/run/predict"
    assert refusal(run, _join(10**6, [])) == "This app has no event 1000000."
    assert refusal(run, _join(both, [1])) == f"Event {both} takes 2 inputs; the request gave 1."
    assert "runs in the page alone" in refusal(run, _join(page_only, []))
    assert refusal(run, _join(both, [1, "x"])) is None
    assert refusal("/gradio_api/run/nosuch", _join(None, [1])) == gatekeeper.UNKNOWN_ENDPOINT
    assert refusal("/gradio_api/api/both", _join(None, [1])) == "Event /both takes 2 inputs; the request gave 1."
    assert refusal("/gradio_api/run/both", _join(None, [1, "x"])) is None
    simple = json.dumps({"data": [1, "x"]}).encode()
    assert refusal("/gradio_api/call/nosuch", simple) == gatekeeper.UNKNOWN_ENDPOINT
    assert refusal("/gradio_api/call/both", simple) is None
    assert refusal("/gradio_api/call/both", b"[]") is None  # Gradio's 422


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/gradio_api/queue/join", "join"), ("POST", "/root/gradio_api/queue/join/", "join"),
    ("POST", "/gradio_api/run/predict", "call"), ("POST", "/gradio_api/api/both/", "call"),
    ("POST", "/gradio_api/call/both", "call"), ("POST", "/gradio_api/call/v2/both", "call"),
    ("GET", "/gradio_api/call/both/abc123", "call stream"), ("GET", "/gradio_api/run/predict", None),
    ("HEAD", "/gradio_api/queue/data", None), ("GET", "/gradio_api/queue/data", "stream")])
def test_the_routes_checked(method, path, expected):
    assert gatekeeper._route({"type": "http", "method": method, "path": path}) == expected


def test_a_direct_call_of_a_queued_event_is_left_to_gradio_s_404_where_the_api_is_closed(blocks, monkeypatch):
    """With ``api_open=False`` (the app's) Gradio answers a direct call of a queued event with its own 404 ("join the
    queue"), whatever its inputs: no refusal here speaks of inputs it would never read."""
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    monkeypatch.setattr(blocks, "api_open", False, raising=False)
    monkeypatch.setattr(blocks.fns[both], "queue", True)
    assert gatekeeper.call_refusal("/gradio_api/run/predict", _join(both, []), blocks) is None
    assert gatekeeper.call_refusal("/gradio_api/run/both", _join(None, []), blocks) is None
    assert gatekeeper.call_refusal("/gradio_api/run/predict", _join(10**6, []), blocks) == (
        "This app has no event 1000000.")  # Gradio's KeyError, 500: still refused


def test_a_deep_link_is_refused_where_the_app_has_no_deep_link_button(blocks):
    """Gradio's route wrote a session's state into its cache for whoever named the session; an app without a deep
    link button never asks for one."""
    import gradio as gr

    assert gatekeeper.deep_link_refusal(blocks) == "This app makes no deep links."
    assert gatekeeper._route({"type": "http", "method": "GET", "path": "/gradio_api/deep_link"}) == "deep link"
    with gr.Blocks() as linking:
        gr.DeepLinkButton()
    assert gatekeeper.deep_link_refusal(linking) is None


def test_the_reload_stream_is_refused_outside_reload_mode(blocks, monkeypatch):
    """Gradio served ``/dev/reload`` in any mode: a stream that never ends, polled every 50 ms, as many as a client
    opened; its page opens one only in reload mode (``gradio app.py``, which sets ``dev_mode``)."""
    route = {"type": "http", "method": "GET", "path": "/gradio_api/dev/reload"}
    assert gatekeeper._route(route) == "reload stream"
    assert gatekeeper.reload_stream_refusal(blocks) == "This app does not run in reload mode."
    monkeypatch.setattr(blocks, "dev_mode", True)
    assert gatekeeper.reload_stream_refusal(blocks) is None


def test_a_refusal_quotes_a_long_id_by_its_length(blocks):
    """An unknown event's number went whole into the answer and the log line, thousands of digits if sent so."""
    assert gatekeeper.join_refusal(_join(10**30, []), blocks) == "This app has no event of 31 digits."
    assert gatekeeper.join_refusal(_join(-(10**19), []), blocks) == f"This app has no event {-(10**19)}."


def test_a_session_hash_longer_than_the_bound_is_refused(blocks):
    """Each session hash is a key of the app's store, which bounds how many sessions it keeps, not how long their
    keys are (260 kB ones were taken)."""
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    long = "s" * (gatekeeper.MAX_SESSION_HASH + 1)
    join = json.dumps({"data": [1, "x"], "fn_index": both, "session_hash": long}).encode()
    assert gatekeeper.join_refusal(join, blocks) == gatekeeper.LONG_SESSION
    assert gatekeeper.call_refusal("/gradio_api/call/both", json.dumps({"data": [1, "x"], "session_hash": long}).encode(),
                                   blocks) == gatekeeper.LONG_SESSION
    component = next(iter(blocks.blocks))
    call = json.dumps({"session_hash": long, "component_id": component, "fn_name": "f", "data": None}).encode()
    assert gatekeeper.component_refusal(call, blocks) == gatekeeper.LONG_SESSION
    fields = {"session_hash": long, "component_id": str(component), "fn_name": "f"}
    assert gatekeeper.component_form_refusal(fields, blocks) == gatekeeper.LONG_SESSION
    fine = json.dumps({"data": [1, "x"], "fn_index": both, "session_hash": "s" * gatekeeper.MAX_SESSION_HASH})
    assert gatekeeper.join_refusal(fine.encode(), blocks) is None


def test_the_requests_gradio_s_page_and_gradio_client_send_are_passed_on(blocks, monkeypatch):
    """What a legitimate caller sends, as recorded against the launched app (Gradio 6.31's page, gradio_client
    2.7.2, a proxy's headers): none of it is refused. The page's session hash is ``Math.random().toString(36)``'s
    digits (about 11 of [0-9a-z]), gradio_client's a uuid4 (36); the page's join carries ``trigger_id`` and, for a
    select, the click's ``event_data``; gradio_client's names an uploaded file."""
    import uuid

    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    page = {"data": [0.55, "patch"], "event_data": {"index": [76, 76], "value": None}, "fn_index": both,
            "trigger_id": 35, "session_hash": "lhsjvlmigh"}
    upload = {"path": "/tmp/gradio/abc/upload-0.npy", "url": None, "orig_name": "proxy.npy", "size": 65664,
              "mime_type": None, "is_stream": False, "meta": {"_type": "gradio.FileData"}}
    client = {"data": [1, upload], "fn_index": both, "session_hash": str(uuid.uuid4())}
    for body in (page, client, {**page, "event_data": None, "trigger_id": None, "batched": False}):
        raw = json.dumps(body, separators=(",", ":")).encode()
        assert gatekeeper.nonfinite_refusal(raw) is None and gatekeeper.join_refusal(raw, blocks) is None, body
    simple = json.dumps({"data": [1, upload], "session_hash": "abcdefghijk"}).encode()
    assert gatekeeper.call_refusal("/gradio_api/call/both/", simple, blocks) is None
    for value in (b"user-space.hf.space", b"user-space.hf.space:443", b"[::1]:7860", b"a.hf.space, b",
                  b"my_app:7860", b"127.0.0.1:7871, proxy.internal"):
        headers = [(b"x-forwarded-host", value), (b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"1.2.3.4")]
        assert gatekeeper.forwarded_refusal(headers) is None, value
    assert gatekeeper.boundary_refusal([(b"content-type",
                                        b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW")]) is None
    monkeypatch.setitem(blocks._queue.pending_messages_per_session, "lhsjvlmigh", object())
    assert gatekeeper.stream_refusal(b"session_hash=lhsjvlmigh&__sign=a.b.c", blocks) is None  # a private Space's
    assert not gatekeeper.unreadable_range([(b"range", b"bytes=0-")])  # a video's first request
