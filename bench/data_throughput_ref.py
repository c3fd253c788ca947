"""The Python reference of bench/data_throughput: MGM's per-sample image pipeline
(mgm/train/train.py LazySupervisedDataset with image_aspect_ratio='pad' and image_size_aux 768):
PIL open + convert('RGB'), expand2square with the mean colour, transformers' CLIPImageProcessor
(PIL path) with shortest edge and crop 768, then F.interpolate(bilinear, align_corners=False) of
the normalised tensor to 336. One torch thread per process.

Usage: data_throughput_ref.py --list FILES.txt --passes P --out RESULT.json
                              [--size 768] [--lr-size 336] [--processes 2,4]
Writes {"checks": [[6 fingerprints] per image], "single": samples/s, "single_cpu_ms": CPU ms per
sample, "processes": {"N": {"samples_per_s", "cpu_ms"}}, "versions": "..."}; the fingerprints are sum|x|, sum x^2 and sum x*((i%7)-3) of the 768 and the
336 tensors (float64), as the C++ side computes them.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

# MGM's expand2square and CLIPImageProcessor setup, shared with the image parity tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "parity"))
from clip_image_reference import clip_processor, expand2square  # noqa: E402

PROC = None
SIZES = None


def init(size, lr_size):
    global PROC, SIZES
    torch.set_num_threads(1)
    # The CLIP-ViT-L/14-336 processor config with MGM's aux size written into it.
    PROC = clip_processor(size)
    SIZES = (size, lr_size)


def process(path):
    img = Image.open(path).convert("RGB")
    img = expand2square(img)
    aux = PROC.preprocess(img, return_tensors="pt")["pixel_values"][0]
    lr = F.interpolate(aux[None], size=(SIZES[1], SIZES[1]), mode="bilinear", align_corners=False)[0]
    return aux, lr


def work(path):
    c0 = time.process_time()
    process(path)
    return time.process_time() - c0


def fingerprint(x):
    v = x.reshape(-1).double()
    w = (torch.arange(v.numel(), dtype=torch.int64) % 7 - 3).double()
    return [v.abs().sum().item(), (v * v).sum().item(), (v * w).sum().item()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--lr-size", type=int, default=336)
    ap.add_argument("--processes", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    files = [l for l in open(a.list).read().splitlines() if l]
    init(a.size, a.lr_size)

    # Untimed pass (page cache, allocator) that also fingerprints every image.
    checks = []
    for f in files:
        aux, lr = process(f)
        checks.append(fingerprint(aux) + fingerprint(lr))

    tasks = files * a.passes
    t0, c0 = time.perf_counter(), time.process_time()
    for f in tasks:
        process(f)
    single = len(tasks) / (time.perf_counter() - t0)
    single_cpu = 1000 * (time.process_time() - c0) / len(tasks)

    procs = {}
    ctx = mp.get_context("fork")
    for n in [int(x) for x in a.processes.split(",") if x]:
        with ctx.Pool(n, initializer=init, initargs=(a.size, a.lr_size)) as pool:
            pool.map(work, files, chunksize=1)  # warm every worker
            t0 = time.perf_counter()
            cpu = pool.map(work, tasks, chunksize=1)
            procs[str(n)] = {"samples_per_s": len(tasks) / (time.perf_counter() - t0),
                             "cpu_ms": 1000 * sum(cpu) / len(tasks)}

    versions = (f"python {sys.version.split()[0]}, Pillow {PIL.__version__}, numpy {np.__version__}, "
                f"torch {torch.__version__}, transformers {transformers.__version__}")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"checks": checks, "single": single, "single_cpu_ms": single_cpu, "processes": procs,
                   "versions": versions}, fh)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
