#!/usr/bin/env bash
# MGM-2B, as the Better Synth toolkit's train_mgm_2b_stage_1.sh runs it: projector pretraining
# on (at most 200k sampled) captions, instruction finetuning, then TextVQA and MMBench
# evaluation with local scoring. Edit the block below; everything else follows from it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"

# ---- editable ------------------------------------------------------------------------------
MODELS=${MODELS:-$root/models_zoo}                 # downloaded checkpoints
GEMMA=$MODELS/gemma-2b-it
CLIP=$MODELS/clip-vit-large-patch14-336
CONVNEXT=$MODELS/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup
PRETRAIN_DJ=${PRETRAIN_DJ:-$root/input/pretrain_stage_1.jsonl}   # Data-Juicer captions (your data)
ORIGINAL_STAGE1=${ORIGINAL_STAGE1:-$root/input/stage_1.json}     # for --restore_questions
FINETUNE_JSON=${FINETUNE_JSON:-$root/input/mgm_instruction_stage_1.json}
IMAGES=${IMAGES:-$root/input/images}
EVAL=${EVAL:-$root/input/eval}                     # TextVQA + MMBench files
OUT=${OUT:-$root/output/mgm_2b}
DEVICE=${DEVICE:-cuda}
MAX_SAMPLES=200000
NPROC=${NPROC:-1}                                  # GPUs of this machine (train_mgm --nproc_per_node)
GA_PRETRAIN=${GA_PRETRAIN:-$((32 / NPROC))}        # NPROC GPUs x 8 x GA = 256 (the recipe's global batch)
GA_FINETUNE=${GA_FINETUNE:-$((16 / NPROC))}        # NPROC GPUs x 8 x GA = 128
# ---------------------------------------------------------------------------------------------
# Several GPUs: one process each, started and supervised by train_mgm (see README, Distributed
# training; scripts/train_mgm_2b_torchrun.sh and train_mgm_2b_slurm.sbatch for several nodes).
parallel=()
if (( NPROC > 1 )); then parallel=(--nproc_per_node "$NPROC"); fi

bash "$here/build.sh" >/dev/null
mgm="$root/$MGM_BUILD_DIR/eval/mgm"
train="$root/$MGM_BUILD_DIR/trainer/train_mgm"
mkdir -p "$OUT"

# Data as the toolkit prepares it: sample-number cap (seed 1024), DJ -> LLaVA with the questions restored.
"$mgm" data sample --data_path "$PRETRAIN_DJ" --out "$OUT/pretrain_sampled.jsonl" --max "$MAX_SAMPLES" --seed 1024 --overwrite
"$mgm" data convert --from dj --to llava --input "$OUT/pretrain_sampled.jsonl" --output "$OUT/pretrain.json" --overwrite \
  --image_special_token "<__dj__image>" --restore_questions true --original_llava_ds_path "$ORIGINAL_STAGE1"
"$mgm" data validate --data_path "$OUT/pretrain.json" --image_folder "$IMAGES" --tokenizer "$GEMMA" \
  --model_max_length 2048

"$train" --stage pretrain --config "$root/configs/runs/mgm_2b_pretrain.json" \
  --model_name_or_path "$GEMMA" --vision_tower "$CLIP" --vision_tower_aux "$CONVNEXT" \
  --data_path "$OUT/pretrain.json" --image_folder "$IMAGES" --output_dir "$OUT/pretrain" \
  --per_device_train_batch_size 8 --gradient_accumulation_steps "$GA_PRETRAIN" --device "$DEVICE" \
  --expected_global_batch_size 256 "${parallel[@]}"

"$train" --stage finetune --config "$root/configs/runs/mgm_2b_finetune.json" \
  --model_name_or_path "$GEMMA" --vision_tower "$CLIP" --vision_tower_aux "$CONVNEXT" \
  --pretrain_mm_mlp_adapter "$OUT/pretrain/mm_projector.bin" \
  --data_path "$FINETUNE_JSON" --image_folder "$IMAGES" --output_dir "$OUT/finetune" \
  --per_device_train_batch_size 8 --gradient_accumulation_steps "$GA_FINETUNE" --device "$DEVICE" \
  --expected_global_batch_size 128 "${parallel[@]}"

"$mgm" eval textvqa --model-path "$OUT/finetune" --question-file "$EVAL/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
  --image-folder "$EVAL/textvqa/train_images" --answers-file "$OUT/eval/textvqa_answers.jsonl" \
  --conv-mode gemma --device "$DEVICE" --dtype bf16
"$mgm" score textvqa --annotation-file "$EVAL/textvqa/TextVQA_0.5.1_val.json" --result-file "$OUT/eval/textvqa_answers.jsonl"
"$mgm" eval mmbench --model-path "$OUT/finetune" --question-file "$EVAL/mmbench/mmbench_dev_20230712.tsv" \
  --answers-file "$OUT/eval/mmbench_answers.jsonl" --conv-mode gemma --single-pred-prompt --device "$DEVICE" --dtype bf16
"$mgm" score mmbench --question-file "$EVAL/mmbench/mmbench_dev_20230712.tsv" --result-file "$OUT/eval/mmbench_answers.jsonl"
