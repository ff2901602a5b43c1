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
(newton_schulz.ns_matmul_flops) ÷ the matmul rate measured here at the dtype ns_dtype "auto" picks (bf16 8192³ on
CUDA; on CPU bf16 2048³ where the CPU has bf16 matrix units, else fp32 2048³).

On CPU the script runs under run.sh's allocator settings (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736:
it re-executes itself with them unless they are set); --default-malloc keeps glibc's defaults, so both can be
reported.

    python benchmarks/optimizer_step.py --device cpu --compare-libraries    # issue 17

--compare-libraries times, per algorithm, our step against the library implementations of the same algorithm on
the same parameter set (all parameters, no routing; Muon: the hidden matrices), in one process, alternating within
each repeat, and prints each one's ratio to the fastest library: torch.optim (AdamW foreach and fused, Muon),
lion-pytorch, pytorch-optimizer (AdamW, Lion foreach and per-parameter, SignSGD = Signum, Muon) and heavyball
(AdamW, Muon; its eager path, compile_step=False). A library that is not installed is skipped with a note
(pip install lion-pytorch pytorch-optimizer heavyball: benchmark-only dependencies). The three Muons hard-code bf16
Newton–Schulz; on a CPU without bf16 matrix units (where ours runs NS in fp32) they are skipped with a step time
estimated from the measured bf16 matmul rate, and pytorch-optimizer's Muon runs with its NS function given fp32,
the like-for-like row. The rows "muon (hidden) without NS iterations bfloat16|float32" time ours and
pytorch-optimizer's Muon with the NS iterations left out (WithoutNSIterations): the work outside the matmuls,
comparable on every CPU.
"""

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root holds model.py


from model import GPT, model_config
from optimizers import OPTIMIZERS, build_optimizer, optimizer_class
from optimizers.build import constructor_arguments
from optimizers.newton_schulz import ns_matmul_flops, orthogonalize, resolve_dtype
from optimizers.routing import route

RUN_SH_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}  # run.sh's CPU settings


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
    ap.add_argument("--compare-libraries", action="store_true",
                    help="our steps against torch.optim, lion-pytorch, pytorch-optimizer and heavyball, per algorithm")
    ap.add_argument("--default-malloc", action="store_true", help="on CPU, keep glibc's default allocator settings")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    unset = any(os.environ.get(k) != v for k, v in RUN_SH_MALLOC.items())
    if device.type == "cpu" and not args.default_malloc and unset:  # glibc reads them at start: run again with them
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **RUN_SH_MALLOC})
    malloc = "default" if args.default_malloc else "run.sh (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=64 GiB)"
    if args.compare_libraries:
        return compare_libraries(args, device, malloc)
    torch.manual_seed(0)
    named = make_params(args.size, device)
    n_all = sum(p.numel() for _, p in named)
    hidden_named, _ = route(named, "hidden")
    hidden = [p for _, p in hidden_named]
    n_hidden = sum(p.numel() for p in hidden)
    print(f"# optimizer step, gpt2 {args.size}: {n_all / 1e6:.1f}M params ({len(named)} tensors), hidden matrices "
          f"{n_hidden / 1e6:.1f}M ({len(hidden)}); device {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}; torch {torch.__version__}; "
          f"median of {args.repeats} after {args.warmup} warm-up; malloc {malloc if device.type == 'cpu' else '-'}")
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
        ns_dtype = resolve_dtype("auto", hidden[0])  # the fastest adequate NS dtype on this device
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


# ---------------------------------------------------------------------------------------------------------------
# --compare-libraries


def library(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class TorchOpsOnly:
    """An optimizer whose sign steps run the torch ops instead of the C kernels (optimizers/sign_kernels.py)."""

    def __init__(self, opt):
        self.opt = opt

    def step(self):
        from optimizers import sign_kernels
        with sign_kernels.torch_ops_only():
            self.opt.step()


def library_rows(algorithm, params, hidden):
    """(label, is ours, constructor) of every implementation of `algorithm`; same hyperparameters throughout."""
    from optimizers import AdamW, Lion, LionMuon, Muon, Signum
    lion_pt, po, hb = library("lion_pytorch"), library("pytorch_optimizer"), library("heavyball")
    adamw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    lion = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    def po_muon():
        return po.Muon([dict(params=hidden, use_muon=True)], lr=0.02, momentum=0.95)

    if bf16_emulated(hidden):  # the libraries' bf16 NS is too slow to time here (bf16_skip_note): like for like
        ns_dtype = resolve_dtype("auto", hidden[0])
        muon_libraries = [(f"pytorch-optimizer Muon, its NS in {str(ns_dtype)[6:]}", False,
                           lambda: WithNSDtype(po_muon(), ns_dtype))] if po else []
    else:
        muon_libraries = [("torch.optim.Muon", False, lambda: torch.optim.Muon(hidden, lr=0.02, momentum=0.95))] \
            + ([("pytorch-optimizer Muon", False, po_muon)] if po else []) \
            + ([("heavyball Muon (eager)", False, lambda: hb.Muon(hidden, lr=0.02, compile_step=False))] if hb else [])
    rows = {
        "adamw": [("ours: optimizers.AdamW", True, lambda: AdamW(params, **adamw)),
                  ("torch.optim.AdamW foreach", False, lambda: torch.optim.AdamW(params, **adamw, foreach=True)),
                  ("torch.optim.AdamW fused", False, lambda: torch.optim.AdamW(params, **adamw, fused=True))]
        + ([("pytorch-optimizer AdamW", False, lambda: po.AdamW(params, **adamw))] if po else [])
        + ([("heavyball AdamW (eager)", False, lambda: hb.AdamW(params, **adamw, compile_step=False))] if hb else []),
        "lion": [("ours: optimizers.Lion", True, lambda: Lion(params, **lion)),
                 ("ours, torch ops (no C compiler)", True, lambda: TorchOpsOnly(Lion(params, **lion)))]
        + ([("lion-pytorch Lion", False, lambda: lion_pt.Lion(params, **lion))] if lion_pt else [])
        + ([("pytorch-optimizer Lion foreach", False, lambda: po.Lion(params, **lion, foreach=True)),
            ("pytorch-optimizer Lion per-param", False, lambda: po.Lion(params, **lion, foreach=False))] if po else []),
        "signum": [("ours: optimizers.Signum", True, lambda: Signum(params, lr=1e-4, momentum=0.9, weight_decay=0.1)),
                   ("ours, torch ops (no C compiler)", True,
                    lambda: TorchOpsOnly(Signum(params, lr=1e-4, momentum=0.9, weight_decay=0.1)))]
        + ([("pytorch-optimizer SignSGD foreach", False,
             lambda: po.SignSGD(params, lr=1e-4, momentum=0.9, weight_decay=0.1, foreach=True)),
            ("pytorch-optimizer SignSGD per-param", False,
             lambda: po.SignSGD(params, lr=1e-4, momentum=0.9, weight_decay=0.1, foreach=False))] if po else []),
        # no library implements LionMuon: its Lion step (P = inf), one pass against the torch ops it replaced
        "lionmuon lion step (hidden)": [
            ("ours: optimizers.LionMuon, period=inf", True, lambda: LionMuon(hidden, period=math.inf)),
            ("ours, torch ops (the previous code)", False, lambda: TorchOpsOnly(LionMuon(hidden, period=math.inf)))],
        "muon (hidden)": [("ours: optimizers.Muon", True, lambda: Muon(hidden))]
        # fp32 NS: ns_method "auto" runs Gram NS on the rectangular matrices; the standard iteration, like for like
        + ([("ours, ns_method standard", True, lambda: Muon(hidden, ns_method="standard"))]
           if bf16_emulated(hidden) else []) + muon_libraries,
    }
    # Muon's step with the NS iterations left out (WithoutNSIterations), bf16 and fp32 NS: the momentum, the NS
    # input's cast and normalisation, and the update, i.e. what an implementation adds to the matmuls; measurable
    # on any CPU, bf16 matrix units or not
    for dt in ("bfloat16", "float32"):
        rows[f"muon (hidden) without NS iterations {dt}"] = [
            ("ours: optimizers.Muon", True,
             lambda dt=dt: WithoutNSIterations(Muon(hidden, ns_dtype=dt, ns_method="standard"), getattr(torch, dt)))
        ] + ([("pytorch-optimizer Muon", False,
               lambda dt=dt: WithoutNSIterations(po_muon(), getattr(torch, dt)))] if po else [])
    return rows[algorithm]


class WithoutNSIterations:
    """A Muon whose Newton–Schulz runs everything but the iterations: ours with standard_newton_schulz returning its
    input, pytorch-optimizer's with zero_power_via_newton_schulz_5 replaced by its own first lines (transpose if
    tall, cast to `dtype`, divide by the clamped norm). What remains is each implementation's work outside the
    matmuls, the same in both."""

    def __init__(self, opt, dtype):
        self.opt, self.dtype = opt, dtype

    @staticmethod
    def _po_ns(g, num_steps=5, eps=1e-7, safety_factor=1.0, weights=None, dtype=torch.bfloat16):
        transpose = g.size(-2) > g.size(-1)
        x = (g.mT if transpose else g).to(dtype=dtype, copy=True, memory_format=torch.contiguous_format)
        x.div_(x.norm(2, dim=(-2, -1), keepdim=True).clamp_min_(eps))
        return x.mT if transpose else x

    def step(self):
        from optimizers import newton_schulz as ns
        real = ns.standard_newton_schulz
        ns.standard_newton_schulz = lambda X, schedule: X
        po_base = None
        if library("pytorch_optimizer"):
            from pytorch_optimizer.optimizer.muon import base as po_base
            po_real = po_base.zero_power_via_newton_schulz_5
            po_base.zero_power_via_newton_schulz_5 = lambda g, *a, **k: self._po_ns(g, dtype=self.dtype)
        try:
            self.opt.step()
        finally:
            ns.standard_newton_schulz = real
            if po_base is not None:
                po_base.zero_power_via_newton_schulz_5 = po_real


def bf16_emulated(hidden) -> bool:
    """Whether ours runs NS in another dtype than bf16 here (a CPU without bf16 matrix units: resolve_dtype), so
    that the libraries' hard-coded bf16 NS runs emulated."""
    return resolve_dtype("auto", hidden[0]) != torch.bfloat16


class WithNSDtype:
    """pytorch-optimizer's Muon with its zero_power_via_newton_schulz_5 called with dtype=`dtype` (it passes none,
    so the function's bf16 default applies): the library's code in the NS dtype ours uses on this device."""

    def __init__(self, opt, dtype):
        import functools

        from pytorch_optimizer.optimizer.muon import base

        self.opt, self.base = opt, base
        self.ns = functools.partial(base.zero_power_via_newton_schulz_5, dtype=dtype)

    def step(self):
        real = self.base.zero_power_via_newton_schulz_5
        self.base.zero_power_via_newton_schulz_5 = self.ns
        try:
            self.opt.step()
        finally:
            self.base.zero_power_via_newton_schulz_5 = real


def bf16_skip_note(device, hidden) -> str:
    """Why the bf16-NS libraries are not timed on this CPU, with their step time estimated from the FLOPs."""
    flops = sum(ns_matmul_flops(p.size(0), p.size(1), 5) for p in hidden)
    bf16, fp32 = (matmul_rate(device, dt, 512) for dt in (torch.bfloat16, torch.float32))
    return (f"torch.optim.Muon, pytorch-optimizer and heavyball run NS in bf16, which this CPU emulates (512² matmul: "
            f"bf16 {bf16 / 1e9:.2f} GFLOP/s, float32 {fp32 / 1e9:.1f}): not timed; their NS alone would take "
            f"≈{flops / bf16:.0f} s per step ({flops:.3g} FLOPs at that rate)")


def compare_libraries(args, device, malloc):
    from optimizers import sign_kernels
    named = make_params(args.size, device)
    params = [p for _, p in named]
    grads = [p.grad for p in params]
    hidden = [p for _, p in route(named, "hidden")[0]]
    missing = [n for n in ("lion_pytorch", "pytorch_optimizer", "heavyball") if library(n) is None]
    print(f"# --compare-libraries, gpt2 {args.size}, {sum(p.numel() for p in params) / 1e6:.1f}M params; device "
          f"{device}; torch {torch.__version__}; {torch.get_num_threads()} threads; malloc {malloc}; NS dtype (auto) "
          f"{str(resolve_dtype('auto', hidden[0]))[6:]}; median of {args.repeats} after {args.warmup} warm-up, "
          f"alternating; sign steps: {sign_kernels.status()}"
          + (f"; not installed, skipped: {', '.join(missing)}" if missing else ""), flush=True)
    only = set(filter(None, args.only.split(",")))
    print("\n| algorithm | implementation | step (ms) | vs best alternative |\n|---|---|---:|---:|")
    for algorithm in ("adamw", "lion", "signum", "lionmuon lion step (hidden)", "muon (hidden)",
                      "muon (hidden) without NS iterations bfloat16", "muon (hidden) without NS iterations float32"):
        if only and algorithm not in only:
            continue
        runners = []
        if algorithm == "muon (hidden)" and bf16_emulated(hidden):
            note = bf16_skip_note(device, hidden)
            print(f"| {algorithm} | (libraries, as shipped) | skipped: {note} | |", flush=True)
        for label, ours, make in library_rows(algorithm, params, hidden):
            try:
                opt = make()

                def step(opt=opt):  # heavyball consumes p.grad (sets it to None): every step gets the gradients
                    for p, g in zip(params, grads):
                        p.grad = g
                    opt.step()

                for _ in range(args.warmup):
                    step()
                runners.append((label, ours, step))
            except Exception as e:  # a library that cannot run this set: say so, go on
                print(f"| {algorithm} | {label} | skipped: {type(e).__name__}: {str(e)[:80]} | |", flush=True)
        times = {label: [] for label, _, _ in runners}
        for _ in range(args.repeats):
            for label, _, step in runners:
                times[label].append(time_fn(step, device, 1, 0))
        med = {label: statistics.median(t) for label, t in times.items()}
        best = min((med[label] for label, ours, _ in runners if not ours), default=None)
        for label, ours, _ in runners:
            ratio = f"**{med[label] / best:.2f}x**" if ours and best else (f"{med[label] / best:.2f}x" if best else "")
            print(f"| {algorithm} | {label} | {med[label] * 1e3:.1f} | {ratio} |", flush=True)
        runners.clear()  # free every state before the next algorithm


if __name__ == "__main__":
    main()
