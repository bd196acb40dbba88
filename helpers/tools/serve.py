"""Serve the humanizer over HTTP on 127.0.0.1, every adapter from one loaded model.

    python -m helpers.tools.serve --preset workshop [--port 8080] [--adapter sft+dpo]   (or: make serve)

Routes (JSON in, JSON out):
    POST /v1/humanize          {"text": "..."} or {"texts": [...]}, optional "adapter", "system_prompt",
                               "temperature", "max_tokens", "stream"  ->  {"adapter", "outputs": [...]}
    POST /v1/chat/completions  OpenAI-compatible: the user message is the text to rewrite; the
                               request picks "adapter" (or names one as "model")
    GET  /v1/models            the adapters this run has, as OpenAI models
    GET  /health

Each request picks "adapter": one of the systems the run has trained (helpers/infer/systems.py:
base, sft, dpo-only, sft+dpo), switched without reloading.
The training system prompt is applied unless the request brings its own (a "system_prompt" field,
or a system message). Requests wait in one queue: a single worker owns the model (MLX is not
meant to be driven from several threads) and decodes waiting /v1/humanize texts that share their
settings together, in one batch. Bad input gets a 4xx naming the problem and the server keeps
serving. mlx_lm.server differs: it serves one adapter and ignores a request's adapter field.

Exit status: 0 stopped with Ctrl-C; 1 the port cannot be listened on (in use); 3 the model or
the adapter is not available. The server writes no files.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.models import ModelNotAvailable
from helpers.infer.humanizer import Humanizer

MAX_BODY_BYTES = 1_000_000
MAX_TEXTS = 64
DECODING_FIELDS = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    kind: str  # "humanize" (a batch of texts) or "stream" (one text)
    adapter: str
    payload: object  # texts, messages, or one text
    settings: dict
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: Exception | None = None
    pieces: queue.Queue = field(default_factory=queue.Queue)  # streaming: str pieces, then None

    def batch_key(self):
        return (self.kind, self.adapter, json.dumps(self.settings, sort_keys=True))


class Worker(threading.Thread):
    """Owns the Humanizer; runs jobs one batch at a time, in arrival order."""

    def __init__(self, humanizer, max_batch: int):
        super().__init__(daemon=True)
        self.humanizer, self.max_batch, self.jobs = humanizer, max_batch, queue.Queue()

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def run(self) -> None:
        waiting: list[Job] = []
        while True:
            job = waiting.pop(0) if waiting else self.jobs.get()
            batch = [job]
            if job.kind == "humanize":  # gather what has queued up meanwhile, same settings
                while True:
                    try:
                        waiting.append(self.jobs.get_nowait())
                    except queue.Empty:
                        break
                n_texts = len(job.payload)
                for other in list(waiting):
                    if other.batch_key() == job.batch_key() and \
                            n_texts + len(other.payload) <= self.max_batch:
                        waiting.remove(other)
                        batch.append(other)
                        n_texts += len(other.payload)
            self.execute(batch)

    def execute(self, batch: list[Job]) -> None:
        h, job = self.humanizer, batch[0]
        settings = decoding_settings(job.settings)
        try:
            if job.kind == "humanize":
                texts = [t for j in batch for t in j.payload]
                results = h.rewrite_detailed(texts, adapter=job.adapter, **settings)
                for j in batch:
                    j.result, results = results[:len(j.payload)], results[len(j.payload):]
            else:
                for piece in h.stream(job.payload, adapter=job.adapter, **settings):
                    job.pieces.put(piece)
        except Exception as err:  # noqa: BLE001 - reported to the client, the worker goes on
            for j in batch:
                j.error = err
        finally:
            job.pieces.put(None)
            for j in batch:
                j.done.set()


def decoding_settings(settings: dict) -> dict:
    """Request fields -> Humanizer keyword arguments (max_tokens is the config's gen_max_tokens)."""
    out = {k: v for k, v in settings.items() if k != "max_tokens"}
    if "max_tokens" in settings:
        out["gen_max_tokens"] = settings["max_tokens"]
    return out


# ---------------------------------------------------------------- request checking

def parse_json(body: bytes) -> dict:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(obj).__name__}")
    return obj


def pick_adapter(obj: dict, adapters: tuple, default: str) -> str:
    """The request's "adapter", else its "model" (OpenAI clients name the model there), else the
    default. A name that is not an adapter is a 400 either way: a client asking for "gpt-4o"
    must not get the humanizer's answer as if it were that model's."""
    field_name = "adapter" if obj.get("adapter") is not None else "model"
    adapter = obj.get(field_name)
    if adapter is None:
        return default
    if adapter not in adapters:
        raise BadRequest(f"unknown {field_name} {adapter!r}; valid adapters: {list(adapters)}")
    return adapter


def pick_settings(obj: dict, max_tokens_cap: int) -> dict:
    settings = {}
    for name, kind in DECODING_FIELDS.items():
        if obj.get(name) is None:
            continue
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and not float(value).is_integer()):
            raise BadRequest(f"field {name!r} must be a number")
        settings[name] = kind(value)
    if not 0 <= settings.get("temperature", 0) <= 2:
        raise BadRequest("field 'temperature' must be between 0 and 2")
    if not 0 < settings.get("top_p", 1) <= 1:
        raise BadRequest("field 'top_p' must be in (0, 1]")
    if not 1 <= settings.get("max_tokens", 1) <= max_tokens_cap:
        raise BadRequest(f"field 'max_tokens' must be between 1 and {max_tokens_cap}")
    system = obj.get("system_prompt")
    if system is not None:
        if not isinstance(system, str) or not system.strip():
            raise BadRequest("field 'system_prompt' must be a non-empty string")
        settings["system_prompt"] = system
    return settings


def humanize_texts(obj: dict) -> list[str]:
    if "text" in obj:
        texts = [obj["text"]]
        names = ["text"]
    elif "texts" in obj:
        if not isinstance(obj["texts"], list) or not obj["texts"]:
            raise BadRequest("field 'texts' must be a non-empty list of strings")
        texts = obj["texts"]
        names = [f"texts[{i}]" for i in range(len(texts))]
    else:
        raise BadRequest("missing field: 'text' (a string) or 'texts' (a list of strings)")
    if len(texts) > MAX_TEXTS:
        raise BadRequest(f"at most {MAX_TEXTS} texts per request, got {len(texts)}")
    for name, text in zip(names, texts):
        if not isinstance(text, str):
            raise BadRequest(f"field {name!r} must be a string")
        if not text.strip():
            raise BadRequest(f"field {name!r} is empty")
    return [t.strip() for t in texts]


def chat_request(obj: dict) -> tuple[str, str | None]:
    """(text to rewrite, system prompt or None) from OpenAI chat messages: one user message, the
    text itself, after an optional system message. The user turn is then asked exactly as in
    training ("Rewrite this text: ..."), so any OpenAI client gets the trained humanizer."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("field 'messages' must be a non-empty list")
    contents = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user"):
            raise BadRequest(f"messages[{i}] needs a 'role' of system or user (the humanizer "
                             "rewrites one text: no conversation)")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise BadRequest(f"messages[{i}].content is empty or not text")
        contents.append((m["role"], content.strip()))
    roles = [r for r, _ in contents]
    if roles not in (["user"], ["system", "user"]):
        raise BadRequest(f"expected one user message, optionally after one system message; got "
                         f"roles {roles}")
    return contents[-1][1], contents[0][1] if roles[0] == "system" else None


# ---------------------------------------------------------------- HTTP

def make_handler(worker: Worker, default_adapter: str, max_body: int):
    humanizer = worker.humanizer
    cap = humanizer.cfg.gen_max_tokens * 4

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "humanizer"

        def log_message(self, fmt, *args):  # one short line per request on stderr
            if not getattr(self.server, "quiet", False):
                super().log_message(fmt, *args)

        def send_json(self, status: int, obj: dict) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_error_json(self, status: int, message: str) -> None:
            self.send_json(status, {"error": {"message": message, "code": int(status)}})

        def do_GET(self):
            if self.path == "/health":
                self.send_json(200, {"status": "ok", "adapters": list(humanizer.adapters)})
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [
                    {"id": a, "object": "model", "owned_by": "humanizer"}
                    for a in humanizer.adapters]})
            else:
                self.send_error_json(404, f"no route GET {self.path}")

        def read_body(self) -> dict:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise BadRequest("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
            if int(length) > max_body:
                raise BadRequest(f"body of {length} bytes is over the {max_body}-byte limit",
                                 HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return parse_json(self.rfile.read(int(length)))

        def do_POST(self):
            routes = {"/v1/humanize": self.humanize, "/v1/chat/completions": self.chat}
            if self.path not in routes:
                self.send_error_json(404, f"no route POST {self.path}; try {sorted(routes)}")
                return
            try:
                routes[self.path](self.read_body())
            except BadRequest as err:
                if err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                    self.close_connection = True  # the unread body must not be taken for a request
                self.send_error_json(err.status, str(err))
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as err:  # noqa: BLE001 - a failed generation is the server's 500
                self.send_error_json(500, f"{type(err).__name__}: {err}")

        def wait(self, job: Job):
            worker.submit(job).done.wait()
            if job.error is not None:
                raise job.error
            return job.result

        def humanize(self, obj: dict) -> None:
            adapter = pick_adapter(obj, humanizer.adapters, default_adapter)
            texts, settings = humanize_texts(obj), pick_settings(obj, cap)
            if obj.get("stream"):
                if len(texts) != 1:
                    raise BadRequest("streaming takes one 'text'")
                job = worker.submit(Job("stream", adapter, texts[0], settings))
                self.stream_events(job, lambda piece: {"delta": piece},
                                   {"done": True, "adapter": adapter})
                return
            results = self.wait(Job("humanize", adapter, texts, settings))
            self.send_json(200, {"adapter": adapter, "outputs": [
                {"output": r.text, "n_tokens": r.n_tokens, "hit_cap": r.hit_cap}
                for r in results]})

        def chat(self, obj: dict) -> None:
            adapter = pick_adapter(obj, humanizer.adapters, default_adapter)
            text, system = chat_request(obj)
            settings = {**pick_settings(obj, cap), **({"system_prompt": system} if system else {})}
            head = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()),
                    "model": adapter}
            if obj.get("stream"):
                def chunk(piece, finish=None):
                    return {**head, "object": "chat.completion.chunk", "choices": [
                        {"index": 0, "delta": {"content": piece} if piece else {},
                         "finish_reason": finish}]}
                job = worker.submit(Job("stream", adapter, text, settings))
                self.stream_events(job, chunk, chunk("", "stop"), done_marker=True)
                return
            result = self.wait(Job("humanize", adapter, [text], settings))[0]
            prompt_tokens = humanizer.count_tokens(text)
            self.send_json(200, {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text},
                 "finish_reason": "length" if result.hit_cap else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": result.n_tokens,
                          "total_tokens": prompt_tokens + result.n_tokens}})

        def stream_events(self, job: Job, event, last: dict, done_marker: bool = False) -> None:
            """Server-sent events: one `data: {...}` per piece, then `last` (and [DONE])."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while (piece := job.pieces.get()) is not None:
                self.wfile.write(f"data: {json.dumps(event(piece), ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()
            job.done.wait()
            if job.error is not None:
                last = {"error": {"message": f"{type(job.error).__name__}: {job.error}"}}
            self.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
            if done_marker:
                self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def make_server(humanizer, host: str = "127.0.0.1", port: int = 8080, adapter: str | None = None,
                max_body: int = MAX_BODY_BYTES, quiet: bool = False) -> ThreadingHTTPServer:
    """A ready server (call serve_forever); port 0 picks a free one (server.server_address)."""
    default = adapter or humanizer.adapter
    humanizer.use(default)
    worker = Worker(humanizer, max_batch=humanizer.cfg.gen_batch_size)
    server = ThreadingHTTPServer((host, port), make_handler(worker, default, max_body))
    worker.start()  # after the bind: a port in use leaves no thread behind
    server.daemon_threads = True
    server.quiet = quiet
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="config preset (default: $HUMANIZER_PRESET "
                                                       "or workshop)")
    parser.add_argument("--run", default=None, help="a run folder (runs/<preset>[/<experiment>]) "
                                                    "instead of --preset")
    parser.add_argument("--adapter", default=None, help="the default adapter, a system of "
                        "helpers/infer/systems.py the run has trained (default: the most trained "
                        "one)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost "
                                                            "only; anything else is exposed)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-body", type=int, default=MAX_BODY_BYTES, help="bytes per request")
    args = parser.parse_args(argv)
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    try:
        humanizer = Humanizer.load(args.run or get_config(args.preset), adapter=args.adapter)
    except (ModelNotAvailable, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    try:
        server = make_server(humanizer, args.host, args.port, max_body=args.max_body)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port} ({err.strerror or err}); "
              f"choose another --port", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving {list(humanizer.adapters)} (default {humanizer.adapter}) on "
          f"http://{host}:{port}/v1 — Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
