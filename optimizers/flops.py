"""FLOPs done by an optimizer step: Newton–Schulz matmuls counted exactly, elementwise work estimated.

This module is the single source of the optimizer-side FLOP formulas. Every optimizer in this package reports
`last_step_flops() -> {"matmul": int, "elementwise": int}` built from these functions, and the top-level flops.py
(the loss-vs-FLOPs counters) adds them to the model FLOPs.

Conventions (one multiply-add = 2 FLOPs, as in the model's 6·N·tokens):
- Newton–Schulz on an m×n matrix works on X of shape r×c with r = min(m, n), c = max(m, n) (tall matrices are
  transposed first). One iteration X ← aX + (bA + cA²)X with A = XXᵀ costs
      XXᵀ: 2r²c,   A·A: 2r³,   B·X: 2r²c      →  4r²c + 2r³ = 2r²(2c + r)
  so K iterations cost K·(4r²c + 2r³). This is exactly the formula of the LionMuon authors' plot script
  (brain-lab-research/lion-muon: scripts/plotting/plot_results.py, `ns_steps·2·dmin²·(2·dmax + dmin)`).
- Elementwise costs are estimates (spec §0): a fixed number of FLOPs per parameter element per step, plus the
  elementwise part of NS (≈ 2r² + 3rc per iteration for the scalings and the additions, 2mn for the
  normalisation). They are small next to the matmuls and the model, and are reported separately so that a plot
  can include or exclude them.
- Counts are algorithmic and independent of the world size: under DDP each matrix is orthogonalised on exactly one
  rank and counted once; the (redundant, cheap) momentum updates on every rank are counted once too.
"""

# Estimated elementwise FLOPs per parameter element per step (spec §0, "[I]" estimates):
#   AdamW: two lerps, square, bias corrections, sqrt, add eps, divide, decay, update ≈ 15
#   Lion: decay, interpolation, sign, update, momentum lerp ≈ 11
#   Signum: decay, momentum lerp, sign, update ≈ 8
#   Muon: momentum lerp, Nesterov lerp, decay, scaled update ≈ 8 (NS counted separately)
#   OLion: as Muon plus sign, Frobenius norm and scaling ≈ 12
#   Leo: Lion's 11 plus row and column norms, two divisions, RMS and rescale ≈ 19
ELEMENTWISE_PER_ELEMENT = {
    "adamw": 15,
    "lion": 11,
    "signum": 8,
    "muon": 8,
    "olion": 12,
    "lionmuon": 11,
    "signmuon": 8,
    "leo": 19,
}


def ns_matmul_flops(m: int, n: int, steps: int) -> int:
    """Exact matmul FLOPs of `steps` Newton–Schulz iterations on an m×n matrix: steps·(4r²c + 2r³), r=min, c=max."""
    r, c = min(m, n), max(m, n)
    return steps * (4 * r * r * c + 2 * r * r * r)


def ns_elementwise_flops(m: int, n: int, steps: int) -> int:
    """Estimated elementwise FLOPs of Newton–Schulz on an m×n matrix: 2mn (normalise) + steps·(2r² + 3rc)."""
    r, c = min(m, n), max(m, n)
    return 2 * m * n + steps * (2 * r * r + 3 * r * c)


def matrix_shape(shape) -> tuple[int, int]:
    """The 2-D shape a parameter is orthogonalised as: (size(0), numel/size(0)), i.e. conv-style flattening."""
    rows = int(shape[0])
    cols = 1
    for s in shape[1:]:
        cols *= int(s)
    return rows, cols


def zero_flops() -> dict:
    return {"matmul": 0, "elementwise": 0}
