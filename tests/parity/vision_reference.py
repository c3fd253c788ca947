"""Builds small random reference vision towers and records their outputs for the C++ parity tests.

Usage: vision_reference.py OUT_DIR

Writes, under OUT_DIR:
  clip/            transformers CLIPVisionModel.save_pretrained (config.json + model.safetensors)
  clip_bin/        the same weights as pytorch_model.bin
  clip_full/       a CLIPModel (text tower too) sharing the vision weights
  clip_gelu/       a CLIPVisionModel with hidden_act "gelu"
  convnext/        open_clip-style folder: open_clip_config.json + open_clip_pytorch_model.bin
                   (timm ConvNeXt state dict under "visual.trunk.", plus head/text keys to ignore)
  mgm_towers.safetensors  both towers under the MGM checkpoint names
  reference.safetensors   inputs and reference outputs (fp32)
  meta.json        the small configurations
"""
import collections
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def randomize(module, scale=0.2, gen=None):
    # Default inits leave biases at 0, LayerNorms at 1 and ConvNeXt gammas at 1e-6, which would
    # hide mistakes in those terms: perturb everything.
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            if name.endswith("gamma") or ("norm" in name and name.endswith("weight")) or \
               ("layer_norm" in name and name.endswith("weight")) or "layrnorm.weight" in name:
                p.copy_(1.0 + noise)
            elif name.endswith("bias"):
                p.copy_(noise)
            else:
                p.add_(noise * p.std().clamp(min=1e-3) if p.numel() > 1 else noise)


def clip_part(out, ref, gen):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vcfg = dict(hidden_size=48, intermediate_size=112, num_hidden_layers=4, num_attention_heads=3,
                image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = CLIPVisionModel(CLIPVisionConfig(**vcfg)).eval()
    randomize(model, gen=gen)
    model.save_pretrained(os.path.join(out, "clip"), safe_serialization=True)
    model.save_pretrained(os.path.join(out, "clip_bin"), safe_serialization=False)

    full = CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=2,
                                                 vocab_size=99, max_position_embeddings=16),
                                vision_config=vcfg, projection_dim=16)).eval()
    full.vision_model.load_state_dict(model.vision_model.state_dict())
    full.save_pretrained(os.path.join(out, "clip_full"), safe_serialization=True)

    gelu = CLIPVisionModel(CLIPVisionConfig(**dict(vcfg, hidden_act="gelu"))).eval()
    randomize(gelu, gen=gen)
    gelu.save_pretrained(os.path.join(out, "clip_gelu"), safe_serialization=True)

    images = torch.randn(2, 3, 56, 56, generator=gen)
    with torch.no_grad():
        o = model(pixel_values=images, output_hidden_states=True)
        for i, h in enumerate(o.hidden_states):
            ref[f"clip.hidden_states.{i}"] = h.contiguous()
        sel = o.hidden_states[-2]  # MGM: mm_vision_select_layer = -2
        ref["clip.patch"] = sel[:, 1:].contiguous()
        ref["clip.cls_patch"] = sel.contiguous()
        g = gelu(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        ref["clip_gelu.patch"] = g[:, 1:].contiguous()
    ref["clip.images"] = images

    # Input gradient of a weighted sum of the selected patch features (weights are inputs too).
    x = images.clone().requires_grad_(True)
    w = torch.randn(ref["clip.patch"].shape, generator=gen)
    sel = model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
    (sel * w).sum().backward()
    ref["clip.grad_weights"] = w
    ref["clip.grad_images"] = x.grad.contiguous()

    sd = {"model.vision_tower.vision_tower." + k: v.contiguous()
          for k, v in model.state_dict().items() if "position_ids" not in k}
    return vcfg, sd


def convnext_feature(trunk, images):
    # As MGM's OpenCLIPVisionTower.backbone: stem, each stage's output, stages 1.. upsampled in
    # fp32 to stage 0's size (bilinear, align_corners=False), cast back, concatenated.
    x = trunk.stem(images)
    stages = []
    for st in trunk.stages:
        x = st(x)
        stages.append(x)
    target = stages[0].shape[-2:]
    parts = [stages[0]] + [F.interpolate(s.float(), size=target, mode="bilinear",
                                         align_corners=False).to(s.dtype) for s in stages[1:]]
    return stages, torch.cat(parts, dim=1).contiguous()


def convnext_part(out, ref, gen):
    from timm.models.convnext import ConvNeXt

    ccfg = dict(depths=[2, 1, 3, 1], dims=[8, 16, 24, 32], drop_path_rate=0.1)
    trunk = ConvNeXt(depths=ccfg["depths"], dims=ccfg["dims"], drop_path_rate=0.1).eval()
    randomize(trunk, gen=gen)
    d = os.path.join(out, "convnext")
    os.makedirs(d, exist_ok=True)
    sd = collections.OrderedDict()
    for k, v in trunk.state_dict().items():
        sd["visual.trunk." + k] = v.contiguous()
    # Keys an open_clip checkpoint also holds and MGM ignores.
    sd["visual.head.proj.weight"] = torch.randn(16, 32, generator=gen)
    sd["text.token_embedding.weight"] = torch.randn(10, 16, generator=gen)
    sd["logit_scale"] = torch.tensor(4.6)
    torch.save(sd, os.path.join(d, "open_clip_pytorch_model.bin"))
    with open(os.path.join(d, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": 16, "vision_cfg": {
            "timm_model_name": "convnext_large", "timm_model_pretrained": False,
            "timm_pool": "", "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.1,
            "image_size": 320}}, "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711]}}, f, indent=2)

    images = torch.randn(2, 3, 64, 64, generator=gen)
    rect = torch.randn(1, 3, 96, 64, generator=gen)
    with torch.no_grad():
        stages, feat = convnext_feature(trunk, images)
        for i, s in enumerate(stages):
            ref[f"convnext.stage.{i}"] = s.contiguous()
        ref["convnext.feature"] = feat
        ref["convnext.rect_feature"] = convnext_feature(trunk, rect)[1]
    ref["convnext.images"] = images
    ref["convnext.rect_images"] = rect

    # Stochastic depth as MGM runs it (train mode): with every rate at 0.5 the per-sample outcome
    # is random, so C++ checks invariants; here only the deterministic path is recorded.
    mgm = {}
    for k, v in trunk.state_dict().items():
        if k.startswith("stem."):
            mgm["model.vision_tower_aux.vision_" + k] = v.contiguous()
        elif k.startswith("stages."):
            mgm["model.vision_tower_aux.vision_" + k] = v.contiguous()
    return ccfg, mgm


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    ref = {}
    vcfg, clip_sd = clip_part(out, ref, gen)
    ccfg, conv_sd = convnext_part(out, ref, gen)
    save_file({**clip_sd, **conv_sd}, os.path.join(out, "mgm_towers.safetensors"))
    save_file({k: v.detach().clone().contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"clip": vcfg, "convnext": ccfg}, f, indent=2)
    print("ok")


if __name__ == "__main__":
    main()
