"""The store's rules, in-process: matching, play order, where recordings go, broken files, names.

A real `Store` on a temp folder, session files written with `sessionfile.render_chat` or by
hand, requests built as `rechat.exchange.Request`. Recording schedules a background write, so
it runs inside `asyncio.run` and is followed by `await store.flush()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from rechat import sessionfile as sf
from rechat.answers import now_iso
from rechat.errors import SessionFormatError
from rechat.exchange import CHAT_PATH, Exchange, Request, Response
from rechat.store import Store


# ---------------------------------------------------------------------------------------------
# helpers


def chat(messages: list, **params) -> Request:
    return Request("POST", CHAT_PATH, body=json.dumps({"messages": messages, **params}).encode())


def U(text: str) -> dict:
    return {"role": "user", "content": text}


def A(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write(folder: Path, name: str, params: dict, messages: list, responses: dict | None = None) -> Path:
    p = folder / name
    p.write_text(sf.render_chat(params, messages, responses or {}), encoding="utf-8")
    return p


def answer_text(store: Store, req: Request, play: bool = True) -> str | None:
    hit = store.lookup(req, play=play)
    return None if hit is None else hit.answer.message["content"]


def plays(store: Store, req: Request, n: int) -> list[str | None]:
    return [answer_text(store, req) for _ in range(n)]


def record(store: Store, items: list[tuple[Request, dict, dict | None]]) -> list[str]:
    """Record each (request, answer, meta) in order, flush, and return the files written."""

    async def go() -> list[str]:
        files = [store.record(Exchange(req, Response(200)), ans, meta if meta is not None
                              else {"at": now_iso()}) for req, ans, meta in items]
        await store.flush()
        return files

    return asyncio.run(go())


def fresh(folder: Path) -> Store:
    s = Store([str(folder)])
    s.load()
    return s


# ---------------------------------------------------------------------------------------------
# matching


def test_param_missing_from_front_matter_matches_any_value(tmp_path):
    write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("generic hello")])
    s = fresh(tmp_path)
    for extra in ({}, {"temperature": 0.3}, {"temperature": 1.7, "max_tokens": 5, "seed": 1}):
        assert answer_text(s, chat([U("hi")], model="m", **extra)) == "generic hello", extra
    # a parameter the front matter does give must still be equal
    assert s.lookup(chat([U("hi")], model="other")) is None
    assert s.lookup(chat([U("hi")])) is None  # model absent from the request


def test_empty_front_matter_matches_every_request_with_those_messages(tmp_path):
    (tmp_path / "bare.md").write_text("### user\n\n<blockquote>\nhi\n</blockquote>\n\n"
                                      "### assistant\n\n<blockquote>\nbare answer\n</blockquote>\n")
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("hi")], model="anything", temperature=0)) == "bare answer"
    assert s.lookup(chat([U("hi there")], model="anything")) is None


def test_param_present_must_be_equal_and_integral_floats_are_ints(tmp_path):
    write(tmp_path, "a.md", {"model": "m", "temperature": 1}, [U("hi"), A("warm")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("hi")], model="m", temperature=1.0)) == "warm"
    assert answer_text(s, chat([U("hi")], model="m", temperature=1)) == "warm"
    assert s.lookup(chat([U("hi")], model="m", temperature=0.5)) is None
    assert s.lookup(chat([U("hi")], model="m")) is None  # present in the file, absent in the request
    # and the other way round: 1.0 written in the file equals 1 in the request
    (tmp_path / "a.md").unlink()
    write(tmp_path, "b.md", {"model": "m", "temperature": 1.0, "top_p": 0.5}, [U("hi"), A("float")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("hi")], model="m", temperature=1, top_p=0.5)) == "float"
    assert s.lookup(chat([U("hi")], model="m", temperature=1, top_p=0.25)) is None


def test_nested_param_values_compare_canonically(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    write(tmp_path, "a.md", {"model": "m", "tools": tools}, [U("hi"), A("with tools")])
    s = fresh(tmp_path)
    # same value, keys in another order
    reordered = [{"function": {"parameters": {"properties": {"q": {"type": "string"}},
                                              "type": "object"}, "name": "f"}, "type": "function"}]
    assert answer_text(s, chat([U("hi")], tools=reordered, model="m")) == "with tools"
    other = json.loads(json.dumps(tools))
    other[0]["function"]["name"] = "g"
    assert s.lookup(chat([U("hi")], model="m", tools=other)) is None


@pytest.mark.parametrize("general_name,specific_name", [("a.md", "b.md"), ("b.md", "a.md")])
def test_most_specific_matching_file_wins(tmp_path, general_name, specific_name):
    write(tmp_path, general_name, {"model": "m"}, [U("hi"), A("general")])
    write(tmp_path, specific_name, {"model": "m", "temperature": 0}, [U("hi"), A("specific")])
    write(tmp_path, "c.md", {}, [U("hi"), A("anything")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("hi")], model="m", temperature=0)) == "specific"
    assert answer_text(s, chat([U("hi")], model="m", temperature=0.9)) == "general"
    assert answer_text(s, chat([U("hi")], model="m")) == "general"
    assert answer_text(s, chat([U("hi")], model="x", temperature=0)) == "anything"


def test_volatile_fields_of_the_request_never_count(tmp_path):
    write(tmp_path, "a.md", {"model": "m", "temperature": 0}, [U("hi"), A("hello")])
    s = fresh(tmp_path)
    for extra in ({"stream": True}, {"stream": False}, {"user": "bob"},
                  {"stream": True, "stream_options": {"include_usage": True}, "user": "alice"}):
        assert answer_text(s, chat([U("hi")], model="m", temperature=0, **extra)) == "hello", extra


def test_recording_keeps_volatile_fields_out_of_the_front_matter(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    req = chat([U("hi")], model="m", stream=True, stream_options={"include_usage": True}, user="bob")
    (f,) = record(s, [(req, A("hello"), None)])
    session = sf.read(f)
    assert session.params == {"model": "m"}
    # a request without the volatile fields (or with other values) gets the recording
    assert answer_text(fresh(tmp_path), chat([U("hi")], model="m", user="carol")) == "hello"
    assert answer_text(fresh(tmp_path), chat([U("hi")], model="m")) == "hello"


def test_volatile_fields_written_in_the_front_matter_never_count(tmp_path):
    # Someone copies a request's JSON, `stream` and `user` included, into a hand-written file.
    write(tmp_path, "a.md", {"model": "m", "stream": True, "user": "alice",
                             "stream_options": {"include_usage": True}}, [U("hi"), A("hello")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("hi")], model="m")) == "hello"
    assert answer_text(s, chat([U("hi")], model="m", stream=False, user="bob")) == "hello"
    assert s.lookup(chat([U("hi")], model="other", stream=True, user="alice")) is None


def test_null_fields_in_messages_equal_absent_ones(tmp_path):
    write(tmp_path, "a.md", {"model": "m"}, [U("one"), A("first"), U("two"), A("second")])
    s = fresh(tmp_path)
    # The client echoes the assistant message with the null fields the API returned.
    echoed = {"role": "assistant", "content": "first", "refusal": None, "audio": None,
              "function_call": None, "tool_calls": None, "annotations": []}
    req = chat([{"role": "user", "content": "one", "name": None}, echoed, U("two")], model="m")
    assert answer_text(s, req) == "second"
    # a null *value* is not the same as a different value
    assert s.lookup(chat([U("one"), {**echoed, "content": "First"}, U("two")], model="m")) is None


def test_null_fields_written_in_the_file_equal_absent_ones(tmp_path):
    write(tmp_path, "a.md", {"model": "m"},
          [U("one"), {"role": "assistant", "content": "first", "refusal": None}, U("two"),
           A("second")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("one"), A("first"), U("two")], model="m")) == "second"


# ---------------------------------------------------------------------------------------------
# several answers


def test_several_files_play_in_recorded_order_then_the_last_repeats(tmp_path):
    # file names sort in the opposite order to the recording times: the times decide
    write(tmp_path, "a.md", {"model": "m"}, [U("roll"), A("third")],
          {1: {"at": "2024-05-01T10:00:03.000+00:00"}})
    write(tmp_path, "b.md", {"model": "m"}, [U("roll"), A("second")],
          {1: {"at": "2024-05-01T10:00:02.000+00:00"}})
    write(tmp_path, "c.md", {"model": "m"}, [U("roll"), A("first")],
          {1: {"at": "2024-05-01T10:00:01.000+00:00"}})
    s = fresh(tmp_path)
    req = chat([U("roll")], model="m")
    assert answer_text(s, req, play=False) == "first"  # looking without playing does not advance
    assert plays(s, req, 5) == ["first", "second", "third", "third", "third"]
    hit = s.lookup(req)
    assert (hit.position, hit.count) == (2, 3)


def test_hand_written_answers_play_in_file_order(tmp_path):
    write(tmp_path, "01-first.md", {}, [U("roll"), A("one")])
    write(tmp_path, "02-second.md", {}, [U("roll"), A("two")])
    s = fresh(tmp_path)
    assert plays(s, chat([U("roll")]), 4) == ["one", "two", "two", "two"]


def test_play_counts_are_per_request_and_per_params(tmp_path):
    write(tmp_path, "a.md", {"model": "m"}, [U("x"), A("x1")], {1: {"at": "2024-01-01T00:00:01+00:00"}})
    write(tmp_path, "b.md", {"model": "m"}, [U("x"), A("x2")], {1: {"at": "2024-01-01T00:00:02+00:00"}})
    write(tmp_path, "c.md", {"model": "m"}, [U("y"), A("y1")])
    write(tmp_path, "d.md", {"model": "m", "seed": 1}, [U("x"), A("seeded")])
    s = fresh(tmp_path)
    assert answer_text(s, chat([U("x")], model="m")) == "x1"
    assert answer_text(s, chat([U("y")], model="m")) == "y1"
    assert answer_text(s, chat([U("x")], model="m", seed=1)) == "seeded"
    assert answer_text(s, chat([U("x")], model="m", stream=True)) == "x2"


def test_same_request_recorded_twice_plays_in_recorded_order(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    req = chat([U("flip a coin")], model="m", temperature=1)
    files = record(s, [(req, A("heads"), None), (req, A("tails"), None)])
    assert len(set(files)) == 2  # a first-turn request always starts a file
    assert plays(s, req, 3) == ["heads", "tails", "tails"]
    # the same order after a restart
    assert plays(fresh(tmp_path), req, 3) == ["heads", "tails", "tails"]


def test_many_recordings_of_one_request_keep_their_order(tmp_path):
    # Recorded in one burst: the same second (names get _2, _3 ... _12) and, as happens with
    # concurrent or fast requests, the same millisecond (`at` has millisecond resolution).
    s = Store([str(tmp_path)])
    s.load()
    req = chat([U("again")], model="m")
    if time.time() % 1 > 0.8:  # all twelve names in one second: _2 ... _12
        time.sleep(1 - time.time() % 1)
    at = now_iso()
    record(s, [(req, A(f"answer {i}"), {"at": at}) for i in range(1, 13)])
    expected = [f"answer {i}" for i in range(1, 13)] + ["answer 12"]
    assert plays(s, req, 13) == expected
    assert plays(fresh(tmp_path), req, 13) == expected


def test_turn_recorded_twice_in_a_conversation_plays_in_order(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    t1 = chat([U("one")], model="m")
    t2 = chat([U("one"), A("first"), U("two")], model="m")
    files = record(s, [(t1, A("first"), None), (t2, A("second v1"), None),
                       (t2, A("second v2"), None)])
    assert files[0] == files[1] and files[2] != files[0]
    assert plays(s, t2, 3) == ["second v1", "second v2", "second v2"]
    assert plays(fresh(tmp_path), t2, 3) == ["second v1", "second v2", "second v2"]
    assert answer_text(fresh(tmp_path), t1) == "first"


# ---------------------------------------------------------------------------------------------
# conversations and where recordings go


def test_two_turn_file_answers_both_turns(tmp_path):
    write(tmp_path, "conv.md", {"model": "m"},
          [{"role": "system", "content": "be brief"}, U("one"), A("first"), U("two"), A("second")])
    s = fresh(tmp_path)
    sysm = {"role": "system", "content": "be brief"}
    assert answer_text(s, chat([sysm, U("one")], model="m")) == "first"
    assert answer_text(s, chat([sysm, U("one"), A("first"), U("two")], model="m")) == "second"
    # each answer is located in the file
    hit = s.lookup(chat([sysm, U("one"), A("first"), U("two")], model="m"), play=False)
    assert hit.answer.session == str(tmp_path / "conv.md")
    lines = (tmp_path / "conv.md").read_text().split("\n")
    assert lines[hit.answer.line - 1] == "### assistant"
    # a request ending on a message the file has not answered is a miss
    assert s.lookup(chat([sysm, U("one"), A("first"), U("three")], model="m")) is None
    assert s.lookup(chat([sysm], model="m")) is None


def test_recording_turn_two_appends_to_the_file_holding_turn_one(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    t1 = [U("one")]
    (f1,) = record(s, [(chat(t1, model="m", temperature=0), A("first"), None)])
    # The client sends back the answer as it received it (null fields included) and streams.
    echoed = {"role": "assistant", "content": "first", "refusal": None, "annotations": []}
    t2 = t1 + [echoed, U("two")]
    (f2,) = record(s, [(chat(t2, model="m", temperature=0.0, stream=True), A("second"), None)])
    assert f2 == f1
    t3 = t2 + [A("second"), U("three")]
    (f3,) = record(s, [(chat(t3, model="m", temperature=0), A("third"), None)])
    assert f3 == f1
    assert [p.name for p in tmp_path.glob("*.md")] == [os.path.basename(f1)]
    session = sf.read(f1)
    assert [(m["role"], m["content"]) for m in session.messages] == [
        ("user", "one"), ("assistant", "first"), ("user", "two"), ("assistant", "second"),
        ("user", "three"), ("assistant", "third")]
    assert sorted(session.responses) == [1, 3, 5]  # each answer keeps its hidden metadata
    s2 = fresh(tmp_path)
    assert answer_text(s2, chat(t1, model="m", temperature=0)) == "first"
    assert answer_text(s2, chat(t2, model="m", temperature=0)) == "second"
    assert answer_text(s2, chat(t3, model="m", temperature=0)) == "third"


def test_recording_turn_two_appends_to_a_hand_written_file(tmp_path):
    f = write(tmp_path, "mine.md", {"model": "m"}, [U("one"), A("first")])
    before = f.read_text()
    s = fresh(tmp_path)
    (got,) = record(s, [(chat([U("one"), A("first"), U("two")], model="m"), A("second"), None)])
    assert got == str(f)
    after = f.read_text()
    assert after.startswith(before.rstrip("\n"))  # what the person wrote is kept as written
    assert answer_text(fresh(tmp_path), chat([U("one"), A("first"), U("two")], model="m")) == "second"


def test_different_params_start_a_new_file(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    (f1,) = record(s, [(chat([U("one")], model="m"), A("first"), None)])
    (f2,) = record(s, [(chat([U("one"), A("first"), U("two")], model="m", temperature=0.5),
                        A("second"), None)])
    assert f2 != f1
    assert len(sf.read(f1).messages) == 2
    s2 = sf.read(f2)
    assert s2.params == {"model": "m", "temperature": 0.5}
    assert [m["content"] for m in s2.messages] == ["one", "first", "two", "second"]
    assert answer_text(fresh(tmp_path), chat([U("one"), A("first"), U("two")], model="m",
                                             temperature=0.5)) == "second"
    assert fresh(tmp_path).lookup(chat([U("one"), A("first"), U("two")], model="m")) is None


def test_continuing_from_the_middle_of_a_conversation_starts_a_new_file(tmp_path):
    f = write(tmp_path, "conv.md", {"model": "m"}, [U("one"), A("first"), U("two"), A("second")])
    before = f.read_text()
    s = fresh(tmp_path)
    branch = [U("one"), A("first"), U("other two")]
    (got,) = record(s, [(chat(branch, model="m"), A("other second"), None)])
    assert got != str(f)
    assert f.read_text() == before
    assert [m["content"] for m in sf.read(got).messages] == ["one", "first", "other two",
                                                             "other second"]
    s2 = fresh(tmp_path)
    assert answer_text(s2, chat(branch, model="m")) == "other second"
    assert answer_text(s2, chat([U("one"), A("first"), U("two")], model="m")) == "second"
    # continuing the end of the original still appends to it
    (again,) = record(s, [(chat([U("one"), A("first"), U("two"), A("second"), U("three")],
                                model="m"), A("third"), None)])
    assert again == str(f)


def test_a_conversation_whose_answer_was_edited_continues_from_the_edited_text(tmp_path):
    f = write(tmp_path, "conv.md", {"model": "m"}, [U("one"), A("edited by hand")])
    s = fresh(tmp_path)
    (got,) = record(s, [(chat([U("one"), A("edited by hand"), U("two")], model="m"),
                         A("second"), None)])
    assert got == str(f)


# ---------------------------------------------------------------------------------------------
# broken, edited and deleted files


BROKEN = """---
model: m
---

### user

<blockquote>

hi

</blockquote>

### assistant

<blockquote>

never closed
"""
BROKEN_LINE = 15  # the unclosed <blockquote>


def test_broken_file_is_reported_and_skipped(tmp_path):
    write(tmp_path, "good.md", {"model": "m"}, [U("hi"), A("fine")])
    (tmp_path / "bad.md").write_text(BROKEN)
    (tmp_path / "worse.md").write_text("---\nmodel: [unclosed\n---\n\n### user\n")
    (tmp_path / "role.md").write_text("### usr\n\n<blockquote>\nhi\n</blockquote>\n")
    seen: list[SessionFormatError] = []
    s = Store([str(tmp_path)], on_error=seen.append)
    assert s.load() == 1
    bad, worse, role = (str(tmp_path / n) for n in ("bad.md", "worse.md", "role.md"))
    assert sorted(s.errors) == sorted([bad, worse, role])
    by_path = {e.path: e for e in seen}
    assert set(by_path) == {bad, worse, role}
    assert by_path[bad].line == BROKEN_LINE
    assert by_path[role].line == 1
    assert by_path[worse].line in (2, 3)  # the `[` opened on line 2 is still open at line 3
    assert by_path[role].message.startswith("unknown role")
    assert f"{bad}:{BROKEN_LINE}:" in str(by_path[bad])
    assert answer_text(s, chat([U("hi")], model="m")) == "fine"
    assert s.answer_count == 1


def test_edit_that_breaks_a_file_keeps_its_last_good_version(tmp_path):
    f = write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("good answer")])
    seen: list[SessionFormatError] = []
    s = Store([str(tmp_path)], on_error=seen.append)
    s.load()
    assert not seen
    f.write_text(BROKEN.replace("never closed", "half-typed new answer"))
    assert s.reload_file(str(f)) is False
    assert [(e.path, e.line) for e in seen] == [(str(f), BROKEN_LINE)]
    assert str(f) in s.errors
    assert answer_text(s, chat([U("hi")], model="m")) == "good answer"
    # fixing it serves the new version and clears the error
    write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("new answer")])
    assert s.reload_file(str(f)) is True
    assert s.errors == {}
    assert answer_text(s, chat([U("hi")], model="m")) == "new answer"
    assert s.answer_count == 1


def test_file_broken_at_start_loads_once_fixed(tmp_path):
    f = tmp_path / "a.md"
    f.write_text(BROKEN)
    s = Store([str(tmp_path)])
    assert s.load() == 0
    assert s.lookup(chat([U("hi")], model="m")) is None
    write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("fixed")])
    assert s.reload_file(str(f)) is True
    assert str(f) not in s.errors
    assert answer_text(s, chat([U("hi")], model="m")) == "fixed"


def test_edit_changes_the_answer_and_its_params(tmp_path):
    f = write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("v1")])
    s = fresh(tmp_path)
    write(tmp_path, "a.md", {"model": "n"}, [U("hi"), A("v2")])
    assert s.reload_file(str(f)) is True
    assert s.lookup(chat([U("hi")], model="m")) is None
    assert answer_text(s, chat([U("hi")], model="n")) == "v2"
    assert s.reload_file(str(f)) is False  # unchanged: nothing to do
    assert s.answer_count == 1


def test_deleting_a_file_removes_its_answers(tmp_path):
    f = write(tmp_path, "a.md", {"model": "m"}, [U("hi"), A("from a"), U("more"), A("more a")],
              {1: {"at": "2024-01-01T00:00:01+00:00"}})
    write(tmp_path, "b.md", {"model": "m"}, [U("hi"), A("from b")],
          {1: {"at": "2024-01-01T00:00:02+00:00"}})
    s = fresh(tmp_path)
    assert s.answer_count == 3
    f.unlink()
    assert s.reload_file(str(f)) is True
    assert s.answer_count == 1
    assert s.lookup(chat([U("hi"), A("from a"), U("more")], model="m")) is None
    assert plays(s, chat([U("hi")], model="m"), 2) == ["from b", "from b"]
    assert str(f) not in s.files
    # a deleted file is no longer a conversation to append to
    (got,) = record(s, [(chat([U("hi"), A("from a"), U("more")], model="m"), A("x"), None)])
    assert got != str(f) and not f.exists()


def test_deleting_a_broken_file_clears_its_error(tmp_path):
    f = tmp_path / "bad.md"
    f.write_text(BROKEN)
    s = Store([str(tmp_path)])
    s.load()
    assert str(f) in s.errors
    f.unlink()
    s.reload_file(str(f))
    assert s.errors == {}


def test_dot_files_dot_folders_and_other_files_are_ignored_and_subfolders_load(tmp_path):
    write(tmp_path, ".hidden.md", {}, [U("hi"), A("hidden")])
    (tmp_path / ".git").mkdir()
    write(tmp_path / ".git", "x.md", {}, [U("hi"), A("git")])
    (tmp_path / "notes.txt").write_text("not a session")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    write(tmp_path / "sub" / "deeper", "x.md", {}, [U("hi"), A("nested")])
    s = fresh(tmp_path)
    assert list(s.files) == [str(tmp_path / "sub" / "deeper" / "x.md")]
    assert answer_text(s, chat([U("hi")])) == "nested"


# ---------------------------------------------------------------------------------------------
# file names

NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{2}-\d{2}-\d{2})_([a-z0-9-]+?)(?:_(\d+))?\.md$")


def test_file_name_is_date_time_and_slug_of_the_first_user_message(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    before = datetime.now().replace(microsecond=0)
    files = record(s, [
        (chat([{"role": "system", "content": "You are terse."},
               U("What's the capital of France?")], model="m"), A("Paris"), None),
        (chat([U("Crème brûlée — über café!")], model="m"), A("yum"), None),
        (chat([U("x" * 30 + " " + "y" * 40)], model="m"), A("long"), None),
        (chat([{"role": "user", "content": [{"type": "text", "text": "Look at this"},
                                           {"type": "image_url", "image_url": {"url": "http://i"}}]}],
              model="m"), A("nice"), None),
        (chat([U("!!! ???")], model="m"), A("?"), None),
    ])
    after = datetime.now().replace(microsecond=0)
    names = [os.path.basename(f) for f in files]
    slugs = []
    for f, name in zip(files, names):
        m = NAME.match(name)
        assert m, name
        assert os.path.dirname(f) == str(tmp_path)
        at = datetime.strptime(m.group(1) + " " + m.group(2), "%Y-%m-%d %H-%M-%S")
        assert before <= at <= after, (name, before, after)
        slugs.append(m.group(3))
    assert slugs[0] == "what-s-the-capital-of-france"
    assert slugs[1] == "creme-brulee-uber-cafe"
    assert len(slugs[2]) <= 48 and slugs[2].startswith("x" * 30 + "-y")
    assert slugs[3] == "look-at-this"
    assert slugs[4] == "session"
    assert all(Path(f).is_file() for f in files)


def test_recordings_in_the_same_second_never_collide(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    items = [(chat([U("same words")], model="m", seed=i), A(f"a{i}"), None) for i in range(25)]
    files = record(s, items)
    assert len(set(files)) == 25
    on_disk = sorted(tmp_path.glob("*.md"))
    assert len(on_disk) == 25
    # each file holds its own answer
    got = {sf.read(str(p)).messages[-1]["content"] for p in on_disk}
    assert got == {f"a{i}" for i in range(25)}
    # a second store (a restart within the same second) does not overwrite them either
    s2 = fresh(tmp_path)
    more = record(s2, [(chat([U("same words")], model="m", seed=100 + i), A(f"b{i}"), None)
                       for i in range(3)])
    assert not set(more) & set(files)
    assert len(list(tmp_path.glob("*.md"))) == 28


def test_recording_never_overwrites_a_hand_written_file_with_the_same_name(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    now = datetime.now()
    # Occupy the names of this second and the next one.
    taken = set()
    for t in (now, now.replace(microsecond=0).timestamp() + 1):
        stamp = (datetime.fromtimestamp(t) if isinstance(t, float) else t).strftime("%Y-%m-%d_%H-%M-%S")
        p = write(tmp_path, f"{stamp}_hello.md", {}, [U("other"), A("hand-written")])
        taken.add(p)
    texts = {p: p.read_text() for p in taken}
    (f,) = record(s, [(chat([U("Hello")], model="m"), A("recorded"), None)])
    assert Path(f) not in taken
    assert {p: p.read_text() for p in taken} == texts


# ---------------------------------------------------------------------------------------------
# generic endpoints


def test_generic_exchange_gets_its_own_file_and_replays_exactly(tmp_path):
    s = Store([str(tmp_path)])
    s.load()
    body = json.dumps({"model": "e", "input": "hi"}).encode()
    audio = bytes(range(256)) * 3

    async def go():
        f1 = s.record(Exchange(Request("POST", "/v1/embeddings", body=body),
                               Response(200, body=b'{"data": [1]}')), None, {"at": now_iso()})
        f2 = s.record(Exchange(Request("POST", "/v1/audio/speech", body=b'{"input":"x"}'),
                               Response(200, body=audio)), None, {"at": now_iso()})
        f3 = s.record(Exchange(Request("GET", "/v1/models", query="limit=2"),
                               Response(200, body=b'{"data": []}')), None, {"at": now_iso()})
        await s.flush()
        return f1, f2, f3

    files = asyncio.run(go())
    assert len(set(files)) == 3
    s2 = fresh(tmp_path)
    # the volatile `user` field does not count for JSON bodies either
    hit = s2.lookup(Request("POST", "/v1/embeddings", body=json.dumps(
        {"input": "hi", "model": "e", "user": "u"}).encode()))
    assert hit is not None and hit.answer.body == b'{"data": [1]}'
    assert s2.lookup(Request("POST", "/v1/audio/speech", body=b'{"input":"x"}')).answer.body == audio
    assert s2.lookup(Request("GET", "/v1/models", query="limit=2")) is not None
    assert s2.lookup(Request("GET", "/v1/models", query="limit=3")) is None


# ---------------------------------------------------------------------------------------------
# the watcher's view of the store's own writes


def test_own_write_is_recognised_while_a_newer_version_is_queued(tmp_path):
    """The watcher skips a file when `is_own_write` says so, and reloads it otherwise.

    After turn 1 is on disk and turn 2 has been recorded (indexed, its write queued but not yet
    started), the file on disk is still the store's own earlier write. If the watcher's event
    for that earlier write arrives in this window, reloading it must not throw turn 2 away.
    """
    s = Store([str(tmp_path)])
    s.load()
    t1 = chat([U("one")], model="m")
    t2 = chat([U("one"), A("first"), U("two")], model="m")

    async def go():
        f = s.record(Exchange(t1, Response(200)), A("first"), {"at": now_iso()})
        await s.flush()
        s.record(Exchange(t2, Response(200)), A("second"), {"at": now_iso()})
        # exactly what reload.Watcher does with an event for `f`, before the queued write runs
        own = s.is_own_write(f)
        if not own:
            s.reload_file(f)
        indexed = answer_text(s, t2, play=False)
        await s.flush()
        return f, own, indexed

    f, own, indexed = asyncio.run(go())
    assert indexed == "second", "the watcher's reload reverted the index to the older file"
    assert [m["content"] for m in sf.read(f).messages] == ["one", "first", "two", "second"], \
        "turn 2 never reached the disk"
    assert own is True


# ---------------------------------------------------------------------------------------------
# scale


def test_two_thousand_small_files_load_and_each_is_found(tmp_path):
    n = 2000
    for d in range(10):
        (tmp_path / f"d{d}").mkdir()
    for i in range(n):
        seed = "" if i % 2 else f"seed: {i}\n"
        (tmp_path / f"d{i % 10}" / f"s{i:04d}.md").write_text(
            f"---\nmodel: m\n{seed}---\n\n### user\n\n<blockquote>\nquestion {i}\n</blockquote>\n\n"
            f"### assistant\n\n<blockquote>\nanswer {i}\n</blockquote>\n")
    progress: list[tuple[int, int]] = []
    s = Store([str(tmp_path)])
    assert s.load(lambda done, total: progress.append((done, total))) == n
    assert progress[-1] == (n, n) and len(progress) == n
    assert s.errors == {}
    assert s.answer_count == n
    assert len(s.chat) == n  # one index key per distinct request: lookup is one dict access
    for i in range(n):
        params = {"model": "m"} if i % 2 else {"model": "m", "seed": i}
        assert answer_text(s, chat([U(f"question {i}")], **params)) == f"answer {i}"
    assert s.lookup(chat([U("question 2000")], model="m")) is None
    assert s.lookup(chat([U("question 0")], model="m", seed=1)) is None


@pytest.mark.parametrize("front_matter,lines", [
    ("model: m\ntemperature: : 1\n", {3}),
    ("model: m\nseed: 1\n  bad: indent\n", {4}),
    ('model: m\nstop: "abc\n', {3, 4}),  # the quote opened on line 3 is still open at line 4
])
def test_broken_front_matter_is_reported_at_its_line(tmp_path, front_matter, lines):
    f = tmp_path / "bad.md"
    f.write_text(f"---\n{front_matter}---\n\n### user\n\n<blockquote>\nhi\n</blockquote>\n")
    seen: list[SessionFormatError] = []
    Store([str(tmp_path)], on_error=seen.append).load()
    assert [e.path for e in seen] == [str(f)]
    assert seen[0].line in lines, seen


def test_recording_never_overwrites_a_hand_edit_that_does_not_parse_yet(tmp_path):
    # Someone is editing the file holding turn 1 and has left it broken for now; the store keeps
    # serving the last good version. A recording of turn 2 must not write over their edit.
    f = write(tmp_path, "conv.md", {"model": "m"}, [U("one"), A("first")])
    s = fresh(tmp_path)
    editing = BROKEN.replace("never closed", "first, and a half-typed improvement")
    f.write_text(editing)
    assert s.reload_file(str(f)) is False and str(f) in s.errors
    t2 = chat([U("one"), A("first"), U("two")], model="m")
    (got,) = record(s, [(t2, A("second"), None)])
    assert f.read_text() == editing, "the person's edit was overwritten"
    assert answer_text(s, t2) == "second"
    assert [m["content"] for m in sf.read(got).messages][-2:] == ["two", "second"]


def test_recording_never_overwrites_a_hand_edit_not_yet_reloaded(tmp_path):
    # The person saves an edit; before the watcher's debounce has passed (so before
    # reload_file), a recording continues the conversation held in that file.
    f = write(tmp_path, "conv.md", {"model": "m"}, [U("one"), A("first")])
    s = fresh(tmp_path)
    write(tmp_path, "conv.md", {"model": "m"}, [U("one"), A("first"), U("hand"), A("written")])
    edited = f.read_text()
    t2 = chat([U("one"), A("first"), U("two")], model="m")
    record(s, [(t2, A("second"), None)])
    assert f.read_text().startswith(edited.rstrip("\n")), "the person's edit was overwritten"
    s2 = fresh(tmp_path)
    assert answer_text(s2, chat([U("one"), A("first"), U("hand")], model="m")) == "written"
    assert answer_text(s2, t2) == "second"


def test_a_role_markdown_cannot_hold_is_recorded_in_the_generic_form(tmp_path):
    from rechat.exchange import Exchange, Response
    store = Store([str(tmp_path)])
    body = {"model": "m", "messages": [{"role": "critic", "content": "hm"}]}
    req = Request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
    resp = Response(200, [("Content-Type", "application/json")], json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode())

    async def go():
        file = store.record(Exchange(req, resp), {"role": "assistant", "content": "ok"}, {})
        await store.flush()
        return file

    file = asyncio.run(go())
    s = sf.read(file)
    assert s.kind == "generic" and json.loads(s.exchanges[0].request_body) == body
    assert store.lookup(req).answer.body == resp.body


def test_appending_to_a_crlf_session_keeps_earlier_turns(tmp_path):
    from rechat.exchange import Exchange, Response
    turn1 = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    (tmp_path / "crlf.md").write_bytes(
        sf.render_chat({"model": "m"}, turn1).replace("\n", "\r\n").encode())
    store = Store([str(tmp_path)])
    store.load()
    body = {"model": "m", "messages": turn1 + [{"role": "user", "content": "c"}]}
    req = Request("POST", "/v1/chat/completions", body=json.dumps(body).encode())

    async def go():
        file = store.record(Exchange(req, Response(200)), {"role": "assistant", "content": "d"}, {})
        await store.flush()
        return file

    assert asyncio.run(go()) == str(tmp_path / "crlf.md")
    s = sf.read(str(tmp_path / "crlf.md"))
    assert [m["content"] for m in s.messages] == ["a", "b", "c", "d"]
    fresh = Store([str(tmp_path)])
    fresh.load()
    first = Request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "m", "messages": turn1[:1]}).encode())
    assert fresh.lookup(first).answer.message["content"] == "b"


def test_a_null_parameter_is_the_same_as_an_absent_one(tmp_path):
    (tmp_path / "a.md").write_text(sf.render_chat(
        {"model": "m", "seed": None}, [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "r"}]))
    store = Store([str(tmp_path)])
    store.load()
    for body in ({"model": "m"}, {"model": "m", "seed": None}):
        body["messages"] = [{"role": "user", "content": "q"}]
        assert store.lookup(Request("POST", "/v1/chat/completions", body=json.dumps(body).encode()))


def test_nearest_follows_edits_and_deletes(tmp_path):
    def write(name: str, question: str) -> None:
        (tmp_path / name).write_text(sf.render_chat({"model": "m"}, [
            {"role": "user", "content": question}, {"role": "assistant", "content": "x"}]))

    write("a.md", "What is the tallest mountain on Earth?")
    write("b.md", "How many legs does a spider have?")
    store = Store([str(tmp_path)])
    store.load()
    miss = Request("POST", CHAT_PATH, body=json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "What is the tallest mountain on Mars?"}]}).encode())
    assert store.nearest(miss).file == str(tmp_path / "a.md")
    for i in range(60):  # many edits: dead index entries are skipped, then compacted away
        write("a.md", f"Unrelated question number {i} about cooking pasta")
        store.reload_file(str(tmp_path / "a.md"))
    write("c.md", "What is the tallest mountain on Venus?")
    store.reload_file(str(tmp_path / "c.md"))
    near = store.nearest(miss)
    assert near.file == str(tmp_path / "c.md") and near.similarity > 0.9
    os.remove(tmp_path / "c.md")
    store.reload_file(str(tmp_path / "c.md"))
    assert store.nearest(miss).file != str(tmp_path / "c.md")
