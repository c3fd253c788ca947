#!/usr/bin/env bash
# bench/serve_throughput: `mgm serve` (continuous batching) and the Python baseline
# (bench/serve_baseline.py: transformers' GemmaForCausalLM serving one request at a time, as
# FastChat's model_worker) on the same weights, loaded in turn by the same client
# (bench/serve_load.py) at 1, 4 and 16 parallel clients: output tokens/s, requests/s, time to
# first token P50/P99, and whether every greedy answer is equal between the two.
#
# Usage: bench/run_serve_throughput.sh [--model DIR] [--requests 32] [--max-tokens 64]
#                                      [--concurrency 1,4,16] [--threads 2] [--out DIR]
# The model defaults to the demo's finetuned model ($MGM_DEMO_OUT/finetune, demo_out/finetune by
# default: run scripts/demo.sh first). Requests are text-only chat messages (the baseline serves
# the LLM only); each asks for exactly --max-tokens tokens (ignore_eos), greedy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$root/scripts/env.sh"
model="${MGM_DEMO_OUT:-$root/demo_out}/finetune"
requests=32 max_tokens=64 conc=1,4,16 threads=2 out="$root/bench_out/serve"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --concurrency) conc="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -f "$model/config.json" ]] || { echo "no model at $model (run scripts/demo.sh, or pass --model DIR)" >&2; exit 1; }
bd="${MGM_BUILD_DIR:-build}"
[[ "$bd" == /* ]] || bd="$root/$bd"
mgm="$bd/eval/mgm"
[[ -x "$mgm" ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
py="$MGM_VENV/bin/python"
mkdir -p "$out"
rm -f "$out/baseline.port"

# Prompts: the demo's evaluation questions as text.
"$py" - "$model" "$out/prompts.json" <<'PY'
import json, sys, os, glob
qs = []
for f in glob.glob(os.path.join(os.path.dirname(sys.argv[1].rstrip("/")), "data", "eval", "*.jsonl")):
    for l in open(f):
        q = json.loads(l).get("text", "").split("\n")[0]
        if q and q not in qs:
            qs.append(q)
if not qs:
    qs = ["What colour is the shape?", "What shape is shown in the image?", "Describe the image.",
          "How many shapes are there?", "Where is the circle?", "Which word is written?"]
json.dump(qs[:64], open(sys.argv[2], "w"))
print(f"{len(qs[:64])} prompts")
PY

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

OMP_NUM_THREADS=$threads "$mgm" serve --model-path "$model" --port 0 --max-num-seqs 16 \
  --max-model-len 512 > "$out/mgm_serve.log" 2>&1 &
pids+=($!)
"$py" "$here/serve_baseline.py" "$model" "$out/baseline.port" --threads "$threads" > "$out/baseline.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do
  grep -q "on http://" "$out/mgm_serve.log" && [[ -f "$out/baseline.port" ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$out/mgm_serve.log"; exit 1; }
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$out/baseline.log"; exit 1; }
  sleep 0.2  # polling for the two servers' port announcements
done
mgm_port="$(grep -o 'on http://127.0.0.1:[0-9]*' "$out/mgm_serve.log" | grep -o '[0-9]*$')"
base_port="$(cat "$out/baseline.port")"
echo "mgm serve on $mgm_port, baseline on $base_port; $threads threads each; $requests requests x $max_tokens tokens per level"

"$py" "$here/serve_load.py" "http://127.0.0.1:$base_port" "$out/prompts.json" "$out/baseline.json" \
  --concurrency "$conc" --requests "$requests" --max-tokens "$max_tokens"
"$py" "$here/serve_load.py" "http://127.0.0.1:$mgm_port" "$out/prompts.json" "$out/mgm.json" \
  --concurrency "$conc" --requests "$requests" --max-tokens "$max_tokens"

"$py" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
b, m = json.load(open(out + "/baseline.json")), json.load(open(out + "/mgm.json"))
print("\n| clients | server | output tok/s | req/s | TTFT P50 | TTFT P99 | answers equal |")
print("|---|---|---|---|---|---|---|")
ok = True
for lb, lm in zip(b["levels"], m["levels"]):
    same = lb["answers"] == lm["answers"]
    ok &= same
    for name, l in (("Python baseline (one at a time)", lb), ("mgm serve", lm)):
        print(f"| {l['concurrency']} | {name} | {l['output_tokens_per_s']:.0f} | {l['requests_per_s']:.2f} | "
              f"{l['ttft_p50_s'] * 1000:.0f} ms | {l['ttft_p99_s'] * 1000:.0f} ms | {'yes' if same else 'NO'} |")
    print(f"| {lb['concurrency']} | ratio | {lm['output_tokens_per_s'] / lb['output_tokens_per_s']:.1f}x | | | | |")
if not ok:
    for lb, lm in zip(b["levels"], m["levels"]):
        for k in lb["answers"]:
            if lb["answers"][k] != lm["answers"][k]:
                print(f"c={lb['concurrency']} request {k}: baseline {lb['answers'][k]!r} != mgm {lm['answers'][k]!r}")
                break
sys.exit(0 if ok else 1)
PY
