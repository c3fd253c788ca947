"""Reference outputs of transformers' GemmaForCausalLM for the C++ Gemma parity tests.

Usage: gemma_reference.py OUT_DIR

For each case (exact GELU with tied embeddings; tanh GELU with an untied lm_head) it builds a
small random Gemma (head_dim != hidden / heads, grouped KV heads), saves it with save_pretrained
(one safetensors file, and a sharded copy), and records in OUT_DIR/<case>/reference.safetensors:
inputs (right-padded ids, labels with -100, inputs_embeds with "image rows" that are not
embedding rows), logits, final hidden states, loss, gradients of a few parameters and of the
inputs, a left-padded batch with explicit position ids, and a bf16 RMSNorm probe.

MGM-2B ran under transformers 4.38.0, whose GemmaModel multiplies every inputs_embeds row by
sqrt(hidden_size). transformers 5.x moved that scale into the embedding module, so image rows
passed as inputs_embeds would stay unscaled there; the installed behaviour is detected and the
scale applied here when the model does not apply it, so the reference always has MGM semantics.
"""

import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import GemmaConfig, GemmaForCausalLM

CASES = {
    "gelu_tied": dict(hidden_act="gelu", tie_word_embeddings=True),
    "tanh_untied": dict(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=False),
}
GRAD_PARAMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.1.self_attn.v_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.2.mlp.gate_proj.weight",
    "model.layers.2.input_layernorm.weight",
    "model.layers.2.post_attention_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
]


def build(case, seed):
    kw = dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.05, pad_token_id=0,
        bos_token_id=2, eos_token_id=1,
    )
    kw.update(CASES[case])
    config = GemmaConfig(**kw)
    # MGM's recorded semantics: the SDPA path (4.38's default with torch >= 2.1.1).
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = GemmaForCausalLM(config).float().eval()
    with torch.no_grad():
        # Non-zero RMSNorm offsets so the (1 + w) convention is exercised.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.2)
    return config, model


def model_scales_inputs_embeds(model):
    """True when the model multiplies inputs_embeds by sqrt(hidden) (4.38 semantics)."""
    ids = torch.tensor([[5, 6, 7]])
    emb = model.model.embed_tokens(ids)
    raw = model.model.embed_tokens.weight[ids]
    return bool(torch.equal(emb, raw))


def make_inputs(config, model, gen):
    B, L, H = 3, 12, config.hidden_size
    lengths = [12, 9, 6]
    ids = torch.randint(3, config.vocab_size, (B, L), generator=gen)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = config.pad_token_id
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, :2] = -100  # a "prompt"
    with torch.no_grad():
        embeds = model.model.embed_tokens.weight[ids].clone()
        # Image rows: projector outputs, not embedding rows; unsupervised as in MGM.
        for b, (s, e) in enumerate([(2, 6), (1, 4)]):
            embeds[b, s:e] = torch.randn(e - s, H, generator=gen) * 0.05
            labels[b, s:e] = -100
        embeds[mask == 0] = 0.0  # MGM re-pads with zero embeddings
    return ids, mask, labels, embeds


def run_case(out_dir, case, seed):
    config, model = build(case, seed)
    d = os.path.join(out_dir, case)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
    model.save_pretrained(os.path.join(d, "model_sharded"), safe_serialization=True,
                          max_shard_size="40KB")

    scales = model_scales_inputs_embeds(model)
    normalizer = config.hidden_size ** 0.5
    gen = torch.Generator().manual_seed(seed + 1)
    ids, mask, labels, embeds = make_inputs(config, model, gen)

    leaf = embeds.clone().requires_grad_(True)
    fed = leaf if scales else leaf * normalizer
    out = model(inputs_embeds=fed, attention_mask=mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    params = dict(model.named_parameters())
    res = {
        "input_ids": ids, "attention_mask": mask, "labels": labels, "inputs_embeds": embeds,
        "logits": out.logits.detach(), "hidden": out.hidden_states[-1].detach(),
        "loss": out.loss.detach().reshape(1), "grad.inputs_embeds": leaf.grad,
    }
    for name in GRAD_PARAMS:
        # Untied, the embedding takes no part when inputs_embeds are given: no gradient.
        if name in params and params[name].grad is not None:
            res["grad." + name] = params[name].grad.clone()

    # Left padding with explicit positions (the generation layout): exercises the masked path,
    # including query rows with no real key.
    model.zero_grad()
    with torch.no_grad():
        lmask = torch.flip(mask, dims=[1])
        lembeds = torch.flip(embeds, dims=[1])
        pos = (lmask.cumsum(-1) - 1).clamp(min=0)
        fed = lembeds if scales else lembeds * normalizer
        lout = model(inputs_embeds=fed, attention_mask=lmask, position_ids=pos)
    res.update({"left.attention_mask": lmask, "left.inputs_embeds": lembeds,
                "left.position_ids": pos, "left.logits": lout.logits})

    # bf16 RMSNorm as 4.38 computes it: normalise in fp32, cast, multiply by (1 + w) in bf16.
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(4, config.hidden_size, generator=gen).to(torch.bfloat16) * 3
    w = norm.weight.detach().to(torch.bfloat16)
    with torch.no_grad():
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)).type_as(x)
        y = y * (1 + w)
    res.update({"rms_bf16.x": x, "rms_bf16.w": w, "rms_bf16.y": y})

    # bf16 full-model logits (loose comparison: the kernels differ from C++'s).
    bmodel = GemmaForCausalLM(config)
    bmodel.load_state_dict(model.state_dict())
    bmodel = bmodel.to(torch.bfloat16).eval()
    with torch.no_grad():
        bemb = embeds.to(torch.bfloat16)
        fed = bemb if scales else bemb * normalizer
        res["bf16.logits"] = bmodel(inputs_embeds=fed, attention_mask=mask).logits.float()

    res = {k: v.contiguous() for k, v in res.items()}
    save_file(res, os.path.join(d, "reference.safetensors"),
              metadata={"transformers": transformers.__version__,
                        "model_scales_inputs_embeds": str(scales)})
    return {"case": case, "scales_inputs_embeds": scales, "loss": float(out.loss)}


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    infos = [run_case(out_dir, case, seed) for seed, case in enumerate(sorted(CASES), start=11)]
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                      "cases": infos}))


if __name__ == "__main__":
    main()
