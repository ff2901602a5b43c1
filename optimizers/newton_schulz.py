"""Newton–Schulz orthogonalisation, the one shared implementation used by muon, olion, lionmuon and signmuon.

`newton_schulz(G)` maps a matrix (or a stack of matrices) G = U Σ Vᵀ to approximately U Vᵀ by iterating an odd
quintic polynomial on the singular values:

    X ← G / (s·‖G‖_F + eps)                       (s = 1 for KellerJordan, 1.01 for Polar Express)
    repeat K times:  A = X Xᵀ;  B = b·A + c·A²;  X ← a·X + B·X

working on the wide orientation (tall inputs are transposed so that A is r×r with r = min(m, n)), as every
reference implementation does. Two coefficient sets are selectable:

- "kellerjordan": (a, b, c) = (3.4445, −4.7750, 2.0315) at every step, X / (‖X‖_F + 1e-7), exactly
  KellerJordan/Muon: muon.py `zeropower_via_newtonschulz5`. torch.optim.Muon uses the same coefficients but
  divides by max(‖X‖_F, eps) (a clamp, not a sum), so the two differ by about eps/‖X‖_F relatively
  (docs/optimizers.md §5.2). The scalar map has f(1) = 0.701 and the 5-step output's singular values land in about
  [0.68, 1.2] rather than at 1 (docs/optimizers.md §9.1).
- "polar_express": the per-step coefficients of Amsel et al. 2025 (arXiv 2505.16932, Algorithm 1, the list in
  NoahAmsel/PolarExpress: polar_express.py), each tuple except the last divided by (1.01, 1.01³, 1.01⁵) (the
  safety factor), normalisation by 1.01·‖X‖_F + 1e-7; after 8 steps the last tuple repeats (docs/optimizers.md
  §5.4).

Precision: "auto" runs NS in bfloat16 on CUDA (as every reference does; the iteration is stable in bf16) and on
CPUs with bf16 matrix units (AMX-BF16 or AVX512-BF16, `cpu_has_bf16_matmul`), and in the input's own dtype elsewhere
(fp32 on other CPUs, where bf16 matmuls are emulated and slow; a float64 input always keeps float64, as the reference
tests want). Measured on a 2-core Xeon with AMX (docs/optimizers.md §5.6, benchmarks/RESULTS.md): bf16 NS5 is ~1 %
from the float64 result (relative Frobenius error; fp32: 5e-5), with the same singular-value range [0.68, 1.14], and
runs 2.7× faster than fp32; that 1 % is far below NS's own distance from the exact polar factor (σ in [0.68, 1.2]).

Method: "standard" is the iteration above. "gram" (Gram Newton–Schulz; Dao-AILab/gram-newton-schulz,
tridao.me/blog/2026/gram-newton-schulz) runs the same polynomial on the r×r Gram matrix instead of on X: with
R = X Xᵀ each step is X ← (aI + Z)X, Z = bR + cR², so it keeps Q = Π(aI + Z_k) and R ← (aI + Z)R(aI + Z) and
multiplies X once at the end, X_K = Q X (gram_newton_schulz). In exact arithmetic the two are the same map; its
matmuls cost 4r²c + (8K − 6)r³ against K(4r²c + 2r³), fewer iff K > 1 and c > 1.5r (c = max(m, n)): 0.56× for a
768×3072 matrix at K = 5 (ns_matmul_flops). "gram" runs it on the shapes where it has fewer FLOPs and the standard
iteration on the others (resolve_method); "auto" is "gram" for float32 NS and "standard" otherwise, so bf16 NS
(CUDA, CPUs with bf16 units) and the float64 reference tests run exactly what the references run. Measured on a
2-core AVX2 CPU (docs/optimizers.md §5.7, benchmarks/ns_methods.py): fp32 gram is as far from the float64 result as
fp32 standard on Gaussian inputs (3e-5 to 1e-4 relative Frobenius error), 1.1–8× farther when the spectrum has
tiny singular values (at worst 1.7e-3 where standard has 1.6e-3; bf16 NS: 1e-2 and more), and takes 0.54–0.68×
the time on GPT-2's rectangular matrices. In 16-bit
dtypes gram restarts once at step 2 (X ← Q X, R ← X Xᵀ), as Dao-AILab's fp16 code does, because R's rounding
errors compound through Q.

`orthogonalize(mats)` is what the optimizers call: it groups the matrices by shape so that same-shape matrices run
as one batched NS (a batch of tall matrices is iterated through its transposed view: no transposed copy), and under
torch.distributed it splits those matrices across ranks (balanced by FLOPs), each rank orthogonalises its share and
the results are all-gathered, so every rank ends with every NS output. Inputs must be identical on all ranks (they
are: DDP-averaged gradients and full momentum state on every rank). An input may be a `Lerp` (Muon's Nesterov mix
(1−μ)·g + μ·B): it is computed straight into its slot of the batch, in the NS dtype, with no temporary of its own.
"""

import functools
import math
from typing import NamedTuple

import torch
import torch.distributed as dist

KELLERJORDAN = (3.4445, -4.7750, 2.0315)
# modded-nanogpt records/track_3_optimization/train_gpt_simple.py zeropower_via_newtonschulz5: the classic cubic
# Newton–Schulz (converges to the exact polar factor; the track runs 12 iterations)
TRACK3 = (2.0, -1.5, 0.5)

# Polar Express, arXiv 2505.16932 Algorithm 1 (before the safety factor). The last tuple repeats for steps > 8.
_POLAR_EXPRESS_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
_PE_SAFETY = 1.01
POLAR_EXPRESS = [(a / _PE_SAFETY, b / _PE_SAFETY**3, c / _PE_SAFETY**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]]
POLAR_EXPRESS.append(_POLAR_EXPRESS_RAW[-1])

NS_COEFFICIENTS = ("kellerjordan", "polar_express", "track3")
NS_DTYPES = ("auto", "bfloat16", "float32", "float64")
NS_METHODS = ("auto", "standard", "gram")
NS_EPS = 1e-7


def check_ns_args(ns_steps, ns_coefficients, ns_dtype, ns_method="auto") -> None:
    """The constructor check of every Newton–Schulz optimizer's ns_* arguments (ValueError names the argument)."""
    if isinstance(ns_steps, bool) or int(ns_steps) != ns_steps or not 1 <= ns_steps < 100:
        raise ValueError(f"ns_steps = {ns_steps!r} is invalid; it must be an integer in [1, 99]")
    if ns_coefficients not in NS_COEFFICIENTS:
        raise ValueError(f"ns_coefficients = {ns_coefficients!r} is invalid; use one of: {', '.join(NS_COEFFICIENTS)}")
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"ns_dtype = {ns_dtype!r} is invalid; use one of: {', '.join(NS_DTYPES)}")
    if ns_method not in NS_METHODS:
        raise ValueError(f"ns_method = {ns_method!r} is invalid; use one of: {', '.join(NS_METHODS)}")


def ns_settings(group: dict) -> tuple[int, str, str, str]:
    """(ns_steps, ns_coefficients, ns_dtype, ns_method) of a parameter group: the key optimizers batch NS work by.
    A group restored from a checkpoint written before ns_method existed gets the constructor's default, "auto"."""
    return group["ns_steps"], group["ns_coefficients"], group["ns_dtype"], group.get("ns_method", "auto")


def rms_match_scale(rows: int, cols: int) -> float:
    """0.2·√max(rows, cols): scales an orthogonalised rows×cols update to RMS ≈ 0.2, AdamW's typical update RMS
    (Moonlight, arXiv 2502.16982; the LionMuon code's Muon steps; Muon's scaling = "match_rms_adamw")."""
    return 0.2 * math.sqrt(max(rows, cols))


def matrix_shape(t: torch.Tensor) -> tuple[int, int]:
    """The (rows, cols) a parameter is orthogonalised as: (size(0), numel/size(0)). Tensors with more than two
    dimensions are flattened to (size(0), -1), as the LionMuon code and pytorch-optimizer do (KellerJordan/Muon
    instead batches 3-D over dim 0; docs/optimizers.md §1.5)."""
    rows = int(t.size(0))
    return rows, t.numel() // rows if rows else 0


class Lerp(NamedTuple):
    """An NS input given as torch.lerp(start, end, weight) = start + weight·(end − start), not yet computed:
    orthogonalize writes it straight into its slot of the NS batch (in the NS dtype), which saves a temporary the
    size of the input and one pass over it. The values are those of computing it first, bit for bit."""

    start: torch.Tensor
    end: torch.Tensor
    weight: float

    @property
    def shape(self) -> torch.Size:
        return self.end.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.end.dtype

    @property
    def device(self) -> torch.device:
        return self.end.device

    def size(self, dim: int) -> int:
        return self.end.size(dim)

    def materialize(self) -> torch.Tensor:
        return torch.lerp(self.start, self.end, self.weight)

    def write_into(self, out: torch.Tensor) -> None:
        torch.lerp(self.start, self.end, self.weight, out=out)


def materialize(t: "torch.Tensor | Lerp") -> torch.Tensor:
    """The tensor an NS input stands for."""
    return t.materialize() if isinstance(t, Lerp) else t


def matrix_view(t: "torch.Tensor | Lerp") -> "torch.Tensor | Lerp":
    """`t` seen as the matrix of matrix_shape(t) (a view: no copy)."""
    if isinstance(t, Lerp):
        return Lerp(matrix_view(t.start), matrix_view(t.end), t.weight)
    return t if t.ndim == 2 else t.reshape(t.size(0), -1)


# FLOPs. One multiply-add = 2 FLOPs, as in the model's 6·N·tokens. NS on an m×n matrix works on X of shape r×c,
# r = min(m, n), c = max(m, n). One iteration X ← aX + (bA + cA²)X with A = XXᵀ costs XXᵀ 2r²c, A·A 2r³, B·X 2r²c.
# This is the formula of the LionMuon authors' plot script (brain-lab-research/lion-muon:
# scripts/plotting/plot_results.py, `ns_steps·2·dmin²·(2·dmax + dmin)`); docs/optimizers.md §5.5.


def ns_matmul_flops(m: int, n: int, steps: int, method: str = "standard") -> int:
    """Exact matmul FLOPs of `steps` Newton–Schulz iterations on an m×n matrix: steps·(4r²c + 2r³) for the standard
    iteration, the algorithm's cost and the one the training-FLOPs axis counts (flops.py); 4r²c + (8·steps − 6)r³
    for method "gram" without restarts: R = XXᵀ and the final QX 2r²c each; per step Z = bR + cR² 2r³, Q·Z 2r³
    (none at the first step, where Q = aI + Z), R ← (aI+Z)R(aI+Z) 4r³ (none at the last step)."""
    r, c = min(m, n), max(m, n)
    if method == "gram":
        return 4 * r * r * c + (8 * steps - 6) * r ** 3
    return steps * (4 * r * r * c + 2 * r * r * r)


def ns_elementwise_flops(m: int, n: int, steps: int) -> int:
    """Estimated elementwise FLOPs of Newton–Schulz on an m×n matrix: 2mn (normalise) + steps·(2r² + 3rc)."""
    r, c = min(m, n), max(m, n)
    return 2 * m * n + steps * (2 * r * r + 3 * r * c)


def coefficient_schedule(coefficients: str, steps: int) -> tuple[list[tuple[float, float, float]], float]:
    """The (a, b, c) of each of `steps` iterations and the normalisation factor s of ‖X‖_F."""
    if coefficients == "kellerjordan":
        return [KELLERJORDAN] * steps, 1.0
    if coefficients == "polar_express":
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)], _PE_SAFETY
    if coefficients == "track3":
        return [TRACK3] * steps, 1.0
    raise ValueError(f"unknown Newton-Schulz coefficients {coefficients!r}; use one of {NS_COEFFICIENTS}")


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 tiles or AVX512-BF16 dot products) and torch
    can use them (oneDNN): /proc/cpuinfo's amx_bf16 / avx512_bf16 flags, else torch's own CPU feature checks."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
        if flags is not None:
            return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        pass
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def resolve_dtype(ns_dtype: str, like: "torch.Tensor | Lerp") -> torch.dtype:
    """The dtype NS runs in. 'auto': the fastest adequate one on like's device, i.e. bfloat16 on CUDA and on CPUs
    with bf16 matrix units (cpu_has_bf16_matmul; for fp32/fp16/bf16 inputs: a float64 input keeps float64, as the
    reference tests want), else the input's dtype (fp32 on other CPUs, where bf16 matmuls are emulated and slow).
    Otherwise the named dtype."""
    if ns_dtype != "auto":
        return getattr(torch, ns_dtype)
    if like.device.type == "cuda":
        return torch.bfloat16
    if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float16, torch.bfloat16) and \
            cpu_has_bf16_matmul():
        return torch.bfloat16
    return like.dtype


def resolve_method(ns_method: str, dtype: torch.dtype, m: int, n: int, steps: int) -> str:
    """The NS method that runs for an m×n matrix (or a batch of them) iterated in `dtype`. "gram" where it needs fewer
    matmul FLOPs (steps > 1 and max(m, n) > 1.5·min(m, n)), "standard" elsewhere: on square-ish matrices gram would
    do more work, and it is less accurate there (their smallest singular values, squared in R, drown in rounding;
    docs/optimizers.md §5.7). 'auto' is "gram" for float32 NS and "standard" for the other dtypes (bf16, which every
    reference iterates the standard way, and float64, the reference tests)."""
    if ns_method == "auto":
        ns_method = "gram" if dtype == torch.float32 else "standard"
    if ns_method == "gram" and ns_matmul_flops(m, n, steps, "gram") < ns_matmul_flops(m, n, steps):
        return "gram"
    return "standard"


def standard_newton_schulz(X: torch.Tensor, schedule) -> torch.Tensor:
    """The NS polynomial steps of `schedule` on a normalised wide X (a matrix or a 3-D batch), the standard way:
    A = X Xᵀ; B = b·A + c·A²; X ← a·X + B·X, in three buffers allocated once (A, B and the next X; the previous X
    is reused), as pytorch-optimizer's zero_power_via_newton_schulz_5 does: the same matmuls as fresh tensors, bit
    for bit."""
    mm, addmm = (torch.mm, torch.addmm) if X.ndim == 2 else (torch.bmm, torch.baddbmm)
    A = X.new_empty((*X.shape[:-1], X.size(-2)))
    B = torch.empty_like(A)
    Y = X.new_empty(X.shape)
    for a, b, c in schedule:
        mm(X, X.mT, out=A)  # A = X Xᵀ
        addmm(A, A, A, beta=b, alpha=c, out=B)  # B = b·A + c·A·A
        addmm(X, B, X, beta=a, out=Y)  # X ← a·X + B·X
        # the old X is the next output, unless it is a transposed view (of a tall input): outputs stay contiguous
        X, Y = Y, (X if X.is_contiguous() else torch.empty_like(Y))
    return X


def gram_newton_schulz(X: torch.Tensor, schedule, restart_at: tuple[int, ...] = ()) -> torch.Tensor:
    """The NS polynomial steps of `schedule` on a normalised wide X (r ≤ c; a matrix or a 3-D batch), computed on
    its Gram matrix (Dao-AILab/gram-newton-schulz `_gram_newton_schulz`): returns Q X with Q = Π_k (a_k I + Z_k),
    Z_k = b_k R_k + c_k R_k², R_0 = X Xᵀ, R_{k+1} = (a_k I + Z_k) R_k (a_k I + Z_k). At a step in restart_at,
    X ← Q X and R ← X Xᵀ are recomputed from X and Q restarts. Four r×r buffers, reused by every step."""
    mm, addmm = (torch.mm, torch.addmm) if X.ndim == 2 else (torch.bmm, torch.baddbmm)
    R = mm(X, X.mT)
    Z, Q, T = torch.empty_like(R), torch.empty_like(R), torch.empty_like(R)
    first, last = 0, len(schedule) - 1
    for i, (a, b, c) in enumerate(schedule):
        if i in restart_at and i > 0:
            X = mm(Q, X)
            mm(X, X.mT, out=R)
            first = i
        addmm(R, R, R, beta=b, alpha=c, out=Z)  # Z = b·R + c·R·R
        if i == first:
            Q.copy_(Z).diagonal(dim1=-2, dim2=-1).add_(a)  # Q = a·I + Z
        else:
            addmm(Q, Q, Z, beta=a, out=T)  # Q ← Q·(a·I + Z): every factor is a polynomial in R_0, so they commute
            Q, T = T, Q
        if i < last and i + 1 not in restart_at:
            addmm(R, R, Z, beta=a, out=T)  # T = R·(a·I + Z)
            addmm(T, Z, T, beta=a, out=R)  # R ← (a·I + Z)·T
    return mm(Q, X)


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients: str = "kellerjordan", eps: float = NS_EPS,
                  dtype: torch.dtype | None = None, overwrite: bool = False, method: str = "standard") -> torch.Tensor:
    """Orthogonalise G (…, m, n) by `steps` Newton–Schulz iterations; returns a new tensor in `dtype` (default G's).

    Leading dimensions are a batch: every matrix is normalised by its own Frobenius norm and iterated independently.
    overwrite=True lets it normalise G in place (G is the caller's scratch buffer, as in orthogonalize): one
    G-sized allocation and pass fewer, the same bits. method: "standard" (standard_newton_schulz), "gram"
    (gram_newton_schulz, restarting at step 2 in 16-bit dtypes) or "auto" (resolve_method).
    """
    assert G.ndim >= 2, "newton_schulz needs a matrix or a batch of matrices"
    schedule, scale = coefficient_schedule(coefficients, steps)
    copied = dtype is not None and dtype != G.dtype  # G.to(dtype) is then our own copy
    X = G.to(dtype) if copied else G
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide orientation: the Gram matrix X Xᵀ is then r×r, r = min(m, n)
        X = X.mT
    norm = X.norm(dim=(-2, -1), keepdim=True) * scale + eps  # ‖X‖₂ ≤ ‖X‖_F: singular values start in [0, 1]
    X = X.div_(norm) if overwrite or copied else X / norm
    if X.ndim > 3:
        X = X.reshape(-1, X.size(-2), X.size(-1))
    if resolve_method(method, X.dtype, X.size(-2), X.size(-1), steps) == "gram":
        X = gram_newton_schulz(X, schedule, restart_at=(2,) if X.element_size() == 2 else ())
    else:
        X = standard_newton_schulz(X, schedule)
    X = X.reshape(*G.shape[:-2], *X.shape[-2:]) if G.ndim > 3 else X
    return X.mT if transposed else X


# ---------------------------------------------------------------------------------------------------------------
# Batched, optionally distributed orthogonalisation of a list of matrices


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


_PLANS: dict = {}


def _plan(shapes: tuple, world_size: int) -> list[list[tuple[tuple[int, int], list[int]]]]:
    """Assign matrices to ranks, balanced by NS FLOPs, and group each rank's share by shape (m, n).

    Returns, per rank, a list of buckets (m, n) → indices into `shapes`. Greedy longest-processing-time: matrices
    sorted by FLOPs (ties by index, so every rank computes the same plan) go to the least loaded rank.
    """
    key = (shapes, world_size)
    if key in _PLANS:
        return _PLANS[key]
    load = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    order = sorted(range(len(shapes)), key=lambda i: (-ns_matmul_flops(*shapes[i], 1), i))
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        owned[r].append(i)
        load[r] += ns_matmul_flops(*shapes[i], 1)
    plan = []
    for idx in owned:
        buckets: dict[tuple[int, int], list[int]] = {}
        for i in sorted(idx):
            buckets.setdefault(shapes[i], []).append(i)
        plan.append(sorted(buckets.items()))
    _PLANS[key] = plan
    return plan


def _run_buckets(mats, buckets, steps, coefficients, dtype, eps, method):
    """NS of every bucket as one batch; yields (bucket shape (m, n), indices, output stack of shape (k, m, n)).

    The batch keeps the matrices' own orientation, so filling it is a plain (casting) copy, or the Lerp itself
    written into the slot; newton_schulz iterates a tall batch through its transposed view."""
    for (m, n), idx in buckets:
        X = torch.empty((len(idx), m, n), dtype=dtype, device=mats[idx[0]].device)
        for slot, i in zip(X.unbind(0), idx):
            if isinstance(mats[i], Lerp):
                mats[i].write_into(slot)
            else:
                slot.copy_(mats[i])
        yield (m, n), idx, newton_schulz(X, steps, coefficients, eps, overwrite=True, method=method)


def orthogonalize(mats: list["torch.Tensor | Lerp"], steps: int = 5, coefficients: str = "kellerjordan",
                  ns_dtype: str = "auto", eps: float = NS_EPS, distributed: bool | None = None,
                  ns_method: str = "auto") -> list[torch.Tensor]:
    """NS(M) for every 2-D M in `mats`, a tensor or a Lerp (returned in the NS dtype, same shapes; may be
    non-contiguous views). ns_method "auto" decides per same-shape batch (resolve_method).

    distributed=None splits the work across ranks when torch.distributed is initialised with world size > 1;
    False always computes everything locally. The split result equals the local one: the same matrices are
    batched with different partners, which changes nothing but the floating-point rounding of batched matmuls.
    """
    if not mats:
        return []
    dtype = resolve_dtype(ns_dtype, mats[0])
    world_size, rank = _world() if distributed in (None, True) else (1, 0)
    shapes = tuple((int(m.size(0)), int(m.size(1))) for m in mats)
    plan = _plan(shapes, world_size)
    out: list[torch.Tensor | None] = [None] * len(mats)
    if world_size == 1:
        for _, idx, Y in _run_buckets(mats, plan[0], steps, coefficients, dtype, eps, ns_method):
            for j, i in enumerate(idx):
                out[i] = Y[j]
        return out

    # Each rank orthogonalises its share into a flat buffer; one all_gather gives every rank every result.
    sizes = [sum(shapes[i][0] * shapes[i][1] for _, idx in p for i in idx) for p in plan]
    width = max(sizes)
    send = torch.zeros(width, dtype=dtype, device=mats[0].device)
    offset = 0
    for _, _idx, Y in _run_buckets(mats, plan[rank], steps, coefficients, dtype, eps, ns_method):
        send[offset:offset + Y.numel()].copy_(Y.reshape(-1))
        offset += Y.numel()
    recv = torch.empty((world_size, width), dtype=dtype, device=mats[0].device)
    dist.all_gather(list(recv.unbind(0)), send)
    for k in range(world_size):
        offset = 0
        for (m, n), idx in plan[k]:
            for i in idx:
                out[i] = recv[k, offset:offset + m * n].view(m, n)
                offset += m * n
    return out

