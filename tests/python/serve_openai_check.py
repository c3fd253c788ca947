"""Checks a running `mgm serve` through the clients its users have: the openai SDK and raw HTTP.

Usage: serve_openai_check.py PORT API_KEY FIXTURE_DIR EVAL_ANSWERS SERVER_PID MGM_BIN

FIXTURE_DIR holds questions.jsonl and images/ (tests/tiny_mgm.cc); EVAL_ANSWERS is `mgm eval
textvqa`'s answer file for those questions (greedy, max_new_tokens 6). The server was started with
--api-key API_KEY --allowed-local-media-path FIXTURE_DIR/images --max-request-bytes 2097152
--limit-mm-per-prompt image=1. Checks, in order: greedy answers equal mgm eval's; 16 concurrent
clients get the sequential answers; streaming (deltas add up, usage chunk); stop strings; text
completions; local files, traversal and symlink escapes; authentication; every malformed request
gets its 4xx in OpenAI's error shape while good requests run beside them; a client that
disconnects cancels its request; `mgm chat --url` and `mgm chat --model-path` in a pseudo-terminal (chat_pty.py); and, last, SIGTERM drains: the running stream finishes, new
requests are refused, and the server exits (the caller checks exit code 0).
Exits 0 when everything holds, 1 with the failures listed.
"""
import base64
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

PORT, KEY, FIX, EVAL, PID = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
MGM_BIN = sys.argv[6]
BASE = f"http://127.0.0.1:{PORT}"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def client(key=KEY, retries=0):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=retries, timeout=120)


def raw(method, path, body=None, headers=None, timeout=60):
    """One raw HTTP request: (status, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    h = {"Authorization": "Bearer " + KEY}
    if headers is not None:
        h = headers
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read().decode("utf-8", "replace")
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/x-portable-pixmap;base64," + base64.b64encode(f.read()).decode()


questions = [json.loads(l) for l in open(os.path.join(FIX, "questions.jsonl"))]
answers = {}
for l in open(EVAL):
    a = json.loads(l)
    answers[(a["question_id"], a["prompt"])] = a["text"]


def ask(c, q, stream=False, **kw):
    msgs = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(os.path.join(FIX, "images", q["image"]))}},
        {"type": "text", "text": q["text"]}]}]
    args = dict(model="MGM-tiny", messages=msgs, temperature=0, max_tokens=6)
    args.update(kw)
    if not stream:
        r = c.chat.completions.create(**args)
        return r.choices[0].message.content, r
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks


c = client()

# --- models -------------------------------------------------------------------------------------
models = c.models.list()
check([m.id for m in models.data] == ["MGM-tiny"], f"models: {models}")

# --- greedy answers equal mgm eval's, sequentially -------------------------------------------
sequential = []
for q in questions:
    text, r = ask(c, q)
    sequential.append(text)
    want = answers[(q["question_id"], q["text"])]
    check(text.strip() == want, f"{q['question_id']}: server {text!r} != mgm eval {want!r}")
    check(r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 16, f"usage {r.usage}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish {r.choices[0].finish_reason}")
check(len(set(sequential)) >= 3, f"answers do not vary: {sequential}")

# --- 16 concurrent clients --------------------------------------------------------------------
jobs = [questions[i % len(questions)] for i in range(16)]
with ThreadPoolExecutor(16) as pool:
    got = list(pool.map(lambda q: ask(client(), q)[0], jobs))
for i, q in enumerate(jobs):
    check(got[i] == sequential[i % len(questions)], f"concurrent {i}: {got[i]!r} != {sequential[i % len(questions)]!r}")

# --- streaming ----------------------------------------------------------------------------------
for i, q in enumerate(questions):
    text, chunks = ask(c, q, stream=True)
    check(text == sequential[i], f"streamed {text!r} != {sequential[i]!r}")
check(chunks[-1].usage is not None and chunks[-1].choices == [], "the last chunk carries the usage")
check(chunks[-1].usage.completion_tokens >= 1, "usage in the stream")
finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check(finishes in (["stop"], ["length"]), f"finish reasons {finishes}")
check(chunks[0].choices[0].delta.role == "assistant", "the first chunk names the role")

# --- stop strings -----------------------------------------------------------------------------
# The question whose answer is ordinary text (others are byte pieces that decode to U+FFFD).
sq = max(questions, key=lambda q: len(set(sequential[questions.index(q)])))
long_text, _ = ask(c, sq, max_tokens=12)
cut = next((k for k in range(2, len(long_text) - 2) if not long_text[k].isspace()), None)
if cut is not None:
    stop = long_text[cut:cut + 2]
    want = long_text[:long_text.find(stop)]
    got_stop, r = ask(c, sq, max_tokens=12, stop=[stop])
    check(got_stop == want and 0 < len(want) < len(long_text), f"stop {stop!r}: {got_stop!r} != {want!r}")
    check(r.choices[0].finish_reason == "stop", "a stop string ends with finish_reason stop")
    streamed_stop, _ = ask(c, sq, stream=True, max_tokens=12, stop=stop)
    check(streamed_stop == want, f"streamed stop {stop!r}: {streamed_stop!r} != {want!r}")
else:
    check(False, f"no text to cut a stop string from: {long_text!r}")

# --- text completions -----------------------------------------------------------------------
comp = c.completions.create(model="MGM-tiny", prompt="the red circle is", max_tokens=5, temperature=0)
check(comp.choices[0].finish_reason in ("stop", "length") and comp.usage.prompt_tokens >= 4, f"completion {comp}")
comp2 = c.completions.create(model="MGM-tiny", prompt="the red circle is", max_tokens=5, temperature=0)
check(comp2.choices[0].text == comp.choices[0].text, "greedy completions repeat")
stream_comp = "".join(ch.choices[0].text for ch in c.completions.create(
    model="MGM-tiny", prompt="the red circle is", max_tokens=5, temperature=0, stream=True) if ch.choices)
check(stream_comp == comp.choices[0].text, f"streamed completion {stream_comp!r}")

# --- seeded sampling repeats --------------------------------------------------------------------
s1, _ = ask(c, questions[2], temperature=1.0, seed=7, max_tokens=8)
s2, _ = ask(c, questions[2], temperature=1.0, seed=7, max_tokens=8)
check(s1 == s2, f"seed 7 twice: {s1!r} != {s2!r}")

# --- local files ------------------------------------------------------------------------------
q0 = questions[0]
local = c.chat.completions.create(model="MGM-tiny", temperature=0, max_tokens=6, messages=[{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "file://" + os.path.join(FIX, "images", q0["image"])}},
    {"type": "text", "text": q0["text"]}]}])
check(local.choices[0].message.content == sequential[0], "a file:// image under the allowed folder")
secret = os.path.join(FIX, "secret.ppm")
with open(secret, "wb") as f:
    f.write(open(os.path.join(FIX, "images", q0["image"]), "rb").read())
link = os.path.join(FIX, "images", "escape.ppm")
if not os.path.lexists(link):
    os.symlink(secret, link)


def chat_body(url=None, text="What is it?", **kw):
    content = [{"type": "text", "text": text}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    b = {"model": "MGM-tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 4}
    b.update(kw)
    return b


bomb = bytearray(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + b"\x00" * 20
hostile = [
    ("garbage body", "POST", "/v1/chat/completions", b"\x00\xff{{not json", 400),
    ("array body", "POST", "/v1/chat/completions", [1, 2], 400),
    ("messages not an array", "POST", "/v1/chat/completions", {"messages": "hi"}, 400),
    ("no messages", "POST", "/v1/chat/completions", {"model": "MGM-tiny"}, 400),
    ("content a number", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
    ("unknown role", "POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("temperature a string", "POST", "/v1/chat/completions", chat_body(temperature="hot"), 400),
    ("negative max_tokens", "POST", "/v1/chat/completions", chat_body(max_tokens=-1), 400),
    ("n = 2", "POST", "/v1/chat/completions", chat_body(n=2), 400),
    ("unknown part type", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400),
    ("undecodable image", "POST", "/v1/chat/completions", chat_body("data:image/png;base64," + base64.b64encode(os.urandom(300)).decode()), 400),
    ("bad base64", "POST", "/v1/chat/completions", chat_body("data:image/png;base64,@@@@"), 400),
    ("decompression bomb", "POST", "/v1/chat/completions", chat_body("data:image/png;base64," + base64.b64encode(bytes(bomb)).decode()), 400),
    ("remote URL", "POST", "/v1/chat/completions", chat_body("https://example.com/cat.png"), 400),
    ("path traversal", "POST", "/v1/chat/completions", chat_body("file://" + os.path.join(FIX, "images", "..", "questions.jsonl")), 400),
    ("symlink escape", "POST", "/v1/chat/completions", chat_body("file://" + link), 400),
    ("relative path", "POST", "/v1/chat/completions", chat_body("images/img0.ppm"), 400),
    ("two images, limit 1", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(os.path.join(FIX, "images", "img0.ppm"))}},
        {"type": "image_url", "image_url": {"url": data_url(os.path.join(FIX, "images", "img1.ppm"))}},
        {"type": "text", "text": "x"}]}]}, 400),
    ("prompt too long", "POST", "/v1/chat/completions", chat_body(text="the red circle " * 400), 400),
    ("max_tokens past the context", "POST", "/v1/chat/completions", chat_body(max_tokens=10 ** 6), 400),
    ("wrong model", "POST", "/v1/chat/completions", chat_body(model="gpt-4o"), 404),
    ("huge body", "POST", "/v1/chat/completions", b"{\"x\": \"" + b"a" * (3 << 20) + b"\"}", 413),
    ("no route", "GET", "/v1/nothing", None, 404),
    ("ends with assistant", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400),
    ("image token in text", "POST", "/v1/chat/completions", chat_body(text="look <image> here"), 400),
]


def good_request(i):
    return ask(client(), questions[i % len(questions)])[0] == sequential[i % len(questions)]


# Good requests run while the hostile ones arrive.
with ThreadPoolExecutor(6) as pool:
    goods = [pool.submit(good_request, i) for i in range(6)]
    for name, method, path, body, status in hostile:
        try:
            got_status, body_back = raw(method, path, body)
        except Exception as e:  # a 413 may close the connection while the body is still being sent
            got_status, body_back = (413, {"error": {"message": str(e)}}) if status == 413 else (None, str(e))
        check(got_status == status, f"{name}: status {got_status}, expected {status}: {body_back}")
        check(isinstance(body_back, dict) and isinstance(body_back.get("error", {}).get("message"), str),
              f"{name}: not an OpenAI error body: {body_back!r}"[:300])
    check(all(g.result() for g in goods), "good requests beside the hostile ones got their answers")

# --- authentication ------------------------------------------------------------------------------
try:
    client(key="wrong-key").models.list()
    check(False, "a wrong key was accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, f"wrong key: {e.status_code}")
status, body = raw("GET", "/v1/models", headers={})
check(status == 401 and "error" in body, f"no key: {status} {body}")
status, _ = raw("GET", "/health", headers={})
check(status == 200, "/health needs no key")

# --- a client that disconnects cancels its request ------------------------------------------
def metric(name):
    _, text = raw("GET", "/metrics", headers={})
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


cancelled_before = metric('mgm:request_success_total{model_name="MGM-tiny",finished_reason="cancelled"}')
sock = socket.create_connection(("127.0.0.1", PORT))
body = json.dumps(chat_body(text="What is it?", max_tokens=3900, stream=True)).encode()
sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
seen = b""
while seen.count(b"data: ") < 3:
    seen += sock.recv(4096)
sock.close()
deadline = time.time() + 60
while time.time() < deadline and metric('mgm:request_success_total{model_name="MGM-tiny",finished_reason="cancelled"}') <= cancelled_before:
    time.sleep(0.1)
check(metric('mgm:request_success_total{model_name="MGM-tiny",finished_reason="cancelled"}') > cancelled_before,
      "a disconnected streaming client cancels its request")
check(metric('mgm:num_requests_running{model_name="MGM-tiny"}') == 0, "nothing runs after the cancellation")

# Still healthy and right after everything above.
again, _ = ask(c, questions[3])
check(again == sequential[3], "the server still answers correctly")

# --- mgm chat --url in a terminal -------------------------------------------------------------
import subprocess
img0 = os.path.join(FIX, "images", questions[0]["image"])
short = c.chat.completions.create(model="MGM-tiny", temperature=0, max_tokens=8, messages=[{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": data_url(img0)}},
    {"type": "text", "text": "What is written on the sign?"}]}]).choices[0].message.content
pty_run = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "chat_pty.py"), MGM_BIN, img0,
                          "What is written on the sign?", short, "--", "--url", BASE, "--api-key", KEY,
                          "--max-tokens", "3500"], capture_output=True, text=True, timeout=300)
check(pty_run.returncode == 0, "mgm chat --url in a pty: " + pty_run.stdout[-3000:] + pty_run.stderr[-1000:])
# The same conversation with the model loaded in-process (mgm chat --model-path).
pty_local = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "chat_pty.py"), MGM_BIN, img0,
                            "What is written on the sign?", short, "--", "--model-path", os.path.join(FIX, "MGM-tiny"),
                            "--max-model-len", "4096", "--max-tokens", "3500"], capture_output=True, text=True, timeout=300)
check(pty_local.returncode == 0, "mgm chat --model-path in a pty: " + pty_local.stdout[-3000:] + pty_local.stderr[-1000:])

# --- SIGTERM drains -----------------------------------------------------------------------------
drain = {}


def stream_during_drain():
    pieces = []
    n = 0
    for ch in client().chat.completions.create(model="MGM-tiny", temperature=0, max_tokens=300, stream=True,
                                               stream_options={"include_usage": True},
                                               messages=[{"role": "user", "content": "What is it?"}]):
        n += 1
        if n == 2:
            drain["started"].set()
        if ch.usage:
            drain["usage"] = ch.usage
        for choice in ch.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                drain["finish"] = choice.finish_reason
    drain["text"] = "".join(pieces)
    drain["started"].set()  # an answer shorter than two chunks


drain["started"] = threading.Event()
t = threading.Thread(target=stream_during_drain)
t.start()
drain["started"].wait(60)
os.kill(PID, signal.SIGTERM)
# New requests are refused from now on: 503 while it drains, or no connection once it stopped.
deadline = time.time() + 30
refused = False
while time.time() < deadline and not refused:
    try:
        status, _ = raw("GET", "/health", headers={}, timeout=5)
        refused = status == 503
    except OSError:
        refused = True
check(refused, "after SIGTERM the server refuses new requests")
t.join(120)
check(drain.get("finish") in ("stop", "length"), f"the running stream finished during the drain: {drain.get('finish')}")
check(drain.get("usage") is not None, "the drained stream got its usage chunk")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all serve checks passed")
