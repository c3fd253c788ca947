#!/usr/bin/env bash
# The GPU checks of data parallelism (issue 6), for the GPU machine after scripts/gpu/build.sh:
#  1. NCCL end to end with world size 1 on CUDA: under torchrun and under --nproc_per_node 1
#     (tiny model, generated data, bf16, a checkpoint and a resume);
#  2. step time of the real MGM-2B shapes (random init from configs/models/mgm_2b.json) with the
#     gradient all-reduce overlapping backward (25 MB buckets, launched from the gradient hooks)
#     and without (one bucket, which can only go once backward is over).
# Needs scripts/gpu/data/ (scripts/gpu/prepare_data.sh on a development machine, carried).
# Prints one line per check. DEVICE=cpu MODEL_CONFIG=configs/models/tiny.json runs the same
# steps on a CPU machine (Gloo) as a dry run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${MGM_BUILD_DIR:-$root/build-gpu}"
py="${MGM_PYTHON:-/opt/torch/.venv/bin/python3}"
out="${OUT:-/tmp/mgm-ddp-check}"
device="${DEVICE:-cuda}"
model_config="${MODEL_CONFIG:-$root/configs/models/mgm_2b.json}"
steps="${STEPS:-12}"
train="$build/trainer/train_mgm"
precision=(--bf16)
[[ "$device" == cpu ]] && precision=()

rm -rf "$out"
[[ -f "$here/data/small/synth.json" ]] || { echo "[ddp_check] ERROR: $here/data/small missing: run scripts/gpu/prepare_data.sh on a development machine (the GPU build has no OpenCV to draw it) and carry scripts/gpu/data" >&2; exit 1; }
mkdir -p "$out"; cp -r "$here/data/small" "$out/data"
data=(--tokenizer "$out/data/tokenizer/tokenizer.model" --data_path "$out/data/finetune.json"
      --image_folder "$out/data/images" --dataloader_num_workers 2 --logging_steps 1 --progress none
      --seed 5 --device "$device" "${precision[@]}")
torchrun=("$py" -m torch.distributed.run --no-python --nproc_per_node 1)

# 1. World size 1 end to end (NCCL on CUDA): a run that saves a checkpoint at step 5, a resume
#    from that checkpoint in another folder, and the same run through --nproc_per_node 1.
tiny=(--stage finetune --model_config "$root/configs/models/tiny.json" --per_device_train_batch_size 4
      --max_steps 10 --save_steps 5 "${data[@]}")
"${torchrun[@]}" "$train" "${tiny[@]}" --output_dir "$out/tiny" >"$out/tiny.log" 2>&1
echo "torchrun: $(grep -o 'data parallel: .*' "$out/tiny.log" | head -1)"
"${torchrun[@]}" "$train" "${tiny[@]}" --output_dir "$out/tiny_resumed" \
  --resume_from_checkpoint "$out/tiny/checkpoint-5" >"$out/tiny_resumed.log" 2>&1
grep -q "resuming from $out/tiny/checkpoint-5" "$out/tiny_resumed.log"
"$train" "${tiny[@]}" --nproc_per_node 1 --output_dir "$out/tiny_nproc" >"$out/tiny_nproc.log" 2>&1
"$py" - "$out" <<'PY'
import json, sys
from safetensors.torch import load_file
out = sys.argv[1]
w = {k: load_file(f"{out}/{k}/model.safetensors") for k in ("tiny", "tiny_resumed", "tiny_nproc")}
def diff(a, b):
    return max((w[a][n].float() - w[b][n].float()).abs().max().item() for n in w[a])
last = json.loads(open(f"{out}/tiny/metrics.jsonl").readlines()[-1])
print(f"world 1 finished: step {last['step']}, loss {last['loss']:.4f}; resumed vs uninterrupted: max |dw| "
      f"{diff('tiny', 'tiny_resumed'):.3g}; --nproc_per_node 1 vs torchrun: max |dw| {diff('tiny', 'tiny_nproc'):.3g}")
PY

# 2. Overlap on and off, on the real model's shapes.
for cap in 25 100000; do
  "${torchrun[@]}" "$train" --stage finetune --model_config "$model_config" --per_device_train_batch_size 4 \
    --gradient_checkpointing --max_steps "$steps" --save_strategy no --ddp_bucket_cap_mb "$cap" \
    "${data[@]}" --output_dir "$out/overlap_$cap" >"$out/overlap_$cap.log" 2>&1
  "$py" - "$out/overlap_$cap/metrics.jsonl" "$cap" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
t = [r["elapsed_s"] for r in rows]
skip = min(3, len(t) - 2)  # warm-up steps
per_step = (t[-1] - t[skip]) / (len(t) - 1 - skip)
print(f"bucket cap {sys.argv[2]} MB ({'overlapped' if sys.argv[2] == '25' else 'one bucket, after backward'}): "
      f"{per_step:.3f} s/step over {len(t) - 1 - skip} steps")
PY
done
