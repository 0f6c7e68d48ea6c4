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


def test_a_component_call_for_a_component_the_app_lacks_is_refused(blocks):
    def call(component: int) -> bytes:
        return json.dumps({"session_hash": "s", "component_id": component, "fn_name": "f", "data": None}).encode()

    assert gatekeeper.component_refusal(call(10**6), blocks) == "This app has no component 1000000."
    assert gatekeeper.component_refusal(call(next(iter(blocks.blocks))), blocks) is None
    assert gatekeeper.component_refusal(b"[]", blocks) is None


def test_a_stream_with_nothing_queued_is_refused(blocks):
    assert gatekeeper.stream_refusal(b"session_hash=nobody", blocks).startswith("Nothing is queued")
    assert gatekeeper.stream_refusal(b"", blocks) is None  # Gradio's 422: the parameter is required


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
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    assert run(_join(both, [1, "x"])) == [] and seen == [_join(both, [1, "x"])]


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
    import gradio.queueing
    import traceback

    monkeypatch.setattr(gradio.queueing, "traceback", traceback)
    gatekeeper.quiet_event_failures()
    first = gradio.queueing.traceback
    gatekeeper.quiet_event_failures()
    assert isinstance(first, gatekeeper._OneLineTracebacks) and gradio.queueing.traceback is first
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


def test_direct_and_simple_api_calls_are_refused_as_joins_are(blocks):
    """``/gradio_api/run/NAME`` (the page's call of an event outside the queue) and ``/gradio_api/call/NAME``
    answered an unknown event or endpoint, or too few inputs, with HTTP 500 and a traceback, as the join did."""
    both = next(i for i, fn in blocks.fns.items() if fn.api_name == "both")
    page_only = next(i for i, fn in blocks.fns.items() if fn.fn is None)
    assert gatekeeper.run_refusal("predict", _join(10**6, []), blocks) == "This app has no event 1000000."
    assert gatekeeper.run_refusal("predict", _join(both, [1]), blocks) == (
        f"Event {both} takes 2 inputs; the request gave 1.")
    assert "runs in the page alone" in gatekeeper.run_refusal("predict", _join(page_only, []), blocks)
    assert gatekeeper.run_refusal("predict", _join(both, [1, "x"]), blocks) is None
    assert gatekeeper.run_refusal("nosuch", _join(None, [1]), blocks) == "This app has no endpoint /nosuch."
    assert gatekeeper.run_refusal("both", _join(None, [1]), blocks) == "Event /both takes 2 inputs; the request gave 1."
    assert gatekeeper.run_refusal("both", _join(None, [1, "x"]), blocks) is None
    simple = json.dumps({"data": [1, "x"]}).encode()
    assert gatekeeper.call_refusal("nosuch", simple, blocks) == "This app has no endpoint /nosuch."
    assert gatekeeper.call_refusal("both", simple, blocks) is None
    assert gatekeeper.call_refusal("both", b"{}", blocks, v2=True) is None
    assert gatekeeper.call_refusal("nosuch", b"{}", blocks, v2=True) == "This app has no endpoint /nosuch."
    assert gatekeeper.call_refusal("both", b"[]", blocks) is None  # Gradio's 422


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/gradio_api/queue/join", ("join", "")), ("POST", "/root/gradio_api/queue/join/", ("join", "")),
    ("POST", "/gradio_api/run/predict", ("run", "predict")), ("POST", "/gradio_api/api/both/", ("run", "both")),
    ("POST", "/gradio_api/call/both", ("call", "both")), ("POST", "/gradio_api/call/v2/both", ("call/v2", "both")),
    ("GET", "/gradio_api/call/both/abc123", None), ("GET", "/gradio_api/run/predict", None),
    ("HEAD", "/gradio_api/queue/data", None), ("GET", "/gradio_api/queue/data", ("stream", "")),
    ("POST", "/gradio_api/upload", None)])
def test_the_routes_checked(method, path, expected):
    assert gatekeeper._route({"type": "http", "method": method, "path": path}) == expected
