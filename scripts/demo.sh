#!/usr/bin/env bash
# The README's run command. Until the trainer lands it demonstrates what exists end to end:
# sets up and builds if needed, has the Python reference (torch) save a small Gemma-shaped state
# dict with torch.save (an OrderedDict, as HF/LLaVA write pytorch_model.bin), converts it with
# `mgm weights convert` into a sharded safetensors folder and back to a .bin, and inspects each.
# Outputs go to $MGM_DEMO_OUT (default: demo_out/ in the repository).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"
out="${MGM_DEMO_OUT:-$root/demo_out}"

bash "$here/setup.sh"
bash "$here/build.sh" >/dev/null
mgm="$root/$MGM_BUILD_DIR/eval/mgm"
mkdir -p "$out"
rm -rf "$out/sharded" "$out/roundtrip.bin"

"$MGM_VENV/bin/python" - "$out" <<'PY'
import collections, sys, torch
torch.manual_seed(0)
h, inter, vocab, layers = 64, 128, 1000, 2
sd = collections.OrderedDict()
sd["model.embed_tokens.weight"] = torch.randn(vocab, h)
for i in range(layers):
    p = f"model.layers.{i}."
    for n, shape in [("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (16, h)),
                     ("self_attn.v_proj", (16, h)), ("self_attn.o_proj", (h, h)),
                     ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)),
                     ("mlp.down_proj", (h, inter))]:
        sd[p + n + ".weight"] = torch.randn(*shape)
    sd[p + "input_layernorm.weight"] = torch.zeros(h)
    sd[p + "post_attention_layernorm.weight"] = torch.zeros(h)
sd["model.norm.weight"] = torch.zeros(h)
torch.save(sd, sys.argv[1] + "/pytorch_model.bin")
print(f"python: wrote {sys.argv[1]}/pytorch_model.bin ({len(sd)} tensors)")
PY

echo "== mgm weights inspect pytorch_model.bin --summary"
"$mgm" weights inspect "$out/pytorch_model.bin" --summary
echo "== mgm weights convert pytorch_model.bin -> sharded bf16 safetensors (max 200KB per shard)"
"$mgm" weights convert "$out/pytorch_model.bin" "$out/sharded" --dtype bf16 --max_shard_size 200KB
"$mgm" weights inspect "$out/sharded" --filter layers.1.mlp
echo "== mgm weights convert sharded -> roundtrip.bin"
"$mgm" weights convert "$out/sharded" "$out/roundtrip.bin"
"$MGM_VENV/bin/python" -c "
import torch,sys
a=torch.load('$out/pytorch_model.bin'); b=torch.load('$out/roundtrip.bin', weights_only=True)
assert set(a)==set(b) and all(torch.equal(a[k].bfloat16(), b[k]) for k in a)
print('python: roundtrip.bin loads with torch.load(weights_only=True) and equals the bf16 original')"
echo "outputs: $out"
