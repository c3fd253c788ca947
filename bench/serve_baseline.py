"""The Python baseline for bench/serve_throughput: serves the LLM of an MGM checkpoint one request
at a time, as FastChat's model_worker serves a model (fastchat/serve/inference.py generate_stream:
a prefill, then one token per forward with past_key_values; lm-sys/FastChat), with transformers'
GemmaForCausalLM (4.38, the version MGM-2B was trained with) and the same gemma template, behind a
minimal OpenAI-style /v1/chat/completions (text messages, greedy or sampled, stream with
include_usage, ignore_eos as vLLM's extension).

Usage: serve_baseline.py MODEL_DIR PORT_FILE [--threads N] [--max-model-len 512]
Binds an ephemeral loopback port and writes it to PORT_FILE; serves until SIGTERM.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from safetensors.torch import load_file
from transformers import GemmaConfig, GemmaForCausalLM, GemmaTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("port_file")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--max-model-len", type=int, default=512)
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

cfg_json = json.load(open(os.path.join(args.model_dir, "config.json")))
gemma_keys = {k: v for k, v in cfg_json.items() if not k.startswith("mm_") and not isinstance(v, dict)}
gemma_keys["model_type"] = "gemma"
gemma_keys.pop("architectures", None)
# transformers 4.38 materialises a [max_position_embeddings]^2 causal mask in every forward;
# with the config's 8192 that alone costs ~0.25 GB and most of a step. The served context
# (--max-model-len, also mgm serve's) bounds positions, and RoPE does not depend on the value.
gemma_keys["max_position_embeddings"] = args.max_model_len
config = GemmaConfig(**gemma_keys)
model = GemmaForCausalLM(config)
state = {}
for f in sorted(os.listdir(args.model_dir)):
    if f.endswith(".safetensors"):
        state.update(load_file(os.path.join(args.model_dir, f)))
llm = {k: v for k, v in state.items() if k.startswith("model.layers.") or k in (
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
missing, unexpected = model.load_state_dict(llm, strict=False)
missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embeddings
if missing or unexpected:
    sys.exit(f"baseline: LLM weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
model.tie_weights()
model.eval()
# The turn markers are special tokens, as google/gemma-2b-it's tokenizer_config.json declares them
# (so skip_special_tokens drops them, as mgm's decoding does).
tok = GemmaTokenizer(vocab_file=os.path.join(args.model_dir, "tokenizer.model"),
                     additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
EOS = tok.eos_token_id
lock = threading.Lock()  # one request at a time, as a FastChat model_worker generating


def prompt_ids(messages):
    # The gemma template (MGM's conv_gemma) for a text-only conversation ending with a user turn.
    text = ""
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    for i, m in enumerate(turns[:-1]):
        role = "user" if m["role"] == "user" else "model"
        text += "<start_of_turn>" + role + "\n" + m["content"] + "<end_of_turn>\n" + ("<eos>" if i % 2 else "")
    text += "<start_of_turn>user\n" + turns[-1]["content"] + "<end_of_turn>\n<start_of_turn>model\n"
    return [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)


@torch.inference_mode()
def generate(ids, max_tokens, temperature, ignore_eos, seed):
    """Yields (new text, token) per generated token: FastChat's generate_stream loop."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = model(torch.tensor([ids]), use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1]
    tokens, sent = [], ""
    for _ in range(max_tokens):
        if temperature > 0:
            t = int(torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=gen))
        else:
            t = int(torch.argmax(logits))
        if t == EOS and not ignore_eos:
            return
        tokens.append(t)
        text = tok.decode(tokens, skip_special_tokens=True)
        yield text[len(sent):], t
        sent = text
        out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {})
        self.reply(404, {"error": {"message": "no route"}})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": "no route"}})
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = prompt_ids(req["messages"])
        max_tokens = int(req.get("max_tokens") or 256)
        temperature = float(req.get("temperature", 1.0))
        stream = bool(req.get("stream"))
        rid, created = f"chatcmpl-{time.time_ns()}", int(time.time())
        with lock:
            pieces = generate(ids, max_tokens, temperature, bool(req.get("ignore_eos")), req.get("seed"))
            if not stream:
                text, n = "", 0
                for piece, _ in pieces:
                    text += piece
                    n += 1
                return self.reply(200, {"id": rid, "object": "chat.completion", "created": created, "model": "baseline",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                     "finish_reason": "length" if n == max_tokens else "stop"}],
                                        "usage": {"prompt_tokens": len(ids), "completion_tokens": n,
                                                  "total_tokens": len(ids) + n}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(obj):
                data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def chunk(delta, finish):
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": "baseline",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            send(chunk({"role": "assistant", "content": ""}, None))
            n = 0
            for piece, _ in pieces:
                n += 1
                if piece:
                    send(chunk({"content": piece}, None))
            send(chunk({}, "length" if n == max_tokens else "stop"))
            send({"id": rid, "object": "chat.completion.chunk", "created": created, "model": "baseline", "choices": [],
                  "usage": {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}})
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
tmp = args.port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.replace(tmp, args.port_file)
server.serve_forever()
