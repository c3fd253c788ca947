"""Load generator for bench/serve_throughput: N streamed chat requests at C parallel clients against
an OpenAI-compatible server; reports output tokens/s, requests/s and time to first token (P50,
P99) per concurrency level, and every answer (to compare servers).

Usage: serve_load.py URL PROMPTS_JSON OUT_JSON [--concurrency 1,4,16] [--requests 32]
                     [--max-tokens 64] [--api-key K]
"""
import argparse
import http.client
import json
import statistics
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("prompts")
ap.add_argument("out")
ap.add_argument("--concurrency", default="1,4,16")
ap.add_argument("--requests", type=int, default=32)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--api-key", default="")
a = ap.parse_args()
u = urllib.parse.urlparse(a.url)
prompts = json.load(open(a.prompts))


def one(i):
    body = json.dumps({"messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                       "temperature": 0, "max_tokens": a.max_tokens, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    h = {"Content-Type": "application/json"}
    if a.api_key:
        h["Authorization"] = "Bearer " + a.api_key
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.request("POST", "/v1/chat/completions", body=body, headers=h)
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"request {i}: HTTP {r.status}: {r.read()[:300]!r}")
    first, text, tokens, buf = None, "", 0, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            j = json.loads(event[6:])
            if j.get("usage"):
                tokens = j["usage"]["completion_tokens"]
            for ch in j.get("choices", []):
                piece = ch.get("delta", {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter() - t0
                    text += piece
    c.close()
    return {"i": i, "ttft": first if first is not None else time.perf_counter() - t0,
            "latency": time.perf_counter() - t0, "tokens": tokens, "text": text}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


results = {"url": a.url, "max_tokens": a.max_tokens, "levels": []}
for conc in [int(x) for x in a.concurrency.split(",")]:
    one(0)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        rs = list(pool.map(one, range(a.requests)))
    wall = time.perf_counter() - t0
    toks = sum(r["tokens"] for r in rs)
    ttft = [r["ttft"] for r in rs]
    level = {"concurrency": conc, "requests": a.requests, "wall_s": wall, "output_tokens": toks,
             "output_tokens_per_s": toks / wall, "requests_per_s": a.requests / wall,
             "ttft_p50_s": statistics.median(ttft), "ttft_p99_s": pct(ttft, 99),
             "answers": {str(r["i"]): r["text"] for r in rs}}
    results["levels"].append(level)
    print(f"{a.url} c={conc}: {toks / wall:.0f} tok/s, {a.requests / wall:.2f} req/s, "
          f"TTFT p50 {level['ttft_p50_s'] * 1000:.0f} ms p99 {level['ttft_p99_s'] * 1000:.0f} ms", flush=True)
json.dump(results, open(a.out, "w"), indent=1)
