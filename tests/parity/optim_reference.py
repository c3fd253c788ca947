"""Optimizer-side references for the C++ trainer (tests/trainer/*_test.cc), computed with the real
transformers 4.38 / torch 2.11 code: HF learning-rate schedules, torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_.

Usage:
  optim_reference.py schedules OUT.json
      for a set of cases, the lr every optimizer step uses (transformers.get_scheduler's LambdaLR
      over an optimizer with the case's base lr: get_last_lr() before each scheduler.step()),
      warmup from TrainingArguments.get_warmup_steps (by ratio or by steps).
  optim_reference.py adamw IN.safetensors OUT.safetensors KERNEL
      IN holds "param.<k>" (initial values), "grad.<s>.<k>" (the grad of parameter k at step s),
      "lr" (float64 [S], the lr of each step), "decay" (int64 [K], 1 = weight-decay group) and
      "hyper" (float64 [4]: beta1, beta2, eps, weight_decay). Runs S steps of torch.optim.AdamW
      with HF's two param groups; KERNEL is default | fused | foreach. OUT holds the final
      "param.<k>" and the state "<k>.exp_avg", "<k>.exp_avg_sq", "<k>.step".
  optim_reference.py clip IN.safetensors OUT.safetensors
      IN holds "grad.<k>" and "max_norm" (float64 [1]); OUT holds "norm" (the returned total norm)
      and the clipped "grad.<k>" of torch.nn.utils.clip_grad_norm_ (default foreach choice).
Several commands can run in one process (importing torch costs seconds), separated by "--":
  optim_reference.py adamw I O1 default -- adamw I O2 fused -- clip I2 O3
"""
import json
import sys
import types

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments, get_scheduler


def schedule_cases():
    # (name, base_lr, total_steps, warmup_ratio, warmup_steps, extra kwargs)
    cases = []
    for name in ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup"]:
        cases.append((name, 1e-3, 781, 0.03, 0, {}))      # the stage-1 recipe shape, ratio
        cases.append((name, 2e-5, 97, 0.0, 10, {}))       # warmup by steps
        cases.append((name, 3e-4, 50, 0.0, 0, {}))        # no warmup
        cases.append((name, 7e-4, 13, 0.5, 0, {}))        # long warmup by ratio
    cases.append(("cosine", 1e-3, 200, 0.1, 0, {"num_cycles": 1.5}))
    cases.append(("cosine_with_restarts", 1e-3, 200, 0.1, 0, {"num_cycles": 3}))
    cases.append(("polynomial", 1e-3, 120, 0.05, 0, {"power": 2.0, "lr_end": 1e-5}))
    cases.append(("polynomial", 5e-4, 60, 0.0, 7, {"power": 0.5}))
    return cases


def schedules(out_path):
    out = []
    for name, base_lr, total, ratio, wsteps, extra in schedule_cases():
        args = types.SimpleNamespace(warmup_steps=wsteps, warmup_ratio=ratio)
        warmup = TrainingArguments.get_warmup_steps(args, total)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=base_lr)
        sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                              scheduler_specific_kwargs=extra or None)
        lrs = []
        for _ in range(total + 3):  # past the end too
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        out.append({"name": name, "base_lr": base_lr, "total": total, "warmup_ratio": ratio,
                    "warmup_steps_arg": wsteps, "warmup": warmup, "extra": extra, "lrs": lrs})
    with open(out_path, "w") as f:
        json.dump(out, f)


def adamw(in_path, out_path, kernel):
    t = load_file(in_path)
    decay = t["decay"].tolist()
    lrs = t["lr"].tolist()
    beta1, beta2, eps, wd = t["hyper"].tolist()
    params = [torch.nn.Parameter(t[f"param.{k}"].clone()) for k in range(len(decay))]
    groups = [{"params": [p for p, d in zip(params, decay) if d], "weight_decay": wd},
              {"params": [p for p, d in zip(params, decay) if not d], "weight_decay": 0.0}]
    kw = {"default": {}, "fused": {"fused": True}, "foreach": {"foreach": True}}[kernel]
    opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(beta1, beta2), eps=eps, **kw)
    for s, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for k, p in enumerate(params):
            key = f"grad.{s}.{k}"
            p.grad = t[key].clone() if key in t else None
        opt.step()
    out = {}
    for k, p in enumerate(params):
        out[f"param.{k}"] = p.detach().clone()
        st = opt.state.get(p)
        if st:
            out[f"{k}.exp_avg"] = st["exp_avg"]
            out[f"{k}.exp_avg_sq"] = st["exp_avg_sq"]
            out[f"{k}.step"] = st["step"].reshape(())
    save_file({k: v.contiguous() for k, v in out.items()}, out_path)


def clip(in_path, out_path):
    t = load_file(in_path)
    max_norm = t["max_norm"].item()
    n = len([k for k in t if k.startswith("grad.")])
    params = []
    for k in range(n):
        p = torch.nn.Parameter(torch.zeros_like(t[f"grad.{k}"]))
        p.grad = t[f"grad.{k}"].clone()
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    out = {"norm": norm.reshape(())}
    for k, p in enumerate(params):
        out[f"grad.{k}"] = p.grad
    save_file(out, out_path)


def run(argv):
    cmd = argv[0]
    if cmd == "schedules":
        schedules(argv[1])
    elif cmd == "adamw":
        adamw(argv[1], argv[2], argv[3])
    elif cmd == "clip":
        clip(argv[1], argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    job = []
    for a in sys.argv[1:] + ["--"]:
        if a == "--":
            if job:
                run(job)
            job = []
        else:
            job.append(a)
