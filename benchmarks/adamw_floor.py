"""How close torch's fused CPU AdamW (what optimizers.AdamW runs) is to the memory floor of an exact fp32 AdamW step.

    python benchmarks/adamw_floor.py [--repeats 7] [--size gpt2-124m]

An exact fp32 AdamW step reads p, g, m, v and writes p, m, v: 28 bytes per element, 3.5 GB at 124M. The script
compiles (with the system's cc, into a temporary directory) two one-pass C loops over the same GPT-2 parameter set,
split over torch's intra-op threads like optimizers/sign_kernels.py does:
  "C, torch's arithmetic"   AdamW with the operations of torch's fused CPU kernel (ATen FusedAdamKernel.cpp, the
                            rounding of its AVX2 build: the lerp and v's update as fused multiply-adds; the script
                            checks the result is bit for bit torch's before timing it, and says so if not)
  "C, no sqrt or division"  the same loads and stores with sqrt and both divisions replaced by multiplies: wrong
                            numbers, the cost of the memory traffic alone
and times them, alternating with torch's fused kernel (torch._fused_adamw_, what ours calls), under the allocator
the process runs with. Where the no-sqrt loop is no faster than torch's kernel, the step is bound by
memory and no exact fp32 AdamW can be much faster on this machine.
"""

import argparse
import ctypes
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import GPT, model_config

SOURCE = r"""
#include <math.h>
#include <stdint.h>
/* torch's fused CPU AdamW (ADAMW mode, float): vector body of `vec` lanes, then a scalar tail */
void adamw_exact(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                 float decay, float w, float b2, float a2, float bc2_sqrt, float eps, float neg_step, int64_t vec) {
    int64_t nv = n - n % vec;
    float c = w - 1.0f;
    int small = w < 0.5f;
    for (int64_t i = 0; i < nv; i++) {
        float pi = p[i] * decay, gi = g[i];
        float mi = small ? fmaf(w, gi - m[i], m[i]) : fmaf(c, gi - m[i], gi);
        float vi = fmaf(a2 * gi, gi, v[i] * b2);
        m[i] = mi; v[i] = vi;
        p[i] = pi + (neg_step * mi) / (sqrtf(vi) / bc2_sqrt + eps);
    }
    for (int64_t i = nv; i < n; i++) {
        float pi = p[i] * decay, gi = g[i];
        float mi = small ? fmaf(w, gi - m[i], m[i]) : fmaf(-(gi - m[i]), 1.0f - w, gi);
        float vi = fmaf(v[i], b2, (a2 * gi) * gi);
        m[i] = mi; v[i] = vi;
        p[i] = pi - (-neg_step * mi) / (sqrtf(vi) / bc2_sqrt + eps);
    }
}
/* the same traffic without sqrt or division (wrong numbers) */
void adamw_traffic(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                   float decay, float w, float b2, float a2, float bc2_sqrt, float eps, float neg_step, int64_t vec) {
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * decay, gi = g[i];
        float mi = fmaf(w, gi - m[i], m[i]);
        float vi = fmaf(a2 * gi, gi, v[i] * b2);
        m[i] = mi; v[i] = vi;
        p[i] = pi + (neg_step * mi) * (vi * bc2_sqrt + eps);
    }
}
"""

HP = dict(lr=6e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def build(tmp):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        sys.exit("adamw_floor.py: no C compiler (cc, gcc, clang or $CC) found; install one to run this benchmark")
    src, lib = os.path.join(tmp, "adamw.c"), os.path.join(tmp, "adamw.so")
    Path(src).write_text(SOURCE)
    subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", src,
                    "-o", lib, "-lm"], check=True)
    dll = ctypes.CDLL(lib)
    f, i64, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
    for name in ("adamw_exact", "adamw_traffic"):
        getattr(dll, name).argtypes = [i64, ptr, ptr, ptr, ptr, f, f, f, f, f, f, f, i64]
    return dll


def c_step(kernel, tensors, step, pool, threads, vec):
    """One AdamW step of `kernel` over (p, g, m, v) lists, each tensor's elements split over the threads at
    multiples of 16 (torch's split is at cache lines too, so only the last `n % vec` elements take the tail)."""
    bc1, bc2 = 1 - HP["beta1"] ** step, 1 - HP["beta2"] ** step
    scalars = (1 - HP["lr"] * HP["weight_decay"], 1 - HP["beta1"], HP["beta2"], 1 - HP["beta2"], math.sqrt(bc2),
               HP["eps"], -(HP["lr"] / bc1), vec)
    segments = [[] for _ in range(threads)]
    for p, g, m, v in zip(*tensors):
        n = p.numel()
        per = -(-n // threads)  # ceil(n / threads), rounded up to a multiple of 16 below
        share = -(-per // 16) * 16 if n >= 1 << 16 else n
        for t, lo in enumerate(range(0, n, share)):
            segments[t].append((min(share, n - lo), *(x.data_ptr() + 4 * lo for x in (p, g, m, v))))

    def work(segs):
        for seg in segs:
            kernel(*seg, *scalars)

    for fut in [pool.submit(work, s) for s in segments if s]:
        fut.result()


def fused_step(tensors, steps, step):
    """torch's fused kernel, as torch.optim.AdamW(fused=True) and optimizers.AdamW call it on CPU."""
    for s in steps:
        s.fill_(step)
    torch._fused_adamw_(*tensors, [], steps, amsgrad=False, maximize=False, **HP)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="gpt2-124m")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = [p.shape for p in GPT(model_config("gpt2", args.size)).parameters()]
    n = sum(math.prod(s) for s in shapes)
    threads = torch.get_num_threads()
    vec = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    pool = ThreadPoolExecutor(threads)

    def fresh():
        p = [torch.randn(s) * 0.02 for s in shapes]
        return [p, [torch.randn(s) * 1e-3 for s in shapes], [torch.zeros(s) for s in shapes],
                [torch.zeros(s) for s in shapes]]

    with tempfile.TemporaryDirectory() as tmp:
        dll = build(tmp)
        # bit-for-bit check of the exact loop against torch's kernel, on odd sizes too (tails), over 3 steps
        check = [torch.Size([1000003]), torch.Size([4099]), torch.Size([7])] + shapes[:4]
        a = [[torch.randn(s) for s in check], [torch.randn(s) for s in check], [torch.zeros(s) for s in check],
             [torch.zeros(s) for s in check]]
        b = [[x.clone() for x in lst] for lst in a]
        st = [torch.zeros(()) for _ in check]
        for step in (1, 2, 3):
            c_step(dll.adamw_exact, a, step, pool, threads, vec)
            fused_step(b, st, step)
        exact = all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))
        del a, b
        steps = [torch.zeros(()) for _ in shapes]
        runners = {"torch fused (optimizers.AdamW)": (fresh(), lambda t, s: fused_step(t, steps, s)),
                   "C, torch's arithmetic": (fresh(), lambda t, s: c_step(dll.adamw_exact, t, s, pool, threads, vec)),
                   "C, no sqrt or division": (fresh(), lambda t, s: c_step(dll.adamw_traffic, t, s, pool, threads,
                                                                          vec))}
        times = {k: [] for k in runners}
        for step in range(1, args.repeats + 2):
            for name, (tensors, fn) in runners.items():
                t0 = time.perf_counter()
                fn(tensors, step)
                if step > 1:  # the first step is a warm-up
                    times[name].append(time.perf_counter() - t0)
    malloc = "run.sh" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default"
    print(f"# AdamW step, gpt2 {args.size} ({n / 1e6:.1f}M fp32 params, {28 * n / 1e9:.2f} GB moved per step); "
          f"torch {torch.__version__}, {threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"malloc {malloc}; median of {args.repeats} after 1 warm-up, alternating")
    print(f"# C loop with torch's arithmetic is bit for bit torch's fused kernel here: {'yes' if exact else 'NO'}")
    base = statistics.median(times["torch fused (optimizers.AdamW)"])
    print("\n| implementation | step (ms) | GB/s | vs torch fused |\n|---|---:|---:|---:|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {med * 1e3:.1f} | {28 * n / med / 1e9:.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
