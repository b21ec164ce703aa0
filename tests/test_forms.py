"""The readable forms (rechat/forms.py and their markdown in rechat/sessionfile.py): exact round
trips proved with hypothesis, vectors kept bit for bit, errors at their line, the store's
choice of form and its appending of Responses turns, replies of hand-written answers, chat
answers with several choices, multipart bodies and blobs.

The golden files of the forms are in test_sessionfile.py (FORM_GOLDEN), beside the others.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from pathlib import Path

import mistune
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechat import answers, forms
from rechat import completion as cc
from rechat import responses as rs
from rechat import sessionfile as sf
from rechat.errors import SessionFormatError
from rechat.exchange import CHAT_PATH, Exchange, Request, Response
from rechat.fingerprint import fingerprint, normalize_message
from rechat.store import Store, multipart_fingerprint
from test_sessionfile import HYPO, function_names, json_values, texts

# ---------------------------------------------------------------------------------------------
# skeleton and merge


def _prune(value, choices):
    # A part of `value`: some keys of dicts dropped (recursively), lists kept whole in length.
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            c = next(choices, 0)
            if c % 3:
                out[k] = _prune(v, choices)
        return out
    if isinstance(value, list):
        return [_prune(v, choices) for v in value]
    return value


@given(json_values, st.lists(st.integers(0, 5), max_size=40))
@settings(max_examples=300, **HYPO)
def test_merge_of_the_skeleton_and_the_shown_part_is_the_value(value, picks):
    shown = _prune(value, iter(picks))
    skel = forms.skeleton(value, shown)
    back = shown if skel is forms.SAME else forms.merge(skel, shown)
    assert forms.same(back, value)
    assert forms.skeleton(value, value) is forms.SAME


def test_same_tells_types_apart():
    assert not forms.same(1, 1.0) and not forms.same(1, True) and not forms.same({"a": 1}, {"a": 1.0})
    assert forms.same({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})


def test_merge_keeps_the_shown_length_of_lists():
    assert forms.merge({"c": [{"x": 1}, {"x": 2}]}, {"c": [{"t": "a"}]}) == {"c": [{"x": 1, "t": "a"}]}


# ---------------------------------------------------------------------------------------------
# Exact round trips of every form (what store.record relies on, and falls back from)

ROLES = ["user", "assistant", "system", "developer", "critic"]
extras = st.dictionaries(st.sampled_from(["id", "status", "phase", "x", "Foo", "my key"]),
                         json_values, max_size=2)
parts = st.one_of(
    st.builds(lambda t, x, e: {"type": t, "text": x, **e},
              st.sampled_from(["input_text", "output_text", "summary_text", "text"]), texts,
              st.sampled_from([{}, {"annotations": []}, {"annotations": [], "logprobs": []},
                               {"annotations": [{"type": "url_citation", "url": "u"}]}])),
    st.builds(lambda x: {"type": "refusal", "refusal": x}, texts),
    st.builds(lambda u, e: {"type": "input_image", "image_url": u, **e}, texts,
              st.sampled_from([{}, {"detail": "auto"}, {"detail": "a\nb"}, {"file_id": None}])),
    st.builds(lambda f: {"type": "input_file", "file_id": f}, texts), json_values)
messages = st.builds(
    lambda role, typ, content, e: {**e, "role": role, **typ, **content},
    st.sampled_from(ROLES), st.sampled_from([{}, {"type": "message"}, {"type": "other"}]),
    st.one_of(st.just({}), st.builds(lambda c: {"content": c}, st.one_of(
        texts, st.lists(parts, max_size=3), json_values))), extras)
calls = st.builds(
    lambda n, c, a, e: {"type": "function_call", "name": n, **c, **a, **e}, function_names,
    st.sampled_from([{}, {"call_id": "call_1"}, {"call_id": 7}, {"call_id": "a b"}]),
    st.one_of(st.just({}), st.builds(lambda a: {"arguments": a}, st.one_of(texts, json_values))),
    extras)
outputs = st.builds(lambda c, o, e: {"type": "function_call_output", **c, **o, **e},
                    st.sampled_from([{}, {"call_id": "call_1"}]),
                    st.one_of(st.just({}), st.builds(lambda o: {"output": o},
                                                     st.one_of(texts, json_values))), extras)
reasonings = st.builds(
    lambda s, c, e: {"type": "reasoning", **s, **c, **e},
    st.one_of(st.just({}), st.builds(lambda ts: {"summary": [{"type": "summary_text", "text": t}
                                                              for t in ts]}, st.lists(texts, max_size=2)),
              st.builds(lambda p: {"summary": p}, st.lists(parts, max_size=2))),
    st.one_of(st.just({}), st.builds(lambda ts: {"content": [{"type": "reasoning_text", "text": t}
                                                              for t in ts]}, st.lists(texts, max_size=2))),
    st.sampled_from([{}, {"encrypted_content": "gAAAA=="}, {"id": "rs_1"}]))
others = st.builds(lambda t, rest: {"type": t, **rest},
                   st.one_of(st.sampled_from(["web_search_call", "item_reference", "input",
                                              "item", "user", "Bad Type", "a.b"]), texts),
                   st.dictionaries(st.sampled_from(["id", "status", "action", "type2"]),
                                   json_values, max_size=2))
items = st.one_of(messages, calls, outputs, reasonings, others, json_values)
params = st.dictionaries(st.sampled_from(["model", "tools", "temperature", "reasoning", "store",
                                          "text", "metadata", "x"]), json_values, max_size=3)


def _round_trip(form: str, caps: list[forms.Capture]) -> None:
    text = sf.render_form(form, "POST /v1/x", caps[0].params, [c.turn for c in caps])
    s = sf.parse(text, "t.md")
    assert (s.kind, s.form, s.params) == ("generic", form, caps[0].params)
    assert len(s.exchanges) == len(caps)
    for ex, cap in zip(s.exchanges, caps):
        assert forms.same(ex.request, cap.request), (ex.request, cap.request)
        assert forms.matches(form, ex.request, ex.answer, cap), (ex.answer, cap.answer)
        assert ex.meta == cap.turn.meta


@given(params, st.lists(st.tuples(
    st.one_of(st.just({}), st.builds(lambda i: {"instructions": i}, st.one_of(texts, json_values))),
    st.one_of(st.just({}), st.builds(lambda i: {"input": i},
                                     st.one_of(texts, st.lists(items, max_size=4), json_values))),
    st.sampled_from([{}, {"previous_response_id": "resp_1"}, {"previous_response_id": None},
                     {"previous_response_id": "a b\n"}]),
    st.dictionaries(st.sampled_from(["id", "status", "usage", "x"]), json_values, max_size=2),
    st.lists(items, max_size=4), st.booleans()), min_size=1, max_size=2))
@settings(max_examples=400, **HYPO)
def test_responses_round_trip_exactly(params, turns):
    caps = []
    for instructions, inp, prev, resp_extra, output, streamed in turns:
        request = {**params, **instructions, **inp, **prev, "stream": streamed}
        response = {"object": "response", **resp_extra, "output": output}
        events = None
        if streamed:
            events = [json.dumps(e) for e in rs.synthesize(response)]
            response = None
        cap = forms.capture("responses", request, response, events, {"at": "t"})
        assert cap is not None
        caps.append(cap)
    _round_trip("responses", caps)


completion_choices = st.lists(st.builds(
    lambda t, i, e: {"text": t, **i, "logprobs": None, "finish_reason": "stop", **e},
    st.one_of(texts, json_values), st.sampled_from([{}, {"index": 0}, {"index": 5}, {"index": "x"}]),
    st.sampled_from([{}, {"logprobs": {"tokens": ["a"], "token_logprobs": [-0.5]}}])),
    min_size=1, max_size=3)


@given(params, st.one_of(texts, st.lists(texts, min_size=1, max_size=3), json_values),
       completion_choices, st.booleans())
@settings(max_examples=300, **HYPO)
def test_completions_round_trip_exactly(params, prompt, choices, streamed):
    request = {**params, "prompt": prompt}
    response = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{**c, "index": i} if streamed else c for i, c in enumerate(choices)]}
    events = None
    if streamed:
        if not all(isinstance(c["text"], str) for c in choices):
            return  # streamed texts are strings
        events = [json.dumps(c) for c in cc.synthesize_text(response)] + ["[DONE]"]
        response = None
    cap = forms.capture("completion", request, response, events, {})
    assert cap is not None
    _round_trip("completion", [cap])


f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
f64 = st.floats(allow_nan=False, allow_infinity=False)
vector_lists = st.one_of(
    st.integers(1, 6).flatmap(lambda d: st.lists(st.lists(f32, min_size=d, max_size=d),
                                                 min_size=1, max_size=4)),
    st.integers(1, 6).flatmap(lambda d: st.lists(st.lists(f64, min_size=d, max_size=d),
                                                 min_size=1, max_size=4)),
    st.integers(1, 6).flatmap(lambda d: st.lists(st.binary(min_size=4 * d, max_size=4 * d).map(
        lambda b: base64.b64encode(b).decode()), min_size=1, max_size=4)),
    st.lists(st.one_of(st.lists(f64, max_size=3), st.text(max_size=8), json_values),
             min_size=1, max_size=3))


@given(params, st.one_of(texts, st.lists(texts, min_size=1, max_size=3), json_values), vector_lists)
@settings(max_examples=300, **HYPO)
def test_embeddings_round_trip_exactly(params, inp, vectors):
    request = {**params, "input": inp}
    response = {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                           for i, v in enumerate(vectors)], "model": "e"}
    cap = forms.capture("embedding", request, response, None, {})
    assert cap is not None
    _round_trip("embedding", [cap])
    s = sf.parse(sf.render_form("embedding", "POST /v1/embeddings", cap.params, [cap.turn]))
    got = json.loads(forms.json_body("embedding", s.exchanges[0].answer, cap.turn.meta, {}, ""))
    assert forms.same(got, response)  # the reply: every float and every base64 string exact


@pytest.mark.parametrize("values,attrs", [
    ([[0.5, -0.25]], {"count": 1, "dims": 2, "dtype": "float32", "format": "float"}),
    ([[0.1, 0.2]], {"count": 1, "dims": 2, "dtype": "float64", "format": "float"}),  # not float32
    ([[1e300]], {"count": 1, "dims": 1, "dtype": "float64", "format": "float"}),
    ([base64.b64encode(struct.pack("<2f", 1, 2)).decode()] * 3,
     {"count": 3, "dims": 2, "dtype": "float32", "format": "base64"}),
])
def test_vectors_are_packed_exactly(values, attrs):
    got, text = forms.encode_vectors(values)
    assert got == attrs
    v = forms.Vectors.read(got, text, 1)
    assert v.values() == values


@pytest.mark.parametrize("values", [
    [], [[]], [[1, 2]], [[0.5], [0.5, 0.5]], [[True]], ["QUJD"], ["QUJDRA"],  # unpadded
    ["QUJDRA==", [0.5]], [None],
])
def test_vectors_without_a_compact_form(values):
    assert forms.encode_vectors(values) is None


def test_vectors_decode_on_first_use_only():
    _, text = forms.encode_vectors([[0.5] * 256] * 100)
    v = forms.Vectors.read({"count": 100, "dims": 256}, text, 1)
    assert v._raw is None
    assert v.values()[99] == [0.5] * 256 and v._text is None


# ---------------------------------------------------------------------------------------------
# Errors at their line

RESP_HEAD = "---\nrechat:\n  endpoint: POST /v1/responses\n  kind: responses\n---\n"  # 5 lines
EMB_HEAD = "---\nrechat:\n  endpoint: POST /v1/embeddings\n  kind: embedding\n---\n"
CMP_HEAD = "---\nrechat:\n  endpoint: POST /v1/completions\n  kind: completion\n---\n"


@pytest.mark.parametrize("text,line,words", [
    ("---\nrechat:\n  endpoint: POST /v1/responses\n  kind: respones\n---\n", 5,
     ["rechat.kind", "respones"]),
    (RESP_HEAD + "## response\n### function_call\n<blockquote>\n{}\n</blockquote>\n", 7,
     ["function name"]),
    (RESP_HEAD + "### user\n#### bogus\n<blockquote>\nx\n</blockquote>\n", 8, ["#### bogus"]),
    (RESP_HEAD + "### user\n<blockquote>\na\n</blockquote>\n<blockquote>\nb\n</blockquote>\n"
     "## response\n", 10, ["second content block"]),
    (RESP_HEAD + "### reasoning\n#### summary_text\n### user\n", 7, ["#### summary_text", "no block"]),
    (RESP_HEAD + "<!-- rechat:fields {} -->\n", 6, ["rechat:fields"]),
    (RESP_HEAD + "### user\n<!-- rechat:fields [] -->\n", 7, ["JSON object"]),
    (RESP_HEAD + "## response\n### item\n```json\n{nope\n```\n", 8, ["JSON"]),
    (RESP_HEAD + "<!-- rechat:response {} -->\n", 6, ["outside a turn"]),
    (RESP_HEAD + "## request foo\n", 6, ["unexpected 'foo'"]),
    (RESP_HEAD + "<blockquote>\nx\n</blockquote>\n", 6, ["before any ### section"]),
    (RESP_HEAD + "### input\n<blockquote>\nx\n</blockquote>\n### user\n<blockquote>\ny\n"
     "</blockquote>\n## response\n", 6, ["both ### input and input items"]),
    (CMP_HEAD + "### prompt\n<blockquote>\nx\n</blockquote>\n### answer\n", 10,
     ["unknown section ### answer", "prompt, completion"]),
    (EMB_HEAD + "### input index=1\n<blockquote>\nx\n</blockquote>\n### embeddings\n"
     "```json\n[[1.0]]\n```\n", 6, ["index=0"]),
    (EMB_HEAD + "### input\n<blockquote>\nx\n</blockquote>\n### embeddings count=2 dims=4\n"
     "```base64\nAAAA\n```\n", 12, ["base64 characters", "2 vectors of 4 float32"]),
    (EMB_HEAD + "### input\n<blockquote>\nx\n</blockquote>\n### embeddings dims=4\n"
     "```base64\nAAAA\n```\n", 10, ["count=N dims=D"]),
    (EMB_HEAD + "### embeddings\n```json\n{}\n```\n", 7, ["```json list"]),
])
def test_form_errors_are_reported_at_their_line(text, line, words):
    with pytest.raises(SessionFormatError) as e:
        sf.parse(text, "s.md")
    assert e.value.line == line, e.value
    for w in words:
        assert w in e.value.message, e.value


def test_notes_are_ignored_in_the_forms():
    text = (RESP_HEAD + "# A title\n\nSome words.\n\n## Notes\n\n```python\nprint(1)\n```\n\n"
            "### input\n<blockquote>\nhi\n</blockquote>\n## response\n### assistant\n"
            "<blockquote>\nyo\n</blockquote>\n")
    [ex] = sf.parse(text).exchanges
    assert ex.request == {"input": "hi"}
    assert ex.answer == {"output": [{"role": "assistant", "content": [
        {"type": "output_text", "text": "yo"}]}]}


def test_a_turn_without_an_answer_is_not_an_exchange():
    text = RESP_HEAD + "### input\n<blockquote>\nhi\n</blockquote>\n"
    assert sf.parse(text).exchanges == []


# ---------------------------------------------------------------------------------------------
# Replies


def _answer(text: str, i: int = 0, file: str = "s.md") -> answers.FormAnswer:
    s = sf.parse(text, file)
    ex = s.exchanges[i]
    return answers.FormAnswer(session=file, index=i, line=ex.line, kind=s.form, meta=ex.meta,
                              request=ex.request, data=ex.answer,
                              headers=[tuple(h) for h in ex.meta.get("headers", [])])


def _req(path: str, **body) -> Request:
    return Request("POST", path, body=json.dumps(body).encode())


def test_a_hand_written_completion_gets_defaults_and_streams():
    a = _answer(CMP_HEAD + "### prompt\n<blockquote>\nHi\n</blockquote>\n### completion\n"
                "<blockquote>\n there, friend\n</blockquote>\n")
    obj = json.loads(answers.generic_reply(a, _req("/v1/completions", model="m", prompt="Hi")).body)
    assert obj["object"] == "text_completion" and obj["model"] == "m"
    assert obj["choices"] == [{"text": " there, friend", "index": 0, "logprobs": None,
                               "finish_reason": "stop"}]
    assert obj["id"] == f"cmpl-rechat-{forms.seed_of('s.md', 0)}"
    reply = answers.generic_reply(a, _req("/v1/completions", model="m", prompt="Hi", stream=True,
                                          stream_options={"include_usage": True}))
    assert reply.events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in reply.events[:-1]]
    assert cc.assemble_text(chunks)["choices"] == obj["choices"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_without_the_request_a_form_answer_replies_as_it_was_recorded():
    text, _ = _golden("responses_turns.md")
    plain, streamed = _answer(text, 0), _answer(text, 1)
    assert answers.generic_reply(plain).events is None
    reply = answers.generic_reply(streamed)
    assert reply.events[0].startswith(b"event: response.created\ndata: {")
    assert reply.headers[0] == ("Content-Type", "text/event-stream; charset=utf-8")
    assert answers.generic_reply(streamed, _req("/v1/responses", stream=False)).events is None


def test_recorded_headers_are_replayed_but_not_the_content_type():
    text, _ = _golden("responses_turns.md")
    reply = answers.generic_reply(_answer(text, 0), _req("/v1/responses", stream=True))
    assert ("x-request-id", "req_1") in reply.headers
    assert [v for k, v in reply.headers if k.lower() == "content-type"] == \
        ["text/event-stream; charset=utf-8"]


def _golden(name: str):
    from test_sessionfile import form_golden
    return form_golden(name)


# ---------------------------------------------------------------------------------------------
# The store: which form, appending turns, falling back


def _resp_exchange(body: dict, response: dict | None = None, events: list | None = None) -> Exchange:
    r = (Response(200, [("Content-Type", "application/json")], json.dumps(response).encode())
         if events is None else Response(200, [("Content-Type", "text/event-stream")],
                                         events=[json.dumps(e) for e in events]))
    return Exchange(_req("/v1/responses", **body), r, upstream="https://api.openai.com/v1")


def _response(n: int, text: str) -> dict:
    return {"id": f"resp_{n}", "object": "response", "status": "completed", "output": [
        {"id": f"msg_{n}", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": text, "annotations": []}]}]}


def test_turns_linked_by_previous_response_id_share_a_file(tmp_path):
    store = Store([str(tmp_path)])

    async def go():
        f1 = store.record(_resp_exchange({"model": "m", "input": "one"}, _response(1, "A")))
        f2 = store.record(_resp_exchange({"model": "m", "input": "two",
                                          "previous_response_id": "resp_1"}, _response(2, "B")))
        f3 = store.record(_resp_exchange({"model": "m", "input": "three", "stream": True,
                                          "previous_response_id": "resp_2"},
                                         events=rs.synthesize(_response(3, "C"))))
        f4 = store.record(_resp_exchange({"model": "other", "input": "four",
                                          "previous_response_id": "resp_3"}, _response(4, "D")))
        await store.flush()
        return f1, f2, f3, f4

    f1, f2, f3, f4 = asyncio.run(go())
    assert f1 == f2 == f3 != f4  # other params: a file of its own
    text = Path(f1).read_text()
    assert text.count("## request") == 3 and "## request previous_response_id=resp_2\n" in text
    assert "## request previous_response_id=resp_3\n" in Path(f4).read_text()
    fresh = Store([str(tmp_path)])
    fresh.load()
    assert fresh.errors == {} and fresh.response_ids == {"resp_1": f1, "resp_2": f1,
                                                         "resp_3": f1, "resp_4": f4}
    hit = fresh.lookup(_req("/v1/responses", model="m", input="three",
                            previous_response_id="resp_2"))
    assert json.loads(answers.generic_reply(hit.answer, _req("/v1/responses")).body)["id"] == "resp_3"


def test_an_exchange_a_form_cannot_hold_is_kept_in_the_generic_form(tmp_path):
    store = Store([str(tmp_path)])

    async def go():
        a = store.record(Exchange(_req("/v1/embeddings", input="x"),
                                  Response(200, body=b'{"data": [1]}')))
        b = store.record(Exchange(_req("/v1/responses", input="x", rechat=1),
                                  Response(200, body=json.dumps(_response(1, "A")).encode())))
        c = store.record(Exchange(_req("/v1/embeddings", input="x"), Response(200, body=json.dumps(
            {"object": "list", "data": [{"embedding": [0.5]}]}).encode())))  # no object/index
        await store.flush()
        return a, b, c

    for f in asyncio.run(go()):
        s = sf.read(f)
        assert (s.kind, s.form) == ("generic", None), f


def test_multipart_fingerprint_equals_the_fingerprint_of_the_bytes():
    body = (b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xc3\xa9.wav\"\r\n\r\n"
            b"\x00\x01\r\n--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw\r\n--b0--\r\n")
    parts = [(h, hashlib.sha256(c).hexdigest()) for h, c in forms_parts(body)]
    assert multipart_fingerprint("POST", "/v1/audio/transcriptions", "a=1", parts) == \
        fingerprint("POST", "/v1/audio/transcriptions", "a=1", body)


def forms_parts(body: bytes):
    from rechat.fingerprint import multipart_parts
    return multipart_parts(body)


multipart_contents = st.one_of(st.binary(max_size=40), texts.map(lambda t: t.encode()),
                               st.sampled_from([b"", b"\r\n", b"--", b"\r\n--x", b"\xff" * 70]))


@given(st.lists(st.tuples(st.sampled_from([
    b'Content-Disposition: form-data; name="a"', b'Content-Disposition: form-data; name="f"; '
    b'filename="\xc3\xa9"\r\nContent-Type: x/y', b"X: \xff"]), multipart_contents),
    min_size=1, max_size=4), st.sampled_from([b"\r\n", b"", b"\r\n\r\n"]),
    st.sampled_from(["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a'b()+_,-./:=?"]))
@settings(max_examples=200, **HYPO)
def test_multipart_bodies_round_trip_exactly_with_and_without_blobs(tmp_path_factory, parts, end,
                                                                    boundary):
    body = sf._multipart_bytes(boundary.encode(), parts, end)
    ex = sf.GenericExchange(body, 200, b"{}", {})
    for blob_min in (sf.BLOB_MIN, 16):
        blobs: dict[str, bytes] = {}
        text = sf.render_generic("POST /v1/files", [ex], blobs, blob_min)
        folder = tmp_path_factory.mktemp("s")
        for sha, data in blobs.items():
            sf.write_blob(str(folder), sha, data)
        s = sf.parse(text, str(folder / "s.md"))
        got = s.exchanges[0]
        assert got.request_body == body
        key = (multipart_fingerprint("POST", "/v1/files", "", got.parts) if got.parts is not None
               else fingerprint("POST", "/v1/files", "", got.request_body))
        assert key == fingerprint("POST", "/v1/files", "", body)


def test_a_missing_blob_is_reported_when_the_body_is_needed(tmp_path):
    from test_sessionfile import SAMPLES
    text = (SAMPLES / "generic_upload.md").read_text()
    s = sf.parse(text, str(tmp_path / "moved.md"))  # no blobs/ beside it: the key still works
    assert s.exchanges[0].parts is not None
    with pytest.raises(FileNotFoundError, match="blob fdeab9"):
        s.exchanges[0].request_body
    store = Store([str(tmp_path)])
    (tmp_path / "moved.md").write_text(text)
    store.load()
    assert store.errors == {} and store.answer_count == 1
    from test_sessionfile import UPLOAD
    assert store.lookup(Request("POST", "/v1/audio/transcriptions", body=UPLOAD.replace(
        b"rechat-boundary", b"other-boundary-123"))) is not None


def test_blobs_are_written_once_and_before_their_session(tmp_path):
    big = os.urandom(sf.BLOB_MIN)
    body = sf._multipart_bytes(b"xyz", [(b'Content-Disposition: form-data; name="file"', big)],
                               b"\r\n")
    store = Store([str(tmp_path)])
    written = []
    real = sf.write_atomic

    def spy(file, text):
        written.append(os.path.basename(os.path.dirname(file)) + "/" + os.path.basename(file)[:6])
        real(file, text)

    async def go():
        sf.write_atomic = spy
        try:
            for _ in range(2):
                store.record(Exchange(Request("POST", "/v1/files", body=body),
                                      Response(200, body=b'{"id": "file-1"}')), None, {"at": "t"})
            await store.flush()
        finally:
            sf.write_atomic = real

    asyncio.run(go())
    sha = hashlib.sha256(big).hexdigest()
    assert os.listdir(tmp_path / "blobs") == [sha]
    assert written[0] == f"blobs/{sha[:6]}" and written.count(f"blobs/{sha[:6]}") == 1


# ---------------------------------------------------------------------------------------------
# mistune's fenced code blocks, found with str.find


@given(st.lists(st.sampled_from(["```", "````", " ```", "   ```", "    ```", "``` x", "```  ",
                                 "```\t", "~~~", "text", "", "`", "``", "a```", "```json",
                                 "```\r", "````````"]), max_size=12),
       st.sampled_from(["```", "````", "~~~", "  ```"]), st.sampled_from(["", "json", "base64"]))
@settings(max_examples=500, **HYPO)
def test_fenced_code_is_read_as_mistune_reads_it(lines, opening, info):
    text = "\n".join([opening + info, *lines]) + "\n\n### x\n"
    ours = _tokens(sf._parser, text)
    theirs = _tokens(mistune.block_parser.BlockParser(), text)
    assert [(t.get("raw"), t.get("attrs")) for t in ours if t["type"] == "block_code"] == \
        [(t.get("raw"), t.get("attrs")) for t in theirs if t["type"] == "block_code"]


def _tokens(parser, text: str) -> list[dict]:
    from mistune.core import BlockState
    state = BlockState()
    state.process(text)
    parser.parse(state)
    return state.tokens


# ---------------------------------------------------------------------------------------------
# Chat answers with several choices (n > 1)

Q = {"role": "user", "content": "Pick"}


def _chat_ex(response: dict | None = None, events: list | None = None) -> Exchange:
    body = json.dumps({"model": "m", "n": 2, "messages": [Q]}).encode()
    r = (Response(200, body=json.dumps(response).encode()) if events is None
         else Response(200, events=events, event_ms=[1.0] * len(events)))
    return Exchange(Request("POST", CHAT_PATH, body=body), r)


TWO = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Red", "refusal": None},
     "logprobs": None, "finish_reason": "stop"},
    {"index": 1, "message": {"role": "assistant", "content": "Blue", "refusal": None},
     "logprobs": None, "finish_reason": "length"}]}


def test_chat_answer_shows_every_choice_and_hides_only_what_is_not_shown():
    message, meta = answers.chat_answer(_chat_ex(TWO))
    assert message == {"role": "assistant", "content": "Red"}
    assert meta["choices"] == [{"role": "assistant", "content": "Blue"}]
    assert [c["message"] for c in meta["completion"]["choices"]] == [{"refusal": None}] * 2
    chunks = cc.synthesize(TWO, interleave=True)
    message, meta = answers.chat_answer(_chat_ex(events=[json.dumps(c) for c in chunks] + ["[DONE]"]))
    assert message["content"] == "Red" and meta["choices"] == [{"role": "assistant", "content": "Blue"}]


def test_several_choices_are_recorded_and_replayed_in_and_out_of_a_stream(tmp_path):
    store = Store([str(tmp_path)])

    async def go():
        f = store.record(_chat_ex(TWO), *answers.chat_answer(_chat_ex(TWO)))
        await store.flush()
        return f

    f = asyncio.run(go())
    text = Path(f).read_text()
    assert "### assistant\n\n<blockquote>\n\nRed\n" in text
    assert "### assistant choice=1\n\n<blockquote>\n\nBlue\n" in text
    fresh = Store([str(tmp_path)])
    fresh.load()
    req = Request("POST", CHAT_PATH, body=json.dumps({"model": "m", "n": 2, "messages": [Q]}).encode())
    hit = fresh.lookup(req, play=False)
    assert json.loads(answers.chat_reply(hit.answer, req).body) == TWO
    sreq = Request("POST", CHAT_PATH, body=json.dumps(
        {"model": "m", "n": 2, "messages": [Q], "stream": True}).encode())
    chunks = [json.loads(e[6:]) for e in answers.chat_reply(hit.answer, sreq).events[:-1]]
    assert [c["choices"][0]["index"] for c in chunks][:4] == [0, 1, 0, 1]
    assert cc.assemble(chunks)["choices"] == TWO["choices"]


def test_a_choice_section_must_follow_its_answer():
    with pytest.raises(SessionFormatError, match="must follow"):
        sf.parse("### user\n<blockquote>\nx\n</blockquote>\n### assistant choice=1\n")
    with pytest.raises(SessionFormatError, match="only written on ### assistant"):
        sf.parse("### user choice=1\n<blockquote>\nx\n</blockquote>\n")
    m = {"role": "assistant", "content": "x", "choice": 1}  # a field named choice stays a field
    assert sf.parse(sf.render_chat({}, [Q, m])).messages[1] == m


def test_old_recordings_with_several_choices_keep_replaying_them():
    # Recorded before choices were shown: choice 1 whole in the hidden completion.
    meta = {"completion": {**TWO, "choices": [{**TWO["choices"][0], "message": {"refusal": None}},
                                              TWO["choices"][1]]}}
    text = sf.render_chat({"model": "m"}, [Q, {"role": "assistant", "content": "Red"}], {1: meta})
    s = sf.parse(text)
    a = answers.Answer(session="s.md", index=0, line=1, kind="chat", message=s.messages[1],
                       meta=s.responses[1])
    assert answers.completion_for(a, _chat_req())["choices"] == TWO["choices"]


def _chat_req() -> Request:
    return Request("POST", CHAT_PATH, body=json.dumps({"model": "m", "messages": [Q]}).encode())


def test_edits_to_a_choice_are_served():
    meta = dict(answers.chat_answer(_chat_ex(TWO))[1])
    text = sf.render_chat({"model": "m"}, [Q, {"role": "assistant", "content": "Red"}], {1: meta})
    s = sf.parse(text.replace("\nBlue\n", "\nGreen, edited\n"))
    a = answers.Answer(session="s.md", index=0, line=1, kind="chat", message=s.messages[1],
                       meta=s.responses[1])
    got = answers.completion_for(a, _chat_req())
    assert [c["message"]["content"] for c in got["choices"]] == ["Red", "Green, edited"]
    assert normalize_message(got["choices"][1]["message"]) == {"role": "assistant",
                                                               "content": "Green, edited"}
    assert [c["finish_reason"] for c in got["choices"]] == ["stop", "length"]


def test_answers_remembered_from_a_dump_reply_in_both_modes(tmp_path):
    store = Store([str(tmp_path)])
    body = {"model": "m", "input": "dumped"}
    assert store.remember(_resp_exchange(body, _response(9, "From the dump.")), "flows.jsonl", 3)
    emb = Exchange(_req("/v1/embeddings", model="e", input="x"), Response(200, body=json.dumps(
        {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
         "model": "e"}).encode()))
    assert store.remember(emb, "flows.jsonl", 4)
    hit = store.lookup(_req("/v1/responses", **body))
    assert isinstance(hit.answer, answers.FormAnswer) and hit.answer.session == "flows.jsonl"
    streamed = answers.generic_reply(hit.answer, _req("/v1/responses", **body, stream=True))
    events = [json.loads(e.split(b"data: ", 1)[1]) for e in streamed.events]
    assert rs.assemble(events) == _response(9, "From the dump.")
    hit = store.lookup(_req("/v1/embeddings", model="e", input="x"))
    assert json.loads(answers.generic_reply(hit.answer).body)["data"][0]["embedding"] == [0.5, 0.25]
