#!/usr/bin/env bash
# The Better Synth data loop on the embedded default, end to end, over several seeds:
#   1. `mgm data synth --caption-noise 0.5`: half the pretraining captions are wrong on purpose
#      (wrong colour, shape or count, or another image's caption; pretrain_truth.jsonl says which).
#   2. noisy:    pretrain on the noisy captions -> finetune (fixed data) -> eval.
#   3. filtered: a caption model (the noisy run's projector, then the LLM finetuned for 2 epochs on
#      the noisy captions themselves: wrong captions disagree with their images at random, so the
#      model learns the majority and finds the wrong ones less likely, the "small-loss" idea);
#      `mgm data score` the pretraining set with it, `mgm data filter --keep-top-fraction 0.5
#      --rank-by mgm_loglik` -> pretrain again -> the same finetune -> eval. (The noisy run's own
#      finetuned model was tried first: it never saw captions and ranks them at chance, AUC 0.53.)
#   4. clean:    the true captions (the upper bound a perfect cleaner reaches) -> the same.
# Prints one table: data variant, samples kept, caption accuracy against the synthetic ground
# truth, the filter's precision and recall on the wrong captions, TextVQA- and MMBench-format
# scores; writes better_synth_out/results.json.
#
# Environment: MGM_BS_SEEDS (default "1 2 3"), MGM_BS_SIZE (training images, default 1500),
# MGM_BS_NOISE (default 0.5), MGM_BS_OUT (default better_synth_out/), MGM_DEMO_THREADS,
# MGM_BS_VARIANTS (default "noisy filtered clean"; filtered needs noisy's pretrain output),
# MGM_BS_REUSE=1 (keep an existing seed folder's data and runs, redo only MGM_BS_VARIANTS).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"
seeds="${MGM_BS_SEEDS:-1 2 3}"
size="${MGM_BS_SIZE:-1500}"
noise="${MGM_BS_NOISE:-0.5}"
out="${MGM_BS_OUT:-$root/better_synth_out}"
threads="${MGM_DEMO_THREADS:-$(nproc 2>/dev/null || echo 2)}"
variants=" ${MGM_BS_VARIANTS:-noisy filtered clean} "
t0=$SECONDS

bash "$here/setup.sh"
bash "$here/build.sh" >/dev/null
bd="$MGM_BUILD_DIR"
[[ "$bd" == /* ]] || bd="$root/$bd"
mgm="$bd/eval/mgm"
train="$bd/trainer/train_mgm"
py="$MGM_VENV/bin/python"
mkdir -p "$out"

# train_and_eval DATA PRETRAIN_JSON RUN_DIR: the demo's recipe (scripts/demo.sh), then both
# benchmarks, scores into RUN_DIR/scores.json.
train_and_eval() {
  local data="$1" pre="$2" run="$3"
  local common=(--model_config "$root/configs/models/demo.json" --tokenizer "$data/tokenizer/tokenizer.model"
                --version gemma --image_folder "$data/images" --seed 42 --num_threads "$threads"
                --dataloader_num_workers 1 --logging_steps 50 --save_steps 1000 --save_total_limit 1
                --progress none)
  rm -rf "$run" && mkdir -p "$run"
  "$train" --stage pretrain "${common[@]}" --data_path "$pre" --output_dir "$run/pretrain" \
    --num_train_epochs 1 --per_device_train_batch_size 16 --learning_rate 1e-3 --weight_decay 0 \
    --warmup_ratio 0.03 --lr_scheduler_type cosine > "$run/pretrain.log" 2>&1
  "$train" --stage finetune "${common[@]}" --data_path "$data/finetune.json" --output_dir "$run/finetune" \
    --pretrain_mm_mlp_adapter "$run/pretrain/mm_projector.bin" --image_aspect_ratio pad \
    --group_by_modality_length true --num_train_epochs 4 --per_device_train_batch_size 8 \
    --learning_rate 1e-3 --weight_decay 0 --warmup_ratio 0.03 --lr_scheduler_type cosine > "$run/finetune.log" 2>&1
  local m="$run/finetune"
  "$mgm" eval textvqa --model-path "$m" --question-file "$data/eval/textvqa_questions.jsonl" \
    --image-folder "$data/images" --answers-file "$m/textvqa_answers.jsonl" --conv-mode gemma \
    --max_new_tokens 8 --batch_size 16 > /dev/null 2>&1
  "$mgm" eval mmbench --model-path "$m" --question-file "$data/eval/mmbench.tsv" \
    --answers-file "$m/mmbench_answers.jsonl" --conv-mode gemma --max_new_tokens 4 --batch_size 16 > /dev/null 2>&1
  local tv mb
  tv="$("$mgm" score textvqa --annotation-file "$data/eval/textvqa_annotations.json" \
        --result-file "$m/textvqa_answers.jsonl" | sed -n 's/^Accuracy: \([0-9.]*\)%.*/\1/p')"
  mb="$("$mgm" score mmbench --question-file "$data/eval/mmbench.tsv" --result-file "$m/mmbench_answers.jsonl" \
        --out-dir "$m/mmbench_report" | sed -n 's/^Overall *\([0-9.]*\)%.*/\1/p' | head -1)"
  echo "{\"textvqa\": ${tv:-null}, \"mmbench_circular\": ${mb:-null}}" > "$run/scores.json"
}

for seed in $seeds; do
  s="$out/seed$seed"
  data="$s/data"
  if [[ "${MGM_BS_REUSE:-0}" != 1 || ! -f "$data/synth.json" ]]; then
    echo "== seed $seed: mgm data synth --caption-noise $noise ($size training images)"
    rm -rf "$s" && mkdir -p "$s"
    "$mgm" data synth --out "$data" --seed "$seed" --size "$size" --eval_size 150 --vocab_size 1024 \
      --caption-noise "$noise" > /dev/null 2>&1
  fi
  # The true captions, as the clean variant's pretraining set.
  "$py" - "$data" <<'PY'
import json, sys
d = sys.argv[1]
truth = {}
for l in open(d + "/pretrain_truth.jsonl"):
    t = json.loads(l)
    truth[t["id"]] = t
recs = json.load(open(d + "/pretrain.json"))
for r in recs:
    if r["id"] in truth:
        for turn in r["conversations"]:
            if turn["from"] == "gpt":
                turn["value"] = truth[r["id"]]["true_caption"]
json.dump(recs, open(d + "/pretrain_clean.json", "w"))
PY
  if [[ "$variants" == *" noisy "* ]]; then
    echo "   seed $seed noisy: pretrain -> finetune -> eval"
    train_and_eval "$data" "$data/pretrain.json" "$s/noisy"
  fi
  if [[ "$variants" == *" filtered "* ]]; then
    echo "   seed $seed filtered: caption model, mgm data score, mgm data filter, then the same"
    "$train" --stage finetune --model_config "$root/configs/models/demo.json" \
      --tokenizer "$data/tokenizer/tokenizer.model" --version gemma --image_folder "$data/images" \
      --seed 42 --num_threads "$threads" --dataloader_num_workers 1 --logging_steps 50 --save_steps 1000 \
      --save_total_limit 1 --progress none --data_path "$data/pretrain.json" --output_dir "$s/caption_model" \
      --overwrite_output_dir --pretrain_mm_mlp_adapter "$s/noisy/pretrain/mm_projector.bin" \
      --image_aspect_ratio pad --num_train_epochs 2 --per_device_train_batch_size 8 --learning_rate 1e-3 \
      --weight_decay 0 --warmup_ratio 0.03 --lr_scheduler_type cosine > "$s/caption_model.log" 2>&1
    "$mgm" data score --model-path "$s/caption_model" --data_path "$data/pretrain.json" \
      --image_folder "$data/images" --out "$s/scores.jsonl" --prompt "Describe the image briefly." \
      --overwrite > /dev/null 2>&1
    "$mgm" data filter --data_path "$data/pretrain.json" --scores "$s/scores.jsonl" \
      --out "$data/pretrain_filtered.json" --keep-top-fraction 0.5 --rank-by mgm_loglik --overwrite > "$s/filter.log"
    train_and_eval "$data" "$data/pretrain_filtered.json" "$s/filtered"
  fi
  if [[ "$variants" == *" clean "* ]]; then
    echo "   seed $seed clean: the true captions, the same"
    train_and_eval "$data" "$data/pretrain_clean.json" "$s/clean"
  fi
done

"$py" - "$out" $seeds <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = {"noisy": [], "filtered": [], "clean": []}
for seed in seeds:
    s = f"{out}/seed{seed}"
    truth = {json.loads(l)["id"]: json.loads(l)["noise"] for l in open(f"{s}/data/pretrain_truth.jsonl")}
    for variant, data in (("noisy", "pretrain.json"), ("filtered", "pretrain_filtered.json"), ("clean", "pretrain_clean.json")):
        recs = json.load(open(f"{s}/data/{data}"))
        ids = [r["id"] for r in recs if r["id"] in truth]
        correct = sum(1 for i in ids if truth[i] == "clean" or variant == "clean")
        sc = json.load(open(f"{s}/{variant}/scores.json"))
        row = {"seed": seed, "kept": len(recs), "caption_accuracy": correct / max(1, len(ids)),
               "textvqa": sc["textvqa"], "mmbench_circular": sc["mmbench_circular"]}
        if variant == "filtered":
            kept = set(ids)
            noisy = {i for i, n in truth.items() if n != "clean"}
            dropped = set(truth) - kept
            row["precision"] = len(dropped & noisy) / max(1, len(dropped))
            row["recall"] = len(dropped & noisy) / max(1, len(noisy))
        rows[variant].append(row)
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
def m(v, k):
    xs = [r[k] for r in v if r.get(k) is not None]
    return (statistics.mean(xs), (max(xs) - min(xs)) / 2) if xs else (float("nan"), 0)
print(f"\n| data variant | samples kept | caption accuracy | filter precision / recall | TextVQA | MMBench circular |")
print("|---|---|---|---|---|---|")
for variant, v in rows.items():
    kept, acc, tv, mb = m(v, "kept"), m(v, "caption_accuracy"), m(v, "textvqa"), m(v, "mmbench_circular")
    pr = f"{100 * m(v, 'precision')[0]:.0f}% / {100 * m(v, 'recall')[0]:.0f}%" if variant == "filtered" else ""
    print(f"| {variant} | {kept[0]:.0f} | {100 * acc[0]:.1f}% | {pr} | {tv[0]:.1f} ± {tv[1]:.1f} | {mb[0]:.1f} ± {mb[1]:.1f} |")
print(f"(mean over seeds {', '.join(seeds)}; ± is half the range)")
for variant, v in rows.items():
    print(variant, " ".join(f"seed {r['seed']}: {r['textvqa']}/{r['mmbench_circular']}" for r in v))
PY
echo "== done in $((SECONDS - t0)) s; outputs in $out"
