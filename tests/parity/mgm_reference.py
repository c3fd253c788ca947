"""Reference of the MGM-only parts (patch info mining, mm_projector, image splicing, labels, loss)
on top of transformers' GemmaForCausalLM and CLIPVisionModel and a timm ConvNeXt trunk, written
from reference/mgm-model.md (sections 1, 5, 6, 7, 14), for the C++ parity tests.

Usage:
  mgm_reference.py OUT_DIR            build the tiny random model and record reference outputs
  mgm_reference.py check_bin BIN REF  torch.load(weights_only=True) a C++-written mm_projector.bin
                                      and compare it with REF (the reference's own file)
  mgm_reference.py check_ckpt DIR REF compare a C++-written checkpoint folder with REF's tensors

OUT_DIR gets:
  ckpt/              MGM checkpoint folder: config.json (mgm_gemma, mm_* keys) + model.safetensors
                     with the section-14 keys
  gemma/ clip/ convnext/   the separate sources (HF Gemma, HF CLIPVisionModel, open_clip folder)
  mm_projector.bin   the stage-1 file (section 6.3 key set), torch.save
  inputs.safetensors input_ids (-200 markers), attention_mask, labels, images, images_aux
  reference.safetensors  logits, loss, spliced labels/mask, image features, grad.<param>
"""
import collections
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

IMAGE = -200
IGNORE = -100

GEMMA = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
             initializer_range=0.02, pad_token_id=0, bos_token_id=2, eos_token_id=1,
             hidden_act="gelu", tie_word_embeddings=True)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
            image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CONVNEXT = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])
IMAGE_SIZE_AUX = 128
MAX_LEN = 48


def randomize(module, gen, scale=0.2):
    # Default inits leave biases 0, norms 1 (Gemma offsets 0) and ConvNeXt gammas 1e-6, which
    # would hide mistakes in those terms: perturb everything around its initial level.
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            if name.endswith("bias"):
                p.copy_(noise)
            elif p.dim() == 1:
                p.copy_(p.mean() + noise)
            else:
                p.add_(noise * p.std().clamp(min=1e-3))


class MGMParts(nn.Module):
    """The MGM-only modules with the reference's attribute names."""

    def __init__(self, lr, hr, hidden):
        super().__init__()
        self.mm_projector = nn.Sequential(nn.Linear(lr, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.vlm_uni_query_projector = nn.Sequential(nn.LayerNorm(lr), nn.Linear(lr, lr))
        self.vlm_uni_aux_projector = nn.Sequential(nn.LayerNorm(hr), nn.Linear(hr, lr))
        self.vlm_uni_val_projector = nn.Sequential(nn.LayerNorm(hr), nn.Linear(hr, lr))

    def mine(self, images, images_aux):
        # Section 5: per-cell single-head attention, K scaled by 1/sqrt(C), residual add.
        B, N, C = images.shape
        g = int(math.sqrt(N))
        ps = images_aux.shape[-1] // g
        a = images_aux.permute(0, 2, 3, 1)
        a = a.reshape(B, g, ps, g, ps, a.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        a = a.reshape(B, N, ps * ps, a.shape[-1])
        q = self.vlm_uni_query_projector(images)
        k = self.vlm_uni_aux_projector(a)
        v = self.vlm_uni_val_projector(a)
        att = q[:, :, None] @ (k.transpose(-1, -2) / math.sqrt(k.shape[-1]))
        att = att.nan_to_num()
        m = (att.softmax(-1) @ v).mean(2)
        return images + m


def convnext_feature(trunk, images):
    x = trunk.stem(images)
    stages = []
    for st in trunk.stages:
        x = st(x)
        stages.append(x)
    target = stages[0].shape[-2:]
    parts = [stages[0]] + [F.interpolate(s.float(), size=target, mode="bilinear",
                                         align_corners=False).to(s.dtype) for s in stages[1:]]
    return torch.cat(parts, dim=1).contiguous()


def prepare(input_ids, labels, attention_mask, feats, embed_weight, hidden):
    # Section 7, with the collator's layout: every sample owns one image slot (text-only samples a
    # zero placeholder whose features are dropped); several -200 take consecutive slots.
    new_embeds, new_labels = [], []
    img = 0
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b]]
        lab = labels[b][attention_mask[b]]
        pos = [-1] + torch.where(ids == IMAGE)[0].tolist() + [ids.shape[0]]
        if len(pos) == 2:
            new_embeds.append(torch.cat([embed_weight[ids], feats[img][0:0]]))
            new_labels.append(lab)
            img += 1
            continue
        e, l = [], []
        for i in range(len(pos) - 1):
            e.append(embed_weight[ids[pos[i] + 1:pos[i + 1]]])
            l.append(lab[pos[i] + 1:pos[i + 1]])
            if i < len(pos) - 2:
                e.append(feats[img])
                l.append(torch.full((feats.shape[1],), IGNORE, dtype=lab.dtype))
                img += 1
        new_embeds.append(torch.cat(e))
        new_labels.append(torch.cat(l))
    new_embeds = [x[:MAX_LEN] for x in new_embeds]
    new_labels = [x[:MAX_LEN] for x in new_labels]
    L = max(x.shape[0] for x in new_embeds)
    B = len(new_embeds)
    emb = torch.zeros(B, L, hidden)
    lab = torch.full((B, L), IGNORE, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    out = []
    for b in range(B):
        n = new_embeds[b].shape[0]
        out.append(torch.cat([new_embeds[b], torch.zeros(L - n, hidden)]))
        lab[b, :n] = new_labels[b]
        mask[b, :n] = True
    emb = torch.stack(out)
    return emb, lab, mask


def build_inputs(gen):
    V = GEMMA["vocab_size"]

    def toks(n):
        return torch.randint(3, V, (n,), generator=gen).tolist()

    rows = [
        [2] + toks(2) + [IMAGE] + toks(5),                            # one image
        [2] + toks(6),                                                # text only
        [2, IMAGE] + toks(3) + [IMAGE] + toks(4),                     # two images
        [2] + toks(1) + [IMAGE] + toks(40),                           # truncated after splicing
    ]
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    labels = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = True
        for t, v in enumerate(r):
            # Supervise the second half of every row's text (bos and image markers never).
            if t >= len(r) // 2 and v != IMAGE:
                labels[b, t] = v
    slots = sum(max(1, r.count(IMAGE)) for r in rows)
    images = torch.randn(slots, 3, CLIP["image_size"], CLIP["image_size"], generator=gen)
    images_aux = torch.randn(slots, 3, IMAGE_SIZE_AUX, IMAGE_SIZE_AUX, generator=gen)
    images[1].zero_()  # the text-only sample's placeholder (its slot is index 1)
    images_aux[1].zero_()
    return ids, mask, labels, images, images_aux


def main(out):
    from timm.models.convnext import ConvNeXt
    from transformers import CLIPVisionConfig, CLIPVisionModel, GemmaConfig, GemmaForCausalLM

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)

    gcfg = GemmaConfig(**GEMMA)
    gcfg._attn_implementation = "sdpa"
    gemma = GemmaForCausalLM(gcfg).float().eval()
    randomize(gemma, gen, scale=0.05)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP)).eval()
    randomize(clip, gen)
    trunk = ConvNeXt(depths=CONVNEXT["depths"], dims=CONVNEXT["dims"], drop_path_rate=0.1).eval()
    randomize(trunk, gen)
    hr = sum(CONVNEXT["dims"])
    parts = MGMParts(CLIP["hidden_size"], hr, GEMMA["hidden_size"])
    randomize(parts, gen)

    # Separate sources.
    gemma.save_pretrained(os.path.join(out, "gemma"), safe_serialization=True)
    clip.save_pretrained(os.path.join(out, "clip"), safe_serialization=True)
    cdir = os.path.join(out, "convnext")
    os.makedirs(cdir, exist_ok=True)
    oc = collections.OrderedDict(("visual.trunk." + k, v.contiguous())
                                 for k, v in trunk.state_dict().items())
    oc["visual.head.proj.weight"] = torch.randn(16, 32, generator=gen)
    torch.save(oc, os.path.join(cdir, "open_clip_pytorch_model.bin"))
    with open(os.path.join(cdir, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": 16, "vision_cfg": {
            "timm_model_name": "convnext_large", "timm_drop_path": 0.1, "image_size": 320}},
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711]}}, f)

    # The full checkpoint, section 14 keys.
    sd = collections.OrderedDict()
    for k, v in gemma.state_dict().items():
        if k == "lm_head.weight" or "rotary_emb" in k:
            continue
        sd[k] = v
    for k, v in parts.state_dict().items():
        sd["model." + k] = v
    for k, v in clip.state_dict().items():
        if "position_ids" not in k:
            sd["model.vision_tower.vision_tower." + k] = v
    for k, v in trunk.state_dict().items():
        if k.startswith("stem.") or k.startswith("stages."):
            sd["model.vision_tower_aux.vision_" + k] = v
    ckpt = os.path.join(out, "ckpt")
    os.makedirs(ckpt, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(ckpt, "model.safetensors"),
              metadata={"format": "pt"})
    cfg = {k: v for k, v in gcfg.to_dict().items() if not k.startswith("_")}
    cfg.update(architectures=["MGMGemmaForCausalLM"], model_type="mgm_gemma",
               mm_vision_tower=os.path.abspath(os.path.join(out, "clip")),
               mm_vision_tower_aux=os.path.abspath(cdir), mm_hidden_size=CLIP["hidden_size"],
               mm_hidden_size_aux=hr, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", use_mm_proj=True, image_aspect_ratio="pad",
               image_grid=1, image_global=False, image_grid_pinpoints=None,
               image_size_aux=IMAGE_SIZE_AUX, optimize_vision_tower=False,
               optimize_vision_tower_aux=False, tokenizer_padding_side="right",
               tokenizer_model_max_length=MAX_LEN, tune_mm_mlp_adapter=False,
               freeze_mm_mlp_adapter=False, mm_use_im_start_end=False,
               mm_use_im_patch_token=False, mm_projector_lr=None,
               # This project's key: the open_clip folder names convnext_large, the tiny trunk
               # is smaller.
               mm_vision_aux_config=dict(depths=CONVNEXT["depths"], dims=CONVNEXT["dims"],
                                         drop_path_rate=0.1))
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    # Stage-1 file (section 6.3): name contains any of the reference's keywords.
    keys = ["mm_projector", "vision_resampler", "vlm_uni", "vision_tower", "vision_fpn",
            "vision_stages"]
    torch.save({k: v for k, v in sd.items() if any(x in k for x in keys)},
               os.path.join(out, "mm_projector.bin"))

    ids, mask, labels, images, images_aux = build_inputs(gen)
    save_file({"input_ids": ids, "attention_mask": mask.to(torch.long), "labels": labels,
               "images": images, "images_aux": images_aux},
              os.path.join(out, "inputs.safetensors"))

    # Forward as MGM: towers without grad, mining + projector, splicing, Gemma (4.38 scale).
    with torch.no_grad():
        lr = clip(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
        hrf = convnext_feature(trunk, images_aux)
    feats = parts.mm_projector(parts.mine(lr, hrf))
    W = gemma.model.embed_tokens.weight
    emb, new_labels, new_mask = prepare(ids, labels, mask, feats, W, GEMMA["hidden_size"])
    probe = torch.tensor([[5, 6]])
    scales_inside = not torch.equal(gemma.model.embed_tokens(probe), W[probe])
    if scales_inside:  # transformers >= 5: apply 4.38's scale to every row here
        emb = emb * (GEMMA["hidden_size"] ** 0.5)
    logits = gemma(inputs_embeds=emb, attention_mask=new_mask.long()).logits.float()
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), new_labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)
    loss.backward()

    ref = {"logits": logits.detach(), "loss": loss.detach().reshape(1), "labels": new_labels,
           "attention_mask": new_mask.to(torch.long), "image_features": feats.detach(),
           "mined": parts.mine(lr, hrf).detach(), "lr": lr, "hr": hrf}
    named = dict(("model." + k, p) for k, p in parts.named_parameters())
    for k, p in gemma.named_parameters():
        named[k] = p
    for k, p in named.items():
        if p.grad is not None:
            ref["grad." + k] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    print("ok")


def check_bin(path, ref_dir):
    got = torch.load(path, weights_only=True, map_location="cpu")
    want = torch.load(os.path.join(ref_dir, "mm_projector.bin"), weights_only=True)
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k].float(), want[k].float()), k
    print("ok", len(got))


def check_ckpt(d, ref_dir):
    from safetensors import safe_open
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) \
        else ["model.safetensors"]
    got = {}
    for f in files:
        got.update(load_file(os.path.join(d, f)))
    want = load_file(os.path.join(ref_dir, "ckpt", "model.safetensors"))
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    for k in want:
        assert torch.equal(got[k], want[k]), k
    cfg = json.load(open(os.path.join(d, "config.json")))
    from transformers import GemmaConfig
    GemmaConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    for k in ["mm_hidden_size", "mm_hidden_size_aux", "mm_projector_type", "image_size_aux",
              "mm_vision_select_layer", "tokenizer_model_max_length"]:
        assert k in cfg, k
    print("ok", len(got))


if __name__ == "__main__":
    if sys.argv[1] == "check_bin":
        check_bin(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check_ckpt":
        check_ckpt(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
