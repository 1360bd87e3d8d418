"""An OpenAI-compatible HTTP server for tests: stdlib ``http.server`` in a thread on 127.0.0.1.

Speaks ``/v1/completions``, ``/v1/chat/completions``, ``/v1/files`` (+ ``/content``) and ``/v1/batches``.
Replies come from ``reply(prompt) -> str``; faults are scripted per prompt substring (``faults``) or for
the next calls of any prompt (``next_faults``): ``"429"`` (with ``Retry-After``), ``"500"``, ``"slow"``
(sleeps past the client's timeout), ``"malformed"`` (invalid JSON body). ``calls`` counts requests
received per prompt, ``served`` the successful replies; ``on_request(prompt)`` runs before each reply
and drops the request unanswered when it returns True (a test uses it to SIGKILL a client mid-run).
``serial_seconds=S`` mimics llama.cpp's server: completions are answered one at a time, S seconds each,
the others wait in its queue (``max_in_flight`` records the most requests the server held at once).
Also usable standalone: ``python tests/fake_openai_server.py``.
"""

from __future__ import annotations

import collections
import email.parser
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_reply(prompt: str) -> str:
    return " The answer must be something that fits. So the answer is (B)."


class FakeOpenAI:
    def __init__(self, reply: Callable[[str], str] = default_reply, *, api_key: str | None = None,
                 retry_after: str = "1", slow_seconds: float = 3.0, batch_polls: int = 2,
                 serial_seconds: float | None = None):
        self.reply, self.api_key = reply, api_key
        self.retry_after, self.slow_seconds, self.batch_polls = retry_after, slow_seconds, batch_polls
        self.faults: dict[str, list[str]] = {}  # prompt substring -> faults for its next calls, in order
        self.next_faults: list[str] = []  # faults for the next calls of any prompt
        self.calls: collections.Counter = collections.Counter()
        self.served: collections.Counter = collections.Counter()
        self.paths: collections.Counter = collections.Counter()
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self.on_request: Callable[[str], None] | None = None
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.serial_seconds, self.serial_lock = serial_seconds, threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # -- fault script ------------------------------------------------------------------------------
    def _fault_for(self, prompt: str) -> str | None:
        with self.lock:
            if self.next_faults:
                return self.next_faults.pop(0)
            for pattern, queue in self.faults.items():
                if pattern in prompt and queue:
                    return queue.pop(0)
        return None

    def completion_body(self, api: str, body: dict) -> dict:
        prompt = prompt_of(body)
        text = self.reply(prompt)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        if api == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        return {"id": f"cmpl-{self.total_calls}", "object": obj, "created": int(time.time()),
                "model": body.get("model", "fake"), "choices": [choice], "usage": usage}

    # -- batches -------------------------------------------------------------------------------------
    def _run_batch(self, batch: dict) -> None:
        out = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            api = "chat" if req["url"].endswith("chat/completions") else "completions"
            prompt = prompt_of(req["body"])
            with self.lock:
                self.calls[prompt] += 1
                self.served[prompt] += 1
            out.append({"id": f"req-{len(out)}", "custom_id": req["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": "x", "body": self.completion_body(api, req["body"])}})
        fid = f"file-out-{batch['id']}"
        self.files[fid] = "".join(json.dumps(r) + "\n" for r in out).encode()
        batch.update(status="completed", output_file_id=fid, completed_at=int(time.time()),
                     request_counts={"total": len(out), "completed": len(out), "failed": 0})

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: bytes | dict, headers: dict | None = None,
                      ctype: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                server.auth_headers.append(auth)
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
                    return False
                return True

            def do_GET(self) -> None:
                server.paths[self.path] += 1
                if not self._authorised():
                    return
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in server.batches:
                    batch = server.batches[parts[2]]
                    batch["_polls"] = batch.get("_polls", 0) + 1
                    if batch["status"] != "completed":
                        batch["status"] = "in_progress"
                        if batch["_polls"] >= server.batch_polls:
                            server._run_batch(batch)
                    return self._send(200, {k: v for k, v in batch.items() if not k.startswith("_")})
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in server.files:
                    return self._send(200, server.files[parts[2]], ctype="application/octet-stream")
                self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                server.paths[self.path] += 1
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._authorised():
                    return
                if self.path.endswith("/files"):
                    return self._upload(raw)
                if self.path.endswith("/batches"):
                    body = json.loads(raw)
                    bid = f"batch_{len(server.batches) + 1}"
                    server.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"],
                                           "input_file_id": body["input_file_id"], "status": "validating",
                                           "completion_window": body.get("completion_window", "24h"),
                                           "created_at": int(time.time()), "output_file_id": None,
                                           "error_file_id": None, "errors": None,
                                           "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                    return self._send(200, server.batches[bid])
                api = "chat" if self.path.endswith("/chat/completions") else "completions" if self.path.endswith("/completions") else None
                if api is None:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(raw)
                prompt = prompt_of(body)
                with server.lock:
                    server.calls[prompt] += 1
                    server.bodies.append(body)
                if server.on_request and server.on_request(prompt):
                    self.close_connection = True  # the hook asked to drop this request unanswered
                    return
                fault = server._fault_for(prompt)
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                      {"Retry-After": server.retry_after})
                if fault == "500":
                    return self._send(500, {"error": {"message": "internal error"}})
                if fault == "slow":
                    time.sleep(server.slow_seconds)
                    return self._send(200, server.completion_body(api, body))
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ {"text": "trunc')
                if server.serial_seconds is not None:
                    return self._serve_serially(prompt, api, body)
                with server.lock:
                    server.served[prompt] += 1
                self._send(200, server.completion_body(api, body))

            def _serve_serially(self, prompt: str, api: str, body: dict) -> None:
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    with server.serial_lock:  # one generation at a time; the rest wait here, as in a queue
                        time.sleep(server.serial_seconds)
                        with server.lock:
                            server.served[prompt] += 1
                        self._send(200, server.completion_body(api, body))
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _upload(self, raw: bytes) -> None:
                msg = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                content = b""
                for part in msg.get_payload():
                    if part.get_param("name", header="content-disposition") == "file":
                        content = part.get_payload(decode=True)
                fid = f"file-{len(server.files) + 1}"
                server.files[fid] = content
                self._send(200, {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                 "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})

        return Handler


def prompt_of(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    p = body.get("prompt", "")
    return p if isinstance(p, str) else "\n".join(map(str, p))


if __name__ == "__main__":  # manual use: python tests/fake_openai_server.py
    with FakeOpenAI() as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
