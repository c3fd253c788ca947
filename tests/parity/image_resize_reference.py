"""Reference for the resize paths of data/image.cc on many small random images: PIL's
Image.resize(BICUBIC) (plain and after expand2square) and the CLIPImageProcessor pipeline
(expand2square or not, shortest-edge resize, centre crop) before rescaling. Covers upscaling and
downscaling, 1-pixel sides, extreme aspect ratios and odd padding offsets.

Usage: image_resize_reference.py OUT_DIR
Writes OUT_DIR/img_K.png, OUT_DIR/reference.safetensors (uint8 HWC arrays) and OUT_DIR/cases.json:
  {"kind": "resize"|"padded"|"pipeline", "k", "file", "w", "h", "mode", "size", "key"}.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from clip_image_reference import BG, clip_processor, expand2square, resize_and_crop

SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 200), (200, 5), (37, 91), (120, 45), (97, 131),
         (333, 80), (64, 64), (255, 256)]


def main(d):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    out, cases = {}, []
    for k, (w, h) in enumerate(SIZES):
        # Noise over a gradient: every tap's weight matters, and values reach 0 and 255.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x ^ y) % 256], -1)
        arr = np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(d, f"img_{k}.png")
        Image.fromarray(arr).save(path)
        img = Image.open(path).convert("RGB")
        for (ow, oh) in [(3, 5), (w * 2 + 1, max(h // 3, 1)), (17, 17), (max(w // 2, 1), h + 9)]:
            key = f"resize_{k}_{ow}_{oh}"
            out[key] = torch.from_numpy(np.array(img.resize((ow, oh), Image.BICUBIC)))
            cases.append({"kind": "resize", "k": k, "file": path, "w": ow, "h": oh, "key": key})
            key = f"padded_{k}_{ow}_{oh}"
            out[key] = torch.from_numpy(np.array(expand2square(img, BG).resize((ow, oh), Image.BICUBIC)))
            cases.append({"kind": "padded", "k": k, "file": path, "w": ow, "h": oh, "key": key})
        for mode in ("square", "pad"):
            src = expand2square(img, BG) if mode == "pad" else img
            if src.size[1] in (1, 3):
                # transformers reads an H x W x 3 array with H of 1 or 3 as channels-first and
                # garbles it (so the output sizes avoid 1 and 3 too); the C++ pipeline does not
                # reproduce that.
                continue
            for s in (2, 5, 37, 96, 160):
                key = f"pipeline_{k}_{mode}_{s}"
                out[key] = torch.from_numpy(resize_and_crop(clip_processor(s), src, s))
                cases.append({"kind": "pipeline", "k": k, "file": path, "mode": mode, "size": s,
                              "key": key})
    save_file(out, os.path.join(d, "reference.safetensors"))
    json.dump(cases, open(os.path.join(d, "cases.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1])
