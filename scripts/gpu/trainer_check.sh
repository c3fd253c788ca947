#!/usr/bin/env bash
# The GPU checks of the trainer (issue 5), for the GPU machine after scripts/gpu/build.sh, with
# scripts/gpu/data/ made by scripts/gpu/prepare_data.sh on a development machine and carried:
#  1. the embedded-default demo on CUDA in bf16 (pretrain + 4-epoch finetune, as scripts/demo.sh)
#     and its evaluation on the synthetic TextVQA- and MMBench-format sets;
#  2. steps of the real-size MGM-2B (random init from configs/models/mgm_2b.json) in both stages,
#     bf16 + gradient checkpointing: step time and peak memory (train_results.json).
# Prints one line per result. DEVICE=cpu MODEL_CONFIG=configs/models/tiny.json DEMO_EPOCHS=1
# runs the same steps on a CPU machine as a dry run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${MGM_BUILD_DIR:-$root/build-gpu}"
py="${MGM_PYTHON:-/opt/torch/.venv/bin/python3}"
out="${OUT:-/tmp/mgm-trainer-check}"
device="${DEVICE:-cuda}"
model_config="${MODEL_CONFIG:-$root/configs/models/mgm_2b.json}"
demo_epochs="${DEMO_EPOCHS:-4}"
steps="${STEPS:-8}"
data="$here/data"
train="$build/trainer/train_mgm"
mgm="$build/eval/mgm"
for d in demo small; do
  [[ -f "$data/$d/synth.json" ]] || { echo "[trainer_check] ERROR: $data/$d missing: run scripts/gpu/prepare_data.sh on a development machine and carry scripts/gpu/data" >&2; exit 1; }
done
precision=(--bf16)
[[ "$device" == cpu ]] && precision=()
rm -rf "$out"
mkdir -p "$out"

summary() {  # train_results.json -> one line
  "$py" - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/train_results.json"))
m = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
# Seconds per step between the first and the last logged step (the first includes start-up).
per_step = ((m[-1]["elapsed_s"] - m[0]["elapsed_s"]) / (m[-1]["step"] - m[0]["step"])
            if len(m) > 1 else float("nan"))
print(f"{sys.argv[2]}: {r['global_step']} steps in {r['train_runtime']:.1f} s ({per_step:.3f} s/step after the "
      f"first logged one), {r['train_samples_per_second']:.1f} samples/s, loss {m[-1]['loss']:.4f}, "
      f"peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB")
PY
}

# 1. The demo on the device.
d="$data/demo"
common=(--model_config "$root/configs/models/demo.json" --tokenizer "$d/tokenizer/tokenizer.model"
        --version gemma --image_folder "$d/images" --seed 42 --dataloader_num_workers 4
        --logging_steps 10 --save_strategy no --progress none --device "$device" "${precision[@]}")
"$train" --stage pretrain "${common[@]}" --data_path "$d/pretrain.json" --output_dir "$out/demo_pretrain" \
  --num_train_epochs 1 --per_device_train_batch_size 16 --learning_rate 1e-3 --weight_decay 0 \
  --warmup_ratio 0.03 --lr_scheduler_type cosine >"$out/demo_pretrain.log" 2>&1
summary "$out/demo_pretrain" "demo pretrain ($device)"
"$train" --stage finetune "${common[@]}" --data_path "$d/finetune.json" --output_dir "$out/demo_finetune" \
  --pretrain_mm_mlp_adapter "$out/demo_pretrain/mm_projector.bin" --image_aspect_ratio pad \
  --group_by_modality_length true --num_train_epochs "$demo_epochs" --per_device_train_batch_size 8 \
  --learning_rate 1e-3 --weight_decay 0 --warmup_ratio 0.03 --lr_scheduler_type cosine >"$out/demo_finetune.log" 2>&1
summary "$out/demo_finetune" "demo finetune ($device)"
m="$out/demo_finetune"
"$mgm" eval textvqa --model-path "$m" --question-file "$d/eval/textvqa_questions.jsonl" --image-folder "$d/images" \
  --answers-file "$m/textvqa_answers.jsonl" --conv-mode gemma --max_new_tokens 8 --batch_size 32 \
  --device "$device" >/dev/null 2>"$out/eval_textvqa.log"
echo "demo TextVQA-format: $("$mgm" score textvqa --annotation-file "$d/eval/textvqa_annotations.json" --result-file "$m/textvqa_answers.jsonl" | grep Accuracy)"
"$mgm" eval mmbench --model-path "$m" --question-file "$d/eval/mmbench.tsv" --answers-file "$m/mmbench_answers.jsonl" \
  --conv-mode gemma --max_new_tokens 4 --batch_size 32 --device "$device" >/dev/null 2>"$out/eval_mmbench.log"
echo "demo MMBench-format: $("$mgm" score mmbench --question-file "$d/eval/mmbench.tsv" --result-file "$m/mmbench_answers.jsonl" --out-dir "$m/mmbench_report" | grep Overall)"

# 2. Real-size steps (random weights).
s="$data/small"
big=(--model_config "$model_config" --tokenizer "$s/tokenizer/tokenizer.model" --version gemma
     --image_folder "$s/images" --seed 5 --dataloader_num_workers 4 --logging_steps 1 --save_strategy no
     --progress none --device "$device" "${precision[@]}" --gradient_checkpointing --max_steps "$steps"
     --per_device_train_batch_size 4)
"$train" --stage pretrain "${big[@]}" --data_path "$s/pretrain.json" --output_dir "$out/big_pretrain" \
  --learning_rate 1e-3 >"$out/big_pretrain.log" 2>&1
summary "$out/big_pretrain" "$(basename "$model_config") pretrain step"
"$train" --stage finetune "${big[@]}" --data_path "$s/finetune.json" --output_dir "$out/big_finetune" \
  --pretrain_mm_mlp_adapter "$out/big_pretrain/mm_projector.bin" --image_aspect_ratio pad \
  --learning_rate 2e-5 >"$out/big_finetune.log" 2>&1
summary "$out/big_finetune" "$(basename "$model_config") finetune step"
