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
    assert gatekeeper.stream_refusal(b"session_hash=", blocks).startswith("Nothing is queued")  # an empty session
    assert gatekeeper.stream_refusal(b"", blocks) is None  # Gradio's 422: the parameter is required


def test_a_call_s_stream_for_an_event_with_nothing_queued_is_refused(blocks, monkeypatch):
    """``GET /gradio_api/call/<name>/<event_id>``: refused unless the session Gradio finds for the event (its own,
    one still holding its id, or the id itself) has messages queued."""
    queue = blocks._queue
    for path in ("/gradio_api/call/both/nobody", "/gradio_api/call/v2/both/nobody", "/gradio_api/call/v2/nobody/"):
        assert gatekeeper.call_stream_refusal(path, blocks).startswith("Nothing is queued for this event")
        assert gatekeeper._route({"type": "http", "method": "GET", "path": path}) == "call stream"
    assert gatekeeper._route({"type": "http", "method": "POST", "path": "/gradio_api/call/both"}) is None
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
