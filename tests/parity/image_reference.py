"""Reference image preprocessing: PIL decode + convert('RGB'), expand2square, and transformers'
CLIPImageProcessor (the PIL path MGM used) with shortest edge / crop set like MGM does.

Usage: image_reference.py OUT_DIR
Writes OUT_DIR/img_K.{png,jpg} (varied sizes, aspect ratios and modes: RGB, L, RGBA, P, I;16,
LA, 1) and OUT_DIR/reference.safetensors holding, per image K and mode M in (square, pad) and size S:
  u8_K_M_S  uint8 [S, S, 3]   the image after aspect handling + resize + crop (before rescale)
  px_K_M_S  float32 [3, S, S] CLIPImageProcessor.preprocess pixel_values
plus OUT_DIR/cases.json listing (file, sizes).
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from clip_image_reference import clip_processor, expand2square, resize_and_crop


def make_images(d):
    rng = np.random.default_rng(0)
    files = []

    def smooth_rgb(w, h):
        # gradients + noise + a few flat blocks: realistic mix of smooth and sharp content
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
        noise = rng.normal(0, 25, (h, w, 3))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        for _ in range(4):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            img[y0:y0 + h // 5, x0:x0 + w // 5] = rng.integers(0, 256, 3)
        return img

    specs = [("RGB", 131, 97, "png"), ("RGB", 64, 200, "jpg"), ("L", 77, 77, "png"),
             ("RGBA", 120, 45, "png"), ("P", 50, 90, "png"), ("I;16", 40, 60, "png"),
             ("LA", 33, 51, "png"), ("1", 48, 30, "png"), ("RGB", 900, 700, "jpg"),
             ("RGB", 17, 300, "png")]
    for k, (mode, w, h, ext) in enumerate(specs):
        rgb = Image.fromarray(smooth_rgb(w, h))
        if mode == "RGB":
            img = rgb
        elif mode == "L":
            img = rgb.convert("L")
        elif mode == "RGBA":
            a = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
            img = rgb.copy()
            img.putalpha(a)
        elif mode == "P":
            img = rgb.convert("P", palette=Image.ADAPTIVE, colors=37)
        elif mode == "I;16":
            arr = (rng.integers(0, 600, (h, w))).astype(np.uint16)  # values above 255 are clamped
            img = Image.fromarray(arr)  # uint16 -> mode I;16
        elif mode == "LA":
            img = rgb.convert("LA")
        elif mode == "1":
            img = rgb.convert("1")
        path = os.path.join(d, f"img_{k}.{ext}")
        img.save(path, quality=90) if ext == "jpg" else img.save(path)
        files.append(path)
    return files


def main(d):
    os.makedirs(d, exist_ok=True)
    files = make_images(d)
    out, cases = {}, []
    for k, path in enumerate(files):
        sizes = [96, 768] if k in (0, 8) else [96]
        for mode in ("square", "pad"):
            for s in sizes:
                img = Image.open(path).convert("RGB")
                if mode == "pad":
                    img = expand2square(img)
                proc = clip_processor(s)
                out[f"u8_{k}_{mode}_{s}"] = torch.from_numpy(resize_and_crop(proc, img, s))
                px = proc.preprocess(img, return_tensors="np")["pixel_values"][0]
                out[f"px_{k}_{mode}_{s}"] = torch.from_numpy(px.astype(np.float32))
                cases.append({"k": k, "file": path, "mode": mode, "size": s})
    save_file(out, os.path.join(d, "reference.safetensors"))
    json.dump(cases, open(os.path.join(d, "cases.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1])
