"""A scripted OpenAI-compatible chat-completions server for the MMBench judge tests.

Usage: judge_mock_server.py DIR
Reads DIR/script.json:
  {"rules": [{"match": "text in the prompt", "replies": [SPEC, ...]}, ...], "default": SPEC}
The first rule whose "match" occurs in the request's user message answers; its replies are used
in order, the last one repeating. A SPEC is an object:
  {"content": "B"}                  200 with a chat completion whose message content is "B"
  {"content": "B", "chunked": true} the same, sent with Transfer-Encoding: chunked
  {"status": 503, "body": "..."}    that status with a raw text body
  {"body": "..."}                   200 with a raw (e.g. malformed JSON) body
  {"close_delimited": true, ...}    no Content-Length: the body ends when the connection closes
  {"drop": true}                    close the connection without a reply
  {"delay": S, ...}                 sleep S seconds first
  {"drip": S, ...}                  send the reply one byte every S seconds
  {"endless_headers": S}            send header lines without end, one every S seconds
Every request is appended to DIR/requests.jsonl ({"path", "headers", "body"}) before replying.
Binds 127.0.0.1 on an ephemeral port and writes it to DIR/port once listening.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

D = sys.argv[1]
SCRIPT = json.load(open(os.path.join(D, "script.json")))
LOCK = threading.Lock()
USED = {}


def completion(content):
    return json.dumps({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
            prompt = body["messages"][-1]["content"]
        except Exception:
            body, prompt = raw.decode("utf-8", "replace"), ""
        with LOCK:
            with open(os.path.join(D, "requests.jsonl"), "a") as f:
                f.write(json.dumps({"path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body}) + "\n")
            spec = SCRIPT.get("default", {"status": 404, "body": "no rule matches\n"})
            for i, rule in enumerate(SCRIPT.get("rules", [])):
                if rule["match"] in prompt:
                    k = USED.get(i, 0)
                    USED[i] = k + 1
                    spec = rule["replies"][min(k, len(rule["replies"]) - 1)]
                    break
        time.sleep(spec.get("delay", 0))
        if spec.get("drop"):
            self.close_connection = True
            return
        if "endless_headers" in spec:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for i in range(100000):
                    self.wfile.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 60))
                    self.wfile.flush()
                    time.sleep(spec["endless_headers"])
            except OSError:  # the client gave up
                pass
            self.close_connection = True
            return
        if "drip" in spec:
            data = completion(spec.get("content", "A"))
            raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(data), data)
            try:
                for i in range(len(raw)):
                    self.wfile.write(raw[i:i + 1])
                    self.wfile.flush()
                    time.sleep(spec["drip"])
            except OSError:
                pass
            self.close_connection = True
            return
        status = spec.get("status", 200)
        if "content" in spec:
            data, ctype = completion(spec["content"]), "application/json"
        else:
            data, ctype = spec.get("body", "").encode(), "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if spec.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 7):
                part = data[i:i + 7]
                ext = ";ext=1" if i == 7 else ""
                self.wfile.write(b"%x%s\r\n%s\r\n" % (len(part), ext.encode(), part))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        elif spec.get("close_delimited"):
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = os.path.join(D, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, os.path.join(D, "port"))
    server.serve_forever()


if __name__ == "__main__":
    main()
