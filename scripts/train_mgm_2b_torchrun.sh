#!/usr/bin/env bash
# MGM-2B training on several GPUs and nodes with torchrun: one train_mgm process per GPU, NCCL
# between them, the recipe's global batches kept (pretrain 256, finetune 128) by computing the
# gradient accumulation from the number of GPUs. Run this same script on every node, with that
# node's NODE_RANK and the first node's address as MASTER_ADDR:
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=node01 scripts/train_mgm_2b_torchrun.sh
#   node 1: NNODES=2 NODE_RANK=1 MASTER_ADDR=node01 scripts/train_mgm_2b_torchrun.sh
# On a single machine, NPROC=8 scripts/train_mgm_2b.sh does the same without torchrun (it uses
# train_mgm --nproc_per_node). The data must be prepared first (as scripts/train_mgm_2b.sh does)
# and OUT must be on a filesystem every node shares (rank 0 writes it; all ranks resume from it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"

# ---- editable ------------------------------------------------------------------------------
MODELS=${MODELS:-$root/models_zoo}
GEMMA=$MODELS/gemma-2b-it
CLIP=$MODELS/clip-vit-large-patch14-336
CONVNEXT=$MODELS/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup
OUT=${OUT:-$root/output/mgm_2b}                    # holds pretrain.json from scripts/train_mgm_2b.sh
FINETUNE_JSON=${FINETUNE_JSON:-$root/input/mgm_instruction_stage_1.json}
IMAGES=${IMAGES:-$root/input/images}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
TORCHRUN=${TORCHRUN:-$MGM_VENV/bin/torchrun}
# ---------------------------------------------------------------------------------------------

world=$((NNODES * GPUS_PER_NODE))
accumulation() {  # global batch / (8 per GPU x world), which must divide evenly
  local global=$1
  (( global % (8 * world) == 0 )) || { echo "global batch $global is not a multiple of 8 x $world GPUs" >&2; exit 2; }
  echo $((global / (8 * world)))
}
train="$root/$MGM_BUILD_DIR/trainer/train_mgm"
# train_mgm is a program, not a Python script: --no-python.
launch=("$TORCHRUN" --no-python --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")

"${launch[@]}" "$train" --stage pretrain --config "$root/configs/runs/mgm_2b_pretrain.json" \
  --model_name_or_path "$GEMMA" --vision_tower "$CLIP" --vision_tower_aux "$CONVNEXT" \
  --data_path "$OUT/pretrain.json" --image_folder "$IMAGES" --output_dir "$OUT/pretrain" \
  --per_device_train_batch_size 8 --gradient_accumulation_steps "$(accumulation 256)" \
  --expected_global_batch_size 256 --device cuda --ddp_timeout 600

"${launch[@]}" "$train" --stage finetune --config "$root/configs/runs/mgm_2b_finetune.json" \
  --model_name_or_path "$GEMMA" --vision_tower "$CLIP" --vision_tower_aux "$CONVNEXT" \
  --pretrain_mm_mlp_adapter "$OUT/pretrain/mm_projector.bin" \
  --data_path "$FINETUNE_JSON" --image_folder "$IMAGES" --output_dir "$OUT/finetune" \
  --per_device_train_batch_size 8 --gradient_accumulation_steps "$(accumulation 128)" \
  --expected_global_batch_size 128 --device cuda --ddp_timeout 600
