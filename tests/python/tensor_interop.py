"""Python side of the tensor-file interop tests (run by tests/models/interop_test.cc).

write DIR: writes files with the Python reference writers (safetensors.torch.save_file, torch.save
           of a real nn.Module state_dict (an OrderedDict with _metadata), a sharded Hugging Face
           folder) plus, for every tensor, its contiguous raw bytes and a manifest, so the C++
           loader is checked against bytes that no C++ code produced.
check DIR: loads the files the C++ side wrote (cpp.safetensors, cpp.bin, cpp_sharded/) with
           safetensors and torch.load(weights_only=True) and compares them with expected values
           computed here from the same formula (see expected()).
"""
import collections
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def expected():
    """Tensors both sides build from the same formula; all values are exact in every dtype."""
    def vals(n):
        return torch.arange(n, dtype=torch.float64) * 0.25 - 3.0
    out = collections.OrderedDict()
    out["w.f32"] = vals(24).reshape(2, 3, 4).to(torch.float32)
    out["w.f16"] = vals(6).reshape(3, 2).to(torch.float16)
    out["w.bf16"] = vals(10).to(torch.bfloat16)
    out["w.f64"] = vals(5).to(torch.float64)
    out["i.i64"] = (torch.arange(7, dtype=torch.int64) - 3) * 1000000007
    out["i.i32"] = torch.arange(5, dtype=torch.int32) - 2
    out["i.i16"] = torch.arange(4, dtype=torch.int16) - 1
    out["i.i8"] = torch.arange(4, dtype=torch.int8) - 2
    out["i.u8"] = torch.arange(4, dtype=torch.uint8) + 250
    out["b.bool"] = torch.tensor([True, False, True])
    out["scalar"] = torch.tensor(1.5, dtype=torch.float32)
    out["empty"] = torch.zeros(0, 3, dtype=torch.float16)
    return out


def dump_raw(d, fname, tensors, manifest):
    raw = os.path.join(d, "raw")
    os.makedirs(raw, exist_ok=True)
    entry = {}
    for k, t in tensors.items():
        t = t.detach().contiguous()
        path = os.path.join(raw, f"{fname}__{k}.bin")
        with open(path, "wb") as f:
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        entry[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
    manifest[fname] = entry


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))


def write(d):
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    manifest = {}
    # safetensors, every dtype, with metadata
    st = expected()
    st["f8"] = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    st["f8b"] = torch.tensor([0.5, -2.0, 1024.0]).to(torch.float8_e5m2)
    save_file(st, os.path.join(d, "py.safetensors"), metadata={"format": "pt", "note": "from python"})
    dump_raw(d, "py.safetensors", st, manifest)

    # torch.save of a real state_dict (OrderedDict + _metadata), with bf16/fp16 parameters,
    # views sharing one storage (including non-contiguous slices), a 0-dim and an empty tensor.
    m = Tiny()
    sd = m.state_dict()
    base = torch.randn(6, 8)
    sd["shared.full"] = base
    sd["shared.rows"] = base[2:5]
    sd["shared.cols"] = base[:, 1:7:2]          # non-contiguous, offset 1
    sd["shared.t"] = base.t()                   # transposed view
    sd["half"] = torch.randn(3, 5).half()
    sd["bf"] = torch.randn(2, 2, 3).bfloat16()
    sd["bf_view"] = sd["bf"][1]
    sd["zero_dim"] = torch.tensor(-4.25)
    sd["empty"] = torch.zeros(0, 7)
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")
    torch.save(sd, os.path.join(d, "py_state_dict.bin"))
    dump_raw(d, "py_state_dict.bin", sd, manifest)
    # a nested checkpoint-style dict with non-tensor entries
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3, "name": "x"},
               os.path.join(d, "py_nested.bin"))
    dump_raw(d, "py_nested.bin", {"state_dict.a": torch.ones(2)}, manifest)

    # a sharded Hugging Face folder (as transformers writes it)
    shard_dir = os.path.join(d, "py_sharded")
    os.makedirs(shard_dir, exist_ok=True)
    shards = [collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()]
    for i in range(9):
        shards[i % 3][f"model.layers.{i}.weight"] = torch.randn(4, 4).bfloat16()
    weight_map, total = {}, 0
    all_t = {}
    for k, sh in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file(sh, os.path.join(shard_dir, fname), metadata={"format": "pt"})
        for n, t in sh.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
            all_t[n] = t
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    dump_raw(d, "py_sharded", all_t, manifest)

    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def same(name, got, want):
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape) or not torch.equal(got, want):
        raise SystemExit(f"MISMATCH {name}: got {got.dtype} {tuple(got.shape)} want {want.dtype} {tuple(want.shape)}")


def check(d):
    exp = expected()
    st = load_file(os.path.join(d, "cpp.safetensors"))
    assert set(st) == set(exp), sorted(set(st) ^ set(exp))
    for k in exp:
        same("cpp.safetensors:" + k, st[k], exp[k])
    from safetensors import safe_open
    with safe_open(os.path.join(d, "cpp.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "writer": "mgm"}, f.metadata()

    # cpp_zip64.bin has the ZIP64 layout that archives over 4 GiB need, forced on a small file.
    for fname in ("cpp.bin", "cpp_zip64.bin"):
        b = torch.load(os.path.join(d, fname), weights_only=True)
        assert type(b) is dict, type(b)
        assert list(b) == list(exp), list(b)
        for k in exp:
            same(fname + ":" + k, b[k], exp[k])

    sd = os.path.join(d, "cpp_sharded")
    with open(os.path.join(sd, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    loaded = {}
    for fname in sorted(set(idx["weight_map"].values())):
        part = load_file(os.path.join(sd, fname))
        for k, t in part.items():
            assert idx["weight_map"][k] == fname
            loaded[k] = t
    assert set(loaded) == set(exp), sorted(set(loaded) ^ set(exp))
    total = sum(t.numel() * t.element_size() for t in loaded.values())
    assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
    for k in exp:
        same("cpp_sharded:" + k, loaded[k], exp[k])
    print("python check OK:", len(exp), "tensors x 4 files,", len(set(idx["weight_map"].values())), "shards")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
