"""Newton–Schulz on GPT-2's hidden matrices: standard vs Gram NS, batched vs per-matrix, error and time.

    python benchmarks/ns_methods.py                        # gpt2-124m shapes, CPU, fp32
    python benchmarks/ns_methods.py --repeats 5 --skip-accuracy

Three tables, each printed as it completes:
1. Error. NS5 of one matrix per shape, against the float64 standard NS5 of the same input (relative Frobenius
   error; "σ out" is the output's singular-value range), for the input spectra NS meets: a Gaussian matrix, and
   one with log-uniform singular values from 1 down to 1e-6, and a rank-2 matrix plus Gaussian noise of 1e-3 (a
   momentum dominated by a few directions, as in small models). Columns: fp32 standard,
   fp32 gram, float64 gram (the algebra check: rounding only); gram here runs on every shape, including those where
   ns_method "gram" runs the standard iteration (the "runs" column).
2. Time per bucket. The 12 same-shape matrices of each GPT-2 124M layer type, fp32, as orthogonalize runs them
   (one batch per shape): standard, gram (ns_method "gram"), and standard one matrix at a time (as
   pytorch-optimizer's Muon does). The variants alternate within each repeat; medians over --repeats, and each
   variant's ratio to the batched standard one. "auto" in the table is what ns_method "auto" picks for the bucket.
3. Matmul rate of fp32 and bf16 square matmuls (512², 1024²): bf16 is emulated on CPUs without bf16 matrix units,
   which is why ns_dtype "auto" keeps fp32 there (docs/optimizers.md §5.6).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root holds optimizers/

from optimizers.newton_schulz import (
    NS_EPS,
    coefficient_schedule,
    cpu_has_bf16_matmul,
    gram_newton_schulz,
    newton_schulz,
    ns_matmul_flops,
    orthogonalize,
    resolve_method,
)

GPT2_124M = {"attn.c_attn": (768, 2304), "attn.c_proj": (768, 768), "mlp.c_fc": (768, 3072),
             "mlp.c_proj": (3072, 768)}  # (rows, cols) of each layer's hidden matrices; 12 layers


def spectrum_input(m: int, n: int, lo: float, gen: torch.Generator) -> torch.Tensor:
    """An m×n float64 matrix with random singular vectors and singular values log-uniform in [lo, 1]."""
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, dtype=torch.float64, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, torch.log10(torch.tensor(lo)).item(), r, dtype=torch.float64)
    return (U * s) @ V.T


def gram_everywhere(G: torch.Tensor, coefficients: str) -> torch.Tensor:
    """NS5 of G by the Gram iteration whatever its shape (newton_schulz runs it only where it saves FLOPs)."""
    X = G.mT if G.size(0) > G.size(1) else G
    schedule, scale = coefficient_schedule(coefficients, 5)
    X = gram_newton_schulz(X / (X.norm() * scale + NS_EPS), schedule)
    return X.mT if G.size(0) > G.size(1) else X


def accuracy(shapes, gen):
    print("| coefficients | shape | input | ns_method 'gram' runs | fp32 standard | fp32 gram | fp64 gram | "
          "σ out: fp64 standard / fp32 gram |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for coefficients, (m, n) in ((c, s) for c in ("kellerjordan", "polar_express") for s in shapes):
        low_rank = torch.randn(m, 2, dtype=torch.float64, generator=gen) @ \
            torch.randn(2, n, dtype=torch.float64, generator=gen)
        for name, G in (("Gaussian", torch.randn(m, n, dtype=torch.float64, generator=gen)),
                        ("σ 1 → 1e-6", spectrum_input(m, n, 1e-6, gen)),
                        ("rank 2 + 1e-3 noise", low_rank + 1e-3 * torch.randn(m, n, dtype=torch.float64,
                                                                              generator=gen))):
            ref = newton_schulz(G, 5, coefficients, method="standard")
            outs = [newton_schulz(G.float(), 5, coefficients, method="standard"),
                    gram_everywhere(G.float(), coefficients), gram_everywhere(G, coefficients)]
            errs = [((o.double() - ref).norm() / ref.norm()).item() for o in outs]
            s_ref, s_gram = torch.linalg.svdvals(ref), torch.linalg.svdvals(outs[1].double())
            runs = resolve_method("gram", torch.float32, m, n, 5)
            print(f"| {coefficients} | {m}×{n} | {name} | {runs} | {errs[0]:.1e} | {errs[1]:.1e} | "
                  f"{errs[2]:.0e} | [{s_ref.min():.3f}, {s_ref.max():.3f}] / "
                  f"[{s_gram.min():.3f}, {s_gram.max():.3f}] |", flush=True)


def timing(repeats, warmup, gen):
    variants = {
        "standard, batched": lambda mats: orthogonalize(mats, 5, ns_dtype="float32", ns_method="standard"),
        "gram, batched": lambda mats: orthogonalize(mats, 5, ns_dtype="float32", ns_method="gram"),
        "standard, per matrix": lambda mats: [newton_schulz(m, 5, method="standard") for m in mats],
    }
    print("| bucket (12 matrices) | auto picks | " + " | ".join(f"{v} (ms)" for v in variants) +
          " | gram / standard | per matrix / batched | matmul GFLOP/s: standard, gram |")
    print("|---|---|" + "---:|" * (len(variants) + 3))
    totals = dict.fromkeys(variants, 0.0)
    for name, (m, n) in GPT2_124M.items():
        mats = [torch.randn(m, n, generator=gen) for _ in range(12)]
        times = {v: [] for v in variants}
        for rep in range(warmup + repeats):
            for v, fn in variants.items():
                t0 = time.perf_counter()
                fn(mats)
                if rep >= warmup:
                    times[v].append(time.perf_counter() - t0)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        for v in variants:
            totals[v] += med[v]
        std, gram, loop = med["standard, batched"], med["gram, batched"], med["standard, per matrix"]
        rate_std = 12 * ns_matmul_flops(m, n, 5) / std / 1e9
        rate_gram = 12 * ns_matmul_flops(m, n, 5, resolve_method("gram", torch.float32, m, n, 5)) / gram / 1e9
        print(f"| {name} {m}×{n} | {resolve_method('auto', torch.float32, m, n, 5)} | " +
              " | ".join(f"{med[v] * 1e3:.0f}" for v in variants) +
              f" | {gram / std:.2f}x | {loop / std:.2f}x | {rate_std:.1f}, {rate_gram:.1f} |", flush=True)
    print("| all 48 | | " + " | ".join(f"{totals[v] * 1e3:.0f}" for v in variants) +
          f" | {totals['gram, batched'] / totals['standard, batched']:.2f}x | "
          f"{totals['standard, per matrix'] / totals['standard, batched']:.2f}x | |")


def matmul_rates(gen):
    print("| matmul | fp32 GFLOP/s | bf16 GFLOP/s |")
    print("|---|---:|---:|")
    for n in (512, 1024):
        rates = []
        for dt in (torch.float32, torch.bfloat16):
            a, b = (torch.randn(n, n, generator=gen).to(dt) for _ in range(2))
            a @ b
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                a @ b
                ts.append(time.perf_counter() - t0)
            rates.append(2 * n**3 / statistics.median(ts) / 1e9)
        print(f"| {n}² | {rates[0]:.1f} | {rates[1]:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 matrix units: "
          f"{cpu_has_bf16_matmul()}\n")
    if not args.skip_accuracy:
        accuracy([(768, 3072), (768, 2304), (2304, 768), (768, 1536), (768, 768)], gen)
        print()
    if not args.skip_timing:
        timing(args.repeats, args.warmup, gen)
        print()
        matmul_rates(gen)


if __name__ == "__main__":
    main()
