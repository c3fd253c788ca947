"""MGM's image preprocessing as the Python original runs it, shared by the image parity tests and
bench/data_throughput_ref.py: LLaVA/MGM's expand2square (pad to a square with the mean colour)
and transformers' CLIPImageProcessor (PIL path) with shortest edge and centre crop set to one size.
"""
import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor

# OpenAI CLIP's normalisation (the CLIP-ViT-L/14-336 processor config).
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
# The padding colour MGM gives expand2square: the mean in 0..255.
BG = tuple(int(x * 255) for x in MEAN)


def expand2square(img, bg=BG):
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), bg)
        out.paste(img, (0, (w - h) // 2))
        return out
    out = Image.new(img.mode, (h, h), bg)
    out.paste(img, ((h - w) // 2, 0))
    return out


def clip_processor(size):
    """CLIPImageProcessor resizing the shortest edge to `size` (bicubic) and cropping size x size."""
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              resample=3, image_mean=MEAN, image_std=STD, do_convert_rgb=True)


def resize_and_crop(proc, img, size):
    """The processor's resize + centre crop of an RGB image, before rescaling: uint8 HWC."""
    resized = proc.resize(np.array(img), size={"shortest_edge": size}, resample=3)
    return np.ascontiguousarray(proc.center_crop(resized, size={"height": size, "width": size}))
