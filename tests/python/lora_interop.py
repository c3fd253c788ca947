"""PEFT interop for the C++ LoRA (tests/models/lora_test.cc), on a small transformers Gemma.

Usage:
  lora_interop.py make OUT_DIR
      Builds a small random GemmaForCausalLM (saved to OUT_DIR/gemma), wraps it with peft
      (rsLoRA, a rank_pattern and an alpha_pattern, non-zero B via init_lora_weights=False),
      saves the adapter to OUT_DIR/adapter with PeftModel.save_pretrained, and records
      input_ids, the adapter model's logits and the merge_and_unload() logits in
      OUT_DIR/reference.safetensors.
  lora_interop.py check GEMMA_DIR ADAPTER_DIR RESULT_FILE
      Loads the Gemma folder and an adapter folder written by the C++ side with
      PeftModel.from_pretrained and compares its logits (adapter attached, then merged) with
      RESULT_FILE's "logits" for its "input_ids" (fp32, within 1e-5). Prints the differences;
      exits 1 when they are too large.
"""

import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GemmaConfig, GemmaForCausalLM

TOL = 1e-5


def small_gemma(seed):
    cfg = GemmaConfig(
        vocab_size=200, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-6, initializer_range=0.05, pad_token_id=0, bos_token_id=2,
        eos_token_id=1, hidden_act="gelu",
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = GemmaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(0.0, 0.1)  # exercise the (1 + w) convention
    return model


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def compare(name, got, want):
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    print(f"{name}: max abs diff {diff:.3g} (logits up to {scale:.3g})")
    return diff <= TOL * max(1.0, scale)


def make(out):
    model = small_gemma(seed=11)
    model.save_pretrained(os.path.join(out, "gemma"), safe_serialization=True)
    config = LoraConfig(
        r=6, lora_alpha=12, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"],
        use_rslora=True, rank_pattern={"down_proj": 3}, alpha_pattern={"v_proj": 5},
        init_lora_weights=False, task_type="CAUSAL_LM",
    )
    torch.manual_seed(12)
    peft_model = get_peft_model(model, config).eval()
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(13))
    with_adapter = logits_of(peft_model, ids)
    peft_model.save_pretrained(os.path.join(out, "adapter"))
    merged = logits_of(peft_model.merge_and_unload(), ids)
    save_file({"input_ids": ids, "logits": with_adapter.contiguous(), "merged_logits": merged.contiguous()},
              os.path.join(out, "reference.safetensors"))
    print("made", sorted(load_file(os.path.join(out, "adapter", "adapter_model.safetensors")))[:2])


def check(gemma_dir, adapter_dir, result_file):
    ref = load_file(result_file)
    ids = ref["input_ids"]
    base = GemmaForCausalLM.from_pretrained(gemma_dir, torch_dtype=torch.float32)
    base.config._attn_implementation = "sdpa"
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    print("adapter:", cfg["r"], cfg["lora_alpha"], cfg["use_rslora"], sorted(cfg["target_modules"]))
    ok = compare("peft with adapter vs C++", logits_of(peft_model, ids), ref["logits"])
    merged = peft_model.merge_and_unload()
    ok &= compare("peft merge_and_unload vs C++", logits_of(merged, ids), ref["logits"])
    if "merged_logits" in ref:
        ok &= compare("peft merged vs C++ merged", logits_of(merged, ids), ref["merged_logits"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
