"""Training throughput: tokens/s, ms/step, model TFLOP/s and MFU of full training steps (forward + backward +
optimizer step) on a fixed random batch, for one or more model/optimizer configurations.

    python benchmarks/train_throughput.py --size tiny --steps 10
    python benchmarks/train_throughput.py --size gpt2-124m --micro_batch 16 --block_size 1024 --device cuda --compile
    python benchmarks/train_throughput.py --size gpt2-124m --optimizer adamw muon lionmuon --device cuda --json out.json

Method: build the model (seed 0) and the optimizer, run --warmup untimed steps (these absorb torch.compile, CUDA
autotuning and allocator growth), then --repeats timed windows of --steps steps each (a device synchronize before
and after every window), and report the median window. One step = one micro-batch of --micro_batch sequences of
--block_size tokens, grad-norm clipping at 1.0 (as train.py), optimizer.step(), zero_grad. On CUDA: bf16 autocast,
TF32 matmuls on, fused AdamW; on CPU: fp32. Model FLOPs per token = flops.model_flops_per_token (6·N + 12·L·d·T,
nanoGPT/PaLM); MFU = model FLOP/s / peak bf16 FLOP/s from flops.peak_flops (left empty for unknown devices and CPU).
The optimizer comes from optimizers.build_optimizer when that package provides it (with its own defaults for
the method); otherwise --optimizer must be adamw and torch.optim.AdamW is used. Needs only torch (no wandb,
datasets or data files): the batch is random tokens, which cost the same as real ones.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for model/flops

from errors import ConfigError, main_guard  # (after the sys.path line on purpose)
from flops import model_flops_per_token, peak_flops
from model import GPT, MODEL_SIZES, model_config

try:  # the project's optimizers, once the package exports them
    from optimizers import build_optimizer
except ImportError:
    build_optimizer = None


def make_optimizer(model, name: str, device_type: str):
    if build_optimizer is not None:
        return build_optimizer(model, name, {}), "optimizers.build_optimizer"
    if name != "adamw":
        raise ConfigError(f"optimizer {name!r} needs optimizers.build_optimizer, which this checkout does not have "
                          "yet. Use --optimizer adamw")
    # nanoGPT's AdamW setup: weight decay on matrices and embeddings only
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=0.1),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=device_type == "cuda"), "torch.optim.AdamW"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(arch, size, optimizer_name, micro_batch, block_size, device, compile_model, steps, warmup, repeats):
    torch.manual_seed(0)
    cfg = model_config(arch, size, block_size=block_size)
    model = GPT(cfg).to(device)
    model.train()
    optimizer, opt_source = make_optimizer(model, optimizer_name, device.type)
    step_model = torch.compile(model) if compile_model else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (micro_batch, cfg.block_size), generator=g).to(device)
    y = torch.randint(0, 50257, (micro_batch, cfg.block_size), generator=g).to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step():
        with autocast:
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    windows = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = train_step()
        sync(device)
        windows.append((time.perf_counter() - t0) / steps)
    loss = loss.item()  # also proves the steps produced a finite number
    s_per_step = statistics.median(windows)
    tokens_per_step = micro_batch * cfg.block_size
    tok_s = tokens_per_step / s_per_step
    flops_s = model_flops_per_token(cfg) * tok_s
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(device_name)
    opt_flops = optimizer.last_step_flops() if hasattr(optimizer, "last_step_flops") else None
    return dict(arch=arch, size=size, optimizer=optimizer_name, optimizer_impl=opt_source, micro_batch=micro_batch,
                block_size=cfg.block_size, compile=compile_model, device=device_name or device.type,
                params=model.param_counts()["total"], ms_per_step=1e3 * s_per_step,
                ms_per_step_windows=[1e3 * w for w in windows], tokens_per_s=tok_s, model_tflops_s=flops_s / 1e12,
                mfu=None if peak is None else flops_s / peak,
                optimizer_gflops_per_step=None if opt_flops is None else sum(opt_flops.values()) / 1e9,
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                final_loss=loss)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["gpt2"], choices=["gpt2", "llama"])
    p.add_argument("--size", nargs="+", default=["tiny"], choices=list(MODEL_SIZES))
    p.add_argument("--optimizer", nargs="+", default=["adamw"])
    p.add_argument("--micro_batch", type=int, default=8, help="sequences per step")
    p.add_argument("--block_size", type=int, default=0, help="sequence length (0 = the size's default)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args()
    if min(args.micro_batch, args.steps, args.repeats) < 1 or args.warmup < 0 or args.block_size < 0:
        raise ConfigError("--micro_batch, --steps and --repeats must be >= 1, --warmup and --block_size >= 0. "
                          "Fix the flag")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    info = dict(torch=torch.__version__, python=platform.python_version(), device=device.type,
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                cpu_threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    print(" | ".join(f"{k}={v}" for k, v in info.items()))

    results = []
    header = ("| arch | size | optimizer | micro_batch×T | compile | tokens/s | ms/step | model TFLOP/s | MFU "
              "| opt GFLOP/step |\n|---|---|---|---|---|---:|---:|---:|---:|---:|")
    print(header)
    for arch in args.arch:
        for size in args.size:
            for opt in args.optimizer:
                r = bench_one(arch, size, opt, args.micro_batch, args.block_size, device, args.compile,
                              args.steps, args.warmup, args.repeats)
                results.append(r)
                mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
                opt_gf = "" if r["optimizer_gflops_per_step"] is None else f"{r['optimizer_gflops_per_step']:.2f}"
                print(f"| {arch} | {size} | {opt} | {r['micro_batch']}×{r['block_size']} | {r['compile']} "
                      f"| {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | {r['model_tflops_s']:.3f} | {mfu} "
                      f"| {opt_gf} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, args=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main_guard(main)
