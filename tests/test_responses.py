"""Responses API events (rechat/responses.py): a response object <-> its event stream.

`synthesize` is checked three ways: `assemble` gives the response back (a property proved with
hypothesis), the sequence numbers count up from 0, and the openai SDK's own stream accumulator
(the one behind `client.responses.stream(...)`) accepts the events and rebuilds the same output.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from rechat import responses as rs
from rechat.completion import _split

HYPO = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE = {"id": "resp_1", "object": "response", "created_at": 1741476542, "status": "completed",
        "error": None, "incomplete_details": None, "model": "gpt-4o-mini", "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}


def msg(id_: str, *texts: str) -> dict:
    return {"id": id_, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": t} for t in texts]}


EVERYTHING = {**BASE, "output": [
    {"id": "rs_1", "type": "reasoning", "summary": [
        {"type": "summary_text", "text": "**Plan**\n\nCall the weather tool for Paris, then answer."}],
     "content": [{"type": "reasoning_text", "text": "The user asks about Paris."}]},
    {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
     "name": "get_weather", "arguments": '{"city": "Paris", "units": "metric"}'},
    msg("msg_1", "Paris: 14 °C and cloudy, with light rain expected in the evening.", "Second."),
    {"id": "msg_2", "type": "message", "status": "completed", "role": "assistant",
     "content": [{"type": "refusal", "refusal": "I can't share that."}]},
    {"id": "ws_1", "type": "web_search_call", "status": "completed",
     "action": {"type": "search", "query": "paris weather"}},
]}


def sdk_final(events: list[dict]):
    """Feed events to the openai SDK's accumulator; return the final response it builds."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for e in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=copy.deepcopy(e)))
    return state._completed_response


def test_synthesized_events_are_what_the_sdk_accumulates():
    events = rs.synthesize(EVERYTHING)
    final = sdk_final(events)
    assert final.output_text == ("Paris: 14 °C and cloudy, with light rain expected in the "
                                 "evening.Second.")
    assert [i.type for i in final.output] == ["reasoning", "function_call", "message", "message",
                                              "web_search_call"]
    assert final.output[1].arguments == '{"city": "Paris", "units": "metric"}'
    assert rs.assemble(events) == EVERYTHING


def test_event_order_and_sequence_numbers():
    events = rs.synthesize({**BASE, "output": [msg("msg_1", "Hello world")]})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    created = events[0]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    added = events[2]["item"]
    assert (added["status"], added["content"]) == ("in_progress", [])
    assert events[4]["delta"] == "Hello world" and events[4]["logprobs"] == []
    assert events[-1]["response"] == {**BASE, "output": [msg("msg_1", "Hello world")]}
    assert all(list(e)[:2] == ["type", "sequence_number"] for e in events)


def test_long_texts_stream_in_pieces():
    text = "word " * 40
    events = rs.synthesize({**BASE, "output": [msg("m", text)]}, piece_chars=10)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == _split(text, 10) and len(deltas) > 10


@pytest.mark.parametrize("status,last", [("completed", "response.completed"),
                                         ("incomplete", "response.incomplete"),
                                         ("failed", "response.failed")])
def test_the_last_event_follows_the_status(status, last):
    events = rs.synthesize({**BASE, "status": status})
    assert events[-1]["type"] == last and rs.assemble(events)["status"] == status


def test_assemble_takes_the_items_of_output_item_done_when_the_final_response_has_none():
    events = rs.synthesize(EVERYTHING)
    events[-1] = {**events[-1], "response": {**EVERYTHING, "output": None}}
    assert rs.assemble(events) == EVERYTHING
    assert rs.assemble(events[:-1]) is None  # a stream that broke off has no final response


def test_piece_chars_must_be_positive():
    with pytest.raises(ValueError):
        rs.synthesize(BASE, piece_chars=0)


texts = st.text(max_size=60)
ids = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=8)
items = st.one_of(
    st.builds(lambda i, ts: msg("msg_" + i, *ts), ids, st.lists(texts, min_size=1, max_size=3)),
    st.builds(lambda i, a: {"id": "fc_" + i, "type": "function_call", "status": "completed",
                            "call_id": "call_" + i, "name": "f", "arguments": a}, ids, texts),
    st.builds(lambda i, ts: {"id": "rs_" + i, "type": "reasoning", "summary": [
        {"type": "summary_text", "text": t} for t in ts]}, ids, st.lists(texts, max_size=3)),
)


@given(st.lists(items, max_size=4).filter(
    lambda out: len({i["id"] for i in out}) == len(out)), st.integers(1, 30))
@settings(max_examples=150, **HYPO)
def test_assemble_inverts_synthesize_and_the_sdk_agrees(output, piece_chars):
    response = {**BASE, "output": output}
    events = rs.synthesize(response, piece_chars=piece_chars)
    assert rs.assemble(json.loads(json.dumps(events))) == response
    final = sdk_final(events)
    assert [i.id for i in final.output] == [i["id"] for i in output]
    assert final.output_text == "".join(p["text"] for i in output if i["type"] == "message"
                                        for p in i["content"])
