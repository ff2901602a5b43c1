"""Optimizer step time and state memory on the GPT-2 124M parameter set, ours side by side with torch.optim.

    python benchmarks/optimizer_step.py                    # gpt2-124m on CUDA if available, else CPU
    python benchmarks/optimizer_step.py --size tiny --repeats 5 --device cpu

Every optimizer gets the same random fp32 parameters and random gradients (one gradient per tensor, reused every
step: the step's cost does not depend on the values). Step time is the median over `--repeats` timed repeats after
`--warmup` untimed ones; for LionMuon/SignMuon one repeat is P consecutive steps (a Muon step and P−1 Lion steps),
reported per step. Baselines, measured in the same run:
  torch.optim.AdamW   fused on CUDA, foreach otherwise, all parameters (nanoGPT groups)
  torch.optim.Muon    the hidden matrices only (it rejects other params)
Rows marked "hidden" run on the hidden matrices only (the Muon comparison); "all" rows run build_optimizer's full
hybrid (matrices + backup AdamW for embeddings and norms). Goals: adamw ≤ 1.0× torch AdamW, lion/signum ≤ 1.0×
torch AdamW, muon(hidden) ≤ 1.0× torch Muon.
It also times Newton–Schulz alone on the hidden matrices against its FLOP floor: NS FLOPs
(newton_schulz.ns_matmul_flops) ÷ the matmul rate measured here (bf16 8192³ on CUDA; on CPU the NS dtype is
fp32, so fp32 2048³).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root holds model.py


from model import GPT, model_config
from optimizers import OPTIMIZERS, build_optimizer, optimizer_class
from optimizers.build import constructor_arguments
from optimizers.newton_schulz import ns_matmul_flops, orthogonalize
from optimizers.routing import route


class ParamSet:
    """Named parameters with gradients, shaped like the model's (build_optimizer only needs named_parameters())."""

    def __init__(self, named):
        self.named = named

    def named_parameters(self):
        return iter(self.named)


def make_params(size, device, seed=0):
    with torch.device("meta"):
        shapes = [(n, p.shape) for n, p in GPT(model_config("gpt2", size)).named_parameters()]
    g = torch.Generator(device=device).manual_seed(seed)
    named = []
    for n, s in shapes:
        p = torch.nn.Parameter(torch.randn(s, device=device, generator=g) * 0.02)
        p.grad = torch.randn(s, device=device, generator=g) * 1e-3
        named.append((n, p))
    return named


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, repeats, warmup, per_repeat=1):
    for _ in range(warmup):
        for _ in range(per_repeat):
            fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(per_repeat):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / per_repeat)
    return statistics.median(times)


def state_bytes(opt):
    """Bytes of every tensor in the optimizer state, inside lists too (SOAP keeps its preconditioners in lists)."""
    def size(v):
        if torch.is_tensor(v):
            return v.numel() * v.element_size()
        return sum(size(x) for x in v) if isinstance(v, (list, tuple)) else 0
    return sum(size(v) for st in opt.state.values() for v in st.values())


def matmul_rate(device, dtype, n):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, repeats=5 if device.type == "cuda" else 3, warmup=2)
    return 2 * n**3 / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="gpt2-124m", help="model size whose parameter set is used (model.MODEL_SIZES)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated subset of row names to run")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    named = make_params(args.size, device)
    n_all = sum(p.numel() for _, p in named)
    hidden_named, _ = route(named, "hidden")
    hidden = [p for _, p in hidden_named]
    n_hidden = sum(p.numel() for p in hidden)
    print(f"# optimizer step, gpt2 {args.size}: {n_all / 1e6:.1f}M params ({len(named)} tensors), hidden matrices "
          f"{n_hidden / 1e6:.1f}M ({len(hidden)}); device {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}; torch {torch.__version__}; "
          f"median of {args.repeats} after {args.warmup} warm-up")
    only = set(filter(None, args.only.split(",")))
    runners = []  # (name, optimizer, steps per repeat, parameter set)

    def add(name, make, params_desc, per_repeat=1):
        if not only or name in only:
            runners.append((name, make(), per_repeat, params_desc))

    fused = device.type == "cuda"
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    add("torch.optim.AdamW", lambda: torch.optim.AdamW(
        [dict(params=decay, weight_decay=0.1), dict(params=no_decay, weight_decay=0.0)], lr=6e-4,
        betas=(0.9, 0.95), fused=fused, foreach=not fused), "all")
    add("torch.optim.Muon", lambda: torch.optim.Muon(hidden, lr=0.02, momentum=0.95, weight_decay=0.0), "hidden")
    params = ParamSet(named)
    for name in OPTIMIZERS:  # the full optimizer build_optimizer gives for the whole model
        period = constructor_arguments(optimizer_class(name)).get("period", (None, 1.0))[1]
        add(name, lambda: build_optimizer(params, name, {}), "all", int(period))
    for name in ("muon", "olion", "lionmuon", "signmuon"):  # the matrix part alone, against torch.optim.Muon
        period = constructor_arguments(optimizer_class(name)).get("period", (None, 1.0))[1]
        add(f"{name}[hidden]", lambda: optimizer_class(name)(hidden), "hidden", int(period))

    # Warm up everything, then time the optimizers in turn within each repeat, so that a change in machine load
    # (a shared CPU) hits all of them alike instead of whichever ran during it.
    for _, opt, k, _ in runners:
        for _ in range(args.warmup * k):
            opt.step()
    times = {name: [] for name, *_ in runners}
    for _ in range(args.repeats):
        for name, opt, k, _ in runners:
            times[name].append(time_fn(opt.step, device, 1, 0, k))
    rows = {}
    for name, opt, _k, desc in runners:
        n = n_all if desc == "all" else n_hidden
        rows[name] = dict(time=statistics.median(times[name]), bytes=state_bytes(opt), set=desc, per_param=None)
        rows[name]["per_param"] = rows[name]["bytes"] / n
        print(f"{name:24s} {desc:6s} {rows[name]['time'] * 1e3:10.2f} ms   "
              f"state {rows[name]['bytes'] / 2**20:8.1f} MiB", flush=True)
    runners.clear()  # free the optimizer states before timing NS alone

    # Newton–Schulz alone on the hidden matrices vs its FLOP floor
    if not only or "ns" in only:
        ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        rate = matmul_rate(device, ns_dtype, 8192 if device.type == "cuda" else 2048)
        updates = [p.grad for p in hidden]
        flops = sum(ns_matmul_flops(p.size(0), p.size(1), 5) for p in hidden)
        floor = flops / rate
        t_ns = time_fn(lambda: orthogonalize(updates, 5, "kellerjordan", "auto", distributed=False), device,
                       args.repeats, args.warmup)
        rows["ns"] = dict(time=t_ns, floor=floor, rate=rate, flops=flops)
        print(f"NS5 on hidden matrices {t_ns * 1e3:.2f} ms; FLOPs {flops:.4g}; {str(ns_dtype)[6:]} matmul rate "
              f"{rate / 1e12:.1f} TFLOP/s; floor {floor * 1e3:.2f} ms; {t_ns / floor:.2f}x floor")

    # ratios against the torch.optim counterparts
    print("\n| optimizer | params | step (ms) | state (MiB) | state B/param | vs torch AdamW | vs torch Muon |")
    print("|---|---|---:|---:|---:|---:|---:|")
    a = rows.get("torch.optim.AdamW", {}).get("time")
    m = rows.get("torch.optim.Muon", {}).get("time")
    for name, r in rows.items():
        if name.startswith("ns"):
            continue
        ra = f"{r['time'] / a:.2f}x" if a and r["set"] == "all" else ""
        rm = f"{r['time'] / m:.2f}x" if m and r["set"] == "hidden" else ""
        print(f"| {name} | {r['set']} | {r['time'] * 1e3:.2f} | {r['bytes'] / 2**20:.1f} | {r['per_param']:.2f} "
              f"| {ra} | {rm} |")
    if "ns" in rows:
        r = rows["ns"]
        print(f"| NS5 batched | hidden | {r['time'] * 1e3:.2f} | | | floor {r['floor'] * 1e3:.2f} ms "
              f"| {r['time'] / r['floor']:.2f}x floor |")


if __name__ == "__main__":
    main()
