#!/usr/bin/env bash
# The README's run command: the embedded default end to end on CPU.
#   1. sets up (apt packages, the venv) and builds, if needed;
#   2. generates the synthetic dataset (`mgm data synth`): images of coloured shapes and words,
#      pretraining captions, finetuning conversations, TextVQA- and MMBench-format eval sets and a
#      sentencepiece tokenizer;
#   3. pretrains the demo-size MGM (configs/models/demo.json, random init) with `train_mgm --stage
#      pretrain`, then finetunes it with `--stage finetune` from the stage-1 mm_projector.bin;
#   4. evaluates the untrained and the finetuned model on both synthetic benchmarks with
#      `mgm eval textvqa|mmbench` and `mgm score textvqa|mmbench`. MMBench runs without
#      --single-pred-prompt: the demo model names the option (trained so, see data/synth.cc), and
#      the scorer's rule-based matcher maps that text to its letter.
# Outputs go to $MGM_DEMO_OUT (default: demo_out/ in the repository); a rerun starts afresh.
# MGM_DEMO_SIZE (training images, default 1500) and MGM_DEMO_THREADS tune the run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"
out="${MGM_DEMO_OUT:-$root/demo_out}"
size="${MGM_DEMO_SIZE:-1500}"
threads="${MGM_DEMO_THREADS:-$(nproc 2>/dev/null || echo 2)}"
t0=$SECONDS

bash "$here/setup.sh"
echo "== build"
bash "$here/build.sh" >/dev/null
bin="$root/$MGM_BUILD_DIR"
mgm="$bin/eval/mgm"
train="$bin/trainer/train_mgm"
rm -rf "$out"
mkdir -p "$out"

echo "== mgm data synth ($size training images)"
"$mgm" data synth --out "$out/data" --seed 0 --size "$size" --eval_size 150 --vocab_size 1024
data="$out/data"
common=(--model_config "$root/configs/models/demo.json" --tokenizer "$data/tokenizer/tokenizer.model"
        --version gemma --image_folder "$data/images" --seed 42 --num_threads "$threads"
        --dataloader_num_workers 1 --logging_steps 10 --save_steps 100 --save_total_limit 1)

echo "== train_mgm --stage pretrain (projector + resampler; LLM and towers frozen)"
"$train" --stage pretrain "${common[@]}" --data_path "$data/pretrain.json" --output_dir "$out/pretrain" \
  --num_train_epochs 1 --per_device_train_batch_size 16 --learning_rate 1e-3 --weight_decay 0 \
  --warmup_ratio 0.03 --lr_scheduler_type cosine

echo "== train_mgm --stage finetune (LLM + projector + resampler)"
"$train" --stage finetune "${common[@]}" --data_path "$data/finetune.json" --output_dir "$out/finetune" \
  --pretrain_mm_mlp_adapter "$out/pretrain/mm_projector.bin" --image_aspect_ratio pad \
  --group_by_modality_length true --num_train_epochs 4 --per_device_train_batch_size 8 \
  --learning_rate 1e-3 --weight_decay 0 --warmup_ratio 0.03 --lr_scheduler_type cosine

# The untrained baseline: the same random model, saved without a single update (learning rate 0).
"$train" --stage finetune "${common[@]}" --data_path "$data/finetune.json" --output_dir "$out/untrained" \
  --pretrain_mm_mlp_adapter "$out/pretrain/mm_projector.bin" --image_aspect_ratio pad \
  --max_steps 1 --per_device_train_batch_size 1 --learning_rate 0 --progress none >/dev/null

echo "== evaluation on the synthetic TextVQA- and MMBench-format sets"
for model in untrained finetune; do
  m="$out/$model"
  "$mgm" eval textvqa --model-path "$m" --question-file "$data/eval/textvqa_questions.jsonl" \
    --image-folder "$data/images" --answers-file "$m/textvqa_answers.jsonl" --conv-mode gemma \
    --max_new_tokens 8 --batch_size 16 >/dev/null 2> >(grep -v " answered$" >&2)
  "$mgm" eval mmbench --model-path "$m" --question-file "$data/eval/mmbench.tsv" \
    --answers-file "$m/mmbench_answers.jsonl" --conv-mode gemma \
    --max_new_tokens 4 --batch_size 16 >/dev/null 2> >(grep -v " answered$" >&2)
  echo "-- $model model"
  "$mgm" score textvqa --annotation-file "$data/eval/textvqa_annotations.json" \
    --result-file "$m/textvqa_answers.jsonl" | grep -v '^$'
  "$mgm" score mmbench --question-file "$data/eval/mmbench.tsv" --result-file "$m/mmbench_answers.jsonl" \
    --out-dir "$m/mmbench_report" | grep -v "^wrote "
done
"$MGM_VENV/bin/python" - "$data/synth.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])).get("chance", {})
if c:
    print(f"chance levels: TextVQA {100 * c['textvqa']['overall']:.1f}%, "
          f"MMBench circular {100 * c['mmbench_circular']['overall']:.1f}% "
          f"(single-pass {100 * c['mmbench']['overall']:.1f}%)")
PY

echo "== done in $((SECONDS - t0)) s; outputs in $out:"
echo "   data/ (synthetic set), pretrain/ (mm_projector.bin, config.json, metrics.jsonl, loss.png),"
echo "   finetune/ (MGM checkpoint, loss.png, answers and scores), untrained/ (the baseline)"
