"""Reference training orders (spec §10) written independently in Python with torch's own
randperm, for the C++ samplers to match exactly.

Usage:
  sampler_reference.py orders OUT.json
      random orders (torch.randperm with torch.Generator().manual_seed(seed)), modality-length
      grouped orders (LLaVA group_by_modality_length, every randperm drawn from one generator
      seeded with the case seed, in the reference's call order), accelerate-style sharding
      (BatchSamplerShard, split_batches=False) and Python str.split() word counts.
  sampler_reference.py interpolate IN.f32 OUT.f32 B C H SIZE
      F.interpolate(x, size=[SIZE,SIZE], mode='bilinear', align_corners=False) of the raw
      little-endian fp32 [B,C,H,H] tensor in IN.f32, written raw to OUT.f32 (collator reference;
      applied per sample as the dataset does).
"""
import json
import random
import sys

import torch
import torch.nn.functional as F


def even_chunks(idx, lengths, k):
    if len(idx) % k != 0:
        return [idx[c::k] for c in range(k)]
    per = len(idx) // k
    chunks = [[] for _ in range(k)]
    sums = [0.0] * k
    for i in idx:
        best = sums.index(min(sums))
        chunks[best].append(i)
        sums[best] += lengths[i]
        if len(chunks[best]) == per:
            sums[best] = float("inf")
    return chunks


def grouped(lengths, bs, ws, gen):
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    mb = bs * ws
    out = []
    for s in range(0, len(lengths), mb):
        m = sorted(perm[s:s + mb], key=lambda i: lengths[i], reverse=True)
        for chunk in even_chunks(m, lengths, ws):
            out.extend(chunk)
    return out


def modality_grouped(lengths, bs, ws, gen):
    assert all(x != 0 for x in lengths)
    if all(x > 0 for x in lengths) or all(x < 0 for x in lengths):
        return grouped(lengths, bs, ws, gen)
    mm = [i for i, x in enumerate(lengths) if x > 0]
    lang = [i for i, x in enumerate(lengths) if x < 0]
    mm_order = [mm[j] for j in grouped([lengths[i] for i in mm], bs, ws, gen)]
    lang_order = [lang[j] for j in grouped([-lengths[i] for i in lang], bs, ws, gen)]
    mb = bs * ws
    mm_mb = [mm_order[s:s + mb] for s in range(0, len(mm_order), mb)]
    lang_mb = [lang_order[s:s + mb] for s in range(0, len(lang_order), mb)]
    extra = mm_mb[-1] + lang_mb[-1]
    rest = mm_mb[:-1] + lang_mb[:-1]
    shuffled = [rest[i] for i in torch.randperm(len(rest), generator=gen).tolist()]
    if extra:
        shuffled.append(sorted(extra))
    return [i for m in shuffled for i in m]


def shard(order, bs, nproc, rank, drop_last, even_batches):
    batches = [order[s:s + bs] for s in range(0, len(order), bs)]
    if drop_last and batches and len(batches[-1]) < bs:
        batches.pop()
    out, initial, pending, batch, idx = [], [], [], [], -1
    for idx, batch in enumerate(batches):
        if not drop_last and idx < nproc:
            initial += batch
        if idx % nproc == rank:
            pending = batch
        if idx % nproc == nproc - 1 and len(batch) == bs:
            out.append(pending)
            pending = []
    if drop_last or not initial:
        return out
    if not even_batches:
        if pending:
            out.append(pending)
        return out
    if len(pending) == bs:
        out.append(pending)
    while len(initial) < nproc * bs:
        initial += initial
    if len(batch) == bs:
        batch = []
        idx += 1
    pos = 0
    while idx % nproc != 0 or len(batch) > 0:
        end = pos + bs - len(batch)
        batch = batch + initial[pos:end]
        if idx % nproc == rank:
            out.append(batch)
        pos = end
        batch = []
        idx += 1
    return out


def orders(path):
    rnd = random.Random(1234)
    res = {"random": [], "grouped": [], "shard": [], "words": []}
    for n, seed in [(1, 0), (10, 0), (1000, 42), (30000, 7), (100000, 43)]:
        g = torch.Generator().manual_seed(seed)
        res["random"].append({"n": n, "seed": seed, "order": torch.randperm(n, generator=g).tolist()})

    def lengths(n, p_img, lo, hi):
        return [(1 if rnd.random() < p_img else -1) * rnd.randint(lo, hi) for _ in range(n)]

    cases = [
        ("all_image", lengths(300, 1.0, 1, 200), 8, 4),
        ("all_text", lengths(77, 0.0, 1, 30), 2, 3),
        ("mixed_ties", lengths(1000, 0.7, 1, 20), 8, 16),
        ("mixed_small", lengths(50, 0.7, 1, 100), 4, 2),
        ("mixed_ws3", lengths(101, 0.5, 1, 60), 5, 3),
        ("mixed_exact", [rnd.randint(1, 90) for _ in range(256)] +
         [-rnd.randint(1, 90) for _ in range(256)], 8, 4),
        ("one_text", [5] * 40 + [-3], 4, 2),
    ]
    for name, ls, bs, ws in cases:
        for seed in (0, 42, 1025):
            g = torch.Generator().manual_seed(seed)
            res["grouped"].append({"name": name, "lengths": ls, "bs": bs, "ws": ws, "seed": seed,
                                   "order": modality_grouped(ls, bs, ws, g)})

    for n in (0, 1, 5, 23, 64, 100):
        order = list(range(n))
        rnd.shuffle(order)
        for bs in (1, 4, 8):
            for nproc in (1, 3, 8):
                for drop_last in (False, True):
                    for even in (True, False):
                        res["shard"].append({
                            "order": order, "bs": bs, "nproc": nproc, "drop_last": drop_last,
                            "even": even,
                            "ranks": [shard(order, bs, nproc, r, drop_last, even)
                                      for r in range(nproc)]})

    for s in ["", "  ", "a", "<image>\nWhat is this?", "  two  words ", "x\u00a0y\u3000z",
              "tab\tsep\x1cfs", "caf\u00e9 na\u00efve", "a\u2003b\u200bc", "\u0085lead"]:
        res["words"].append({"s": s, "n": len(s.split())})
    with open(path, "w") as f:
        json.dump(res, f)


def interpolate(src, dst, b, c, h, size):
    x = torch.frombuffer(bytearray(open(src, "rb").read()), dtype=torch.float32).reshape(b, c, h, h)
    y = torch.stack([F.interpolate(x[i][None], size=[size, size], mode="bilinear",
                                   align_corners=False)[0] for i in range(b)])
    open(dst, "wb").write(y.contiguous().numpy().tobytes())


if __name__ == "__main__":
    if sys.argv[1] == "orders":
        orders(sys.argv[2])
    else:
        interpolate(sys.argv[2], sys.argv[3], *[int(v) for v in sys.argv[4:8]])
