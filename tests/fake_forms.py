"""A fake upstream for the readable forms: Responses, legacy completions, embeddings, multipart
uploads and chat with ``n > 1``, on top of conftest.FakeUpstream (whose chat it keeps).

Deterministic: answers echo the request, ids count the requests. The Responses stream is
written here by hand, word by word, with `event:` lines and `obfuscation` fields as OpenAI
sends them, so that replays of recorded streams are checked against a stream rechat did not
make itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct

from aiohttp import web

from conftest import FakeUpstream


def vector(text: str, dims: int) -> list[float]:
    """A deterministic vector of float32 values, as OpenAI returns them (float64 text)."""
    h = hashlib.sha256(text.encode()).digest() * (dims // 8 + 1)
    return [struct.unpack("<f", struct.pack("<f", (b - 128) / 1024))[0] for b in h[:dims]]


def _text_of(item) -> str:
    c = item.get("content") if isinstance(item, dict) else item
    if isinstance(c, list):
        return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


class FormsUpstream(FakeUpstream):
    """FakeUpstream plus /responses, /completions, base64 /embeddings, /audio/transcriptions,
    and chat answering ``n`` choices ("Echo #k: ...")."""

    def __init__(self, prefix: str = "/v1") -> None:
        super().__init__(prefix)
        self.count = 0

    # chat with n -------------------------------------------------------------------------------

    async def chat_n(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await req.read())
        n = b.get("n") or 1
        if n == 1:
            return await self.chat(req)
        self.received.append((req.method, req.path_qs, dict(req.headers), json.dumps(b).encode()))
        text = _text_of(b["messages"][-1])
        answers = [f"Echo #{k}: {text}" for k in range(n)]
        base = {"id": f"chatcmpl-n{len(self.received)}", "created": 1700000000,
                "model": b.get("model", "m") + "-2024", "system_fingerprint": "fp_1"}
        usage = {"prompt_tokens": 7, "completion_tokens": 3 * n, "total_tokens": 7 + 3 * n}
        if not b.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": k, "message": {"role": "assistant", "content": a, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"} for k, a in enumerate(answers)],
                "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)

        async def send(choices: list) -> None:
            await resp.write(("data: " + json.dumps({**base, "object": "chat.completion.chunk",
                                                      "choices": choices}) + "\n\n").encode())
        for k in range(n):
            await send([{"index": k, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}])
        words = [a.split(" ") for a in answers]
        for i in range(max(len(w) for w in words)):  # interleaved, as OpenAI streams n > 1
            for k, w in enumerate(words):
                if i < len(w):
                    await send([{"index": k, "delta": {"content": w[i] if i == 0 else " " + w[i]},
                                 "logprobs": None, "finish_reason": None}])
        for k in range(n):
            await send([{"index": k, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # /responses --------------------------------------------------------------------------------

    async def responses(self, req: web.Request) -> web.StreamResponse:
        raw = await self._record(req)
        b = json.loads(raw)
        self.count += 1
        n = self.count
        inp = b.get("input")
        last = inp[-1] if isinstance(inp, list) and inp else inp
        output: list[dict] = []
        if isinstance(last, dict) and last.get("type") == "function_call_output":
            output.append(self._message(n, f"Tool said: {last['output']}"))
        elif b.get("tools"):
            if "reason" in b.get("model", ""):
                output.append({"id": f"rs_{n}", "type": "reasoning", "summary": [
                    {"type": "summary_text", "text": "**Planning**\n\nCall the tool."}]})
            fn = b["tools"][0]["name"]
            output.append({"id": f"fc_{n}", "type": "function_call", "status": "completed",
                           "arguments": json.dumps({"q": _text_of(last)[:20]}),
                           "call_id": f"call_{n}", "name": fn})
        else:
            after = f" (after {b['previous_response_id']})" if b.get("previous_response_id") else ""
            output.append(self._message(n, f"Echo: {_text_of(last)}{after}"))
        response = {
            "id": f"resp_{n}", "object": "response", "created_at": 1741476542, "status": "completed",
            "background": False, "error": None, "incomplete_details": None,
            "instructions": b.get("instructions"), "max_output_tokens": None,
            "model": b.get("model", "m") + "-2025", "output": output, "parallel_tool_calls": True,
            "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": b.get("tools", []), "top_p": 1.0, "truncation": "disabled",
            "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 123},
            "user": None, "metadata": {}}
        if not b.get("stream"):
            return web.json_response(response, headers={"x-request-id": f"req_{n}"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(req)
        seq = 0

        async def send(type_: str, **data) -> None:
            nonlocal seq
            event = {"type": type_, "sequence_number": seq, **data}
            seq += 1
            await resp.write(f"event: {type_}\ndata: {json.dumps(event)}\n\n".encode())

        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        await send("response.created", response=pending)
        await send("response.in_progress", response=pending)
        for oi, item in enumerate(output):
            if item["type"] == "message":
                await send("response.output_item.added", output_index=oi,
                           item={**item, "status": "in_progress", "content": []})
                part = item["content"][0]
                await send("response.content_part.added", item_id=item["id"], output_index=oi,
                           content_index=0, part={**part, "text": ""})
                for i, w in enumerate(part["text"].split(" ")):
                    await send("response.output_text.delta", item_id=item["id"], output_index=oi,
                               content_index=0, delta=w if i == 0 else " " + w, logprobs=[],
                               obfuscation="x" * (i % 5))
                await send("response.output_text.done", item_id=item["id"], output_index=oi,
                           content_index=0, text=part["text"], logprobs=[])
                await send("response.content_part.done", item_id=item["id"], output_index=oi,
                           content_index=0, part=part)
            elif item["type"] == "function_call":
                await send("response.output_item.added", output_index=oi,
                           item={**item, "status": "in_progress", "arguments": ""})
                args = item["arguments"]
                for i in range(0, len(args), 4):
                    await send("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=oi, delta=args[i:i + 4], obfuscation="y")
                await send("response.function_call_arguments.done", item_id=item["id"],
                           output_index=oi, arguments=args)
            else:
                await send("response.output_item.added", output_index=oi,
                           item={**item, "summary": []})
            await send("response.output_item.done", output_index=oi, item=item)
        await send("response.completed", response=response)
        return resp

    @staticmethod
    def _message(n: int, text: str) -> dict:
        return {"id": f"msg_{n}", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}

    # /completions ------------------------------------------------------------------------------

    async def completions(self, req: web.Request) -> web.StreamResponse:
        b = json.loads(await self._record(req))
        self.count += 1
        prompts = b["prompt"] if isinstance(b["prompt"], list) else [b["prompt"]]
        n = b.get("n") or 1
        texts = [f" Echo {k}: {p}" for p in prompts for k in range(n)]
        base = {"id": f"cmpl-{self.count}", "object": "text_completion", "created": 1700000000,
                "model": b.get("model", "m")}
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        if not b.get("stream"):
            return web.json_response({**base, "choices": [
                {"text": t, "index": i, "logprobs": None, "finish_reason": "length" if i else "stop"}
                for i, t in enumerate(texts)], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        inc = (b.get("stream_options") or {}).get("include_usage")
        extra = {"usage": None} if inc else {}
        for i, t in enumerate(texts):
            for w in t.split(" ")[1:]:
                await resp.write(("data: " + json.dumps({**base, "choices": [
                    {"text": " " + w, "index": i, "logprobs": None, "finish_reason": None}],
                    **extra}) + "\n\n").encode())
            await resp.write(("data: " + json.dumps({**base, "choices": [
                {"text": "", "index": i, "logprobs": None,
                 "finish_reason": "length" if i else "stop"}], **extra}) + "\n\n").encode())
        if inc:
            await resp.write(("data: " + json.dumps({**base, "choices": [], "usage": usage})
                              + "\n\n").encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # /embeddings, float or base64 --------------------------------------------------------------

    async def embeddings_b64(self, req: web.Request) -> web.Response:
        b = json.loads(await self._record(req))
        inputs = b["input"] if isinstance(b["input"], list) else [b["input"]]
        dims = b.get("dimensions") or 8
        vecs = [vector(str(i), dims) for i in inputs]
        b64 = b.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{dims}f", *v)).decode() if b64 else v}
                for i, v in enumerate(vecs)]
        return web.json_response({"object": "list", "data": data, "model": b.get("model"),
                                  "usage": {"prompt_tokens": 2 * len(inputs),
                                            "total_tokens": 2 * len(inputs)}})

    # multipart ---------------------------------------------------------------------------------

    async def transcriptions(self, req: web.Request) -> web.Response:
        raw = await self._record(req)
        return web.json_response({"text": f"heard {len(raw)} bytes"})

    # lifecycle ---------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        """Only the endpoints of the forms (chat with n > 1, embeddings, responses, ...)."""
        p = self.prefix
        app.router.add_post(p + "/chat/completions", self.chat_n)
        app.router.add_post(p + "/embeddings", self.embeddings_b64)
        app.router.add_post(p + "/responses", self.responses)
        app.router.add_post(p + "/completions", self.completions)
        app.router.add_post(p + "/audio/transcriptions", self.transcriptions)
