"""SOAP: ShampoO with Adam in the Preconditioner's eigenbasis (Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener,
Janson, Kakade 2024, arXiv 2409.11321, "SOAP: Improving and Stabilizing Shampoo using Adam"). Adam run in the
eigenbasis of Shampoo's two preconditioners, the basis refreshed every `precondition_frequency` steps.

Reference: nikhilvyas/SOAP `soap.py` at main a1e553530 (2024-12-02, the merge of f42d296 "momentum change"; the
signature SOAP(params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False, normalize_grads=False,
data_format="channels_first", correct_bias=True)). That version keeps BOTH Adam moments in the rotated basis. The
Sept-2024 version bbce86e (the one epfml/llm-optimizer-benchmark copies as src/optim/soap.py) keeps exp_avg in the
parameter basis and projects it every step; the two are the same update in exact arithmetic (projection is linear),
so either one describes this file.

Update, per parameter W (a matrix m×n; the same along every dimension of other shapes, below), t counting the Adam
steps from 1, Q_L (m×m) and Q_R (n×n) the eigenbases (Q = I on a side that is not preconditioned):
  first step() of W: initialise only (no update, no weight decay; the gradient never meets its own projection):
    L ← (1−β_s)·G Gᵀ;  R ← (1−β_s)·Gᵀ G;  Q_L, Q_R ← eigh(L + 1e-30·I), eigh(R + 1e-30·I),
                                              eigenvectors in DESCENDING eigenvalue order (eigh's ascending, flipped)
  every later step:
    G' ← Q_Lᵀ G Q_R                                              the gradient in the eigenbasis
    M  ← β1·M + (1−β1)·G';   V ← β2·V + (1−β2)·G'⊙G'              Adam moments, both in the eigenbasis
    N  ← Q_L (M ⊘ (√V + eps)) Q_Rᵀ                                back to the parameter basis
    N  ← N / (1e-30 + √mean(N²))                                  only if normalize_grads
    W  ← W − lr·√(1−β2ᵗ)/(1−β1ᵗ) · N                              (factor lr alone if not correct_bias)
    W  ← W − lr·wd·W                                              decay AFTER the update, of the updated W
    L  ← β_s·L + (1−β_s)·G Gᵀ;   R ← β_s·R + (1−β_s)·Gᵀ G         with this step's (unprojected) G
    if t mod precondition_frequency == 0 (refresh; one power iteration + QR per side, with the updated L, R):
        M_W ← Q_L M Q_Rᵀ                                          M back to the parameter basis, old Q
        for (P, Q, axis) in ((L, Q_L, 0), (R, Q_R, 1)):
            λ ← diag(Qᵀ P Q);   σ ← argsort(λ, descending)        estimated eigenvalues in the old basis
            V ← V[σ along axis];   Q ← qr(P Q[:, σ]).Q            V re-sorted with the new column order
        M ← Q_Lᵀ M_W Q_R                                          M into the new basis
  β_s = shampoo_beta if shampoo_beta ≥ 0 else β2. eps is added to the UNcorrected √V (the bias corrections are in
  the step size), i.e. eps/√(1−β2ᵗ) on √V̂: the reference's (HuggingFace AdamW's) placement, kept.
Other shapes (as the reference with merge_dims=False): every dimension k of size d_k ≤ max_precond_dim gets its own
d_k×d_k preconditioner P_k = Σ over the other dims of G G (tensordot) and basis Q_k; a dimension larger than
max_precond_dim (e.g. the 50257-row embedding) is left in the parameter basis. 1-D parameters (biases, norm gains)
are preconditioned only with precondition_1d (P = g gᵀ); otherwise the update is plain Adam in the form above (the
first gradient is still only used to "initialise", i.e. dropped, as the reference does). Scalars: Adam.

Deviations from the reference (none changes the update in exact arithmetic):
  - Between refreshes the reference projects exp_avg back and forth with the same Q at the end of every step (4
    projections a step); here M is rotated only when Q changes: 2 projections a step, 4 on refresh steps.
  - λ = diag(Qᵀ P Q) is computed as colsum(Q ⊙ (P Q)), reusing the power-iteration product P Q (the reference
    multiplies Qᵀ·P·Q separately: 4k³ more FLOPs per side and refresh); argsort is stable (ties keep their order).
  - State (M, V, L, R, Q) is kept in the parameter's dtype for float32/float64 parameters (the reference keeps L, R
    in float32 always), and in float32 for 16-bit ones (then torch's load_state_dict casts it to the parameter's
    dtype: keep float32 master weights, as train.py does, for a bit-exact resume).
  - merge_dims and data_format (reshaping of conv kernels) are not offered; GPT has only 1-D and 2-D parameters.
  - Hyperparameters are read from the group at every step (the reference freezes precondition_frequency and
    shampoo_beta per parameter at its first step); which dimensions are preconditioned is fixed at the first step.
Checked against the reference code itself (float32, 25 steps, frequency 3, on 12×5, 5×12, 7×7, 9 and 3×4×5
parameters, with and without precondition_1d / normalize_grads / correct_bias, max_precond_dim 6): equal to float32
rounding (≤ 1e-6), except where a preconditioner is still rank-deficient at a refresh (a 1-D one with
precondition_1d in its first steps): the order of its ~0 estimated eigenvalues, hence the basis of that near-null
space, is decided by rounding there (in the reference too, which the second deviation above rounds differently).
Routing "none" (the reference applies SOAP to every parameter); build.py gives the 1-D ones weight_decay = 0.
Settings at GPT-2 124M: the paper trains 360m/660m models only; epfml/llm-optimizer-benchmark scripts/124m/soap.sh
uses lr 1e-3, betas (0.9, 0.999), weight_decay 0.1, shampoo_beta -1, precondition_frequency 10 (its defaults),
max_precond_dim 10000, cosine schedule, 2000 warm-up steps, grad_clip 0.5 (the README here: lr 3e-3, betas
(0.95, 0.95), weight_decay 0.01, precondition_frequency 10).

State, per parameter, all tensors (state_dict()/load_state_dict() resume bit-exactly): `step` (int64, CPU: the Adam
step count t, 0 after the initialising step), `exp_avg` M and `exp_avg_sq` V (parameter shape, eigenbasis),
`GG` (one d_k×d_k preconditioner per dimension, an empty tensor for a dimension not preconditioned) and `Q` (the
matching eigenbases). DDP: every rank holds the full state and, given the same averaged gradients, runs the same
deterministic eigh/QR on the same inputs, so the refreshes agree without a collective (nothing is split by rank).

FLOPs (`last_step_flops()`; decided from the step counters BEFORE the step). For a parameter with n elements and
preconditioned dimension sizes d_k, one projection (contracting each d_k with Q_k, = one tensordot each) costs
    P = Σ_k 2·d_k·n        (m×n matrix, both sides: 2·m·m·n + 2·m·n·n)
and so does one update of the P_k (G Gᵀ, Gᵀ G). "matmul" (exact, = what torch's FlopCounterMode counts):
    initialising step: P;   other steps: 3P (G in, N out, P_k update);   refresh steps: 5P + Σ_k 2·d_k³
                                                                (M out and back in, power iteration P_k Q_k)
"decomposition" (LAPACK, by convention; Golub & Van Loan, Matrix Computations 4th ed.: the symmetric QR algorithm
costs ≈ 9k³ with eigenvectors (≈ 4/3·k³ eigenvalues only), Householder QR of a k×k matrix 4/3·k³ (geqrf; forming Q
explicitly, orgqr, would be about as much again and is not counted)):
    initialising step: Σ_k 9·d_k³ (eigh);   refresh steps: Σ_k ⌊4·d_k³/3⌋ (qr);   other steps: 0
"elementwise" (estimate): 15 per element (the Adam part; not on the initialising step) + 3 per element of each P_k
(the lerp) + 2 per P_k element on refresh steps (λ) + 1 on the initialising step (+1e-30·I) + 3 per element if
normalize_grads.
"""

import torch

from .base import ADAMW_FLOPS_PER_ELEMENT, HybridOptimizer, check_adamw_args, check_number

EIGH_FLOPS_PER_CUBE = 9  # symmetric eigendecomposition with eigenvectors: ≈ 9k³ (Golub & Van Loan)


def qr_flops(k: int) -> int:
    """Householder QR of a k×k matrix: 4/3·k³ (Golub & Van Loan), floored."""
    return 4 * k**3 // 3


def check_int(name: str, x, lo: int) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not float(x).is_integer() or x < lo:
        raise ValueError(f"{name} = {x!r} is invalid; it must be an integer >= {lo}")


def check_bool(name: str, x) -> None:
    if not isinstance(x, bool):
        raise ValueError(f"{name} = {x!r} is invalid; it must be true or false")


def state_dtype(p: torch.Tensor) -> torch.dtype:
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


def preconditioned(shape, max_precond_dim: int, precondition_1d: bool) -> list[bool]:
    """Which dimensions get a preconditioner (the reference's rule, merge_dims=False)."""
    if len(shape) == 1 and not precondition_1d:
        return [False]
    return [d <= max_precond_dim for d in shape]


def project(x: torch.Tensor, qs: list[torch.Tensor]) -> torch.Tensor:
    """x in the eigenbasis: contract dimension k with Q_k (x ×_k Q_kᵀ); Q_Lᵀ X Q_R for a matrix."""
    for q in qs:
        x = torch.tensordot(x, q, dims=([0], [0])) if q.numel() else x.permute(*range(1, x.ndim), 0)
    return x


def project_back(x: torch.Tensor, qs: list[torch.Tensor]) -> torch.Tensor:
    """x back in the parameter basis: contract dimension k with Q_kᵀ (x ×_k Q_k); Q_L X Q_Rᵀ for a matrix."""
    for q in qs:
        x = torch.tensordot(x, q, dims=([0], [1])) if q.numel() else x.permute(*range(1, x.ndim), 0)
    return x


def update_preconditioners(gg: list[torch.Tensor], g: torch.Tensor, shampoo_beta: float) -> None:
    """P_k ← β_s·P_k + (1−β_s)·(G contracted with itself over every dimension but k)."""
    for k, p_k in enumerate(gg):
        if p_k.numel():
            others = [i for i in range(g.ndim) if i != k]
            p_k.lerp_(torch.tensordot(g, g, dims=(others, others)), 1.0 - shampoo_beta)


def eigenbases(gg: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eigenvectors of each P_k + 1e-30·I, columns in descending eigenvalue order (the first basis)."""
    out = []
    for p_k in gg:
        if not p_k.numel():
            out.append(p_k)
            continue
        eye = torch.eye(p_k.shape[0], dtype=p_k.dtype, device=p_k.device)
        try:
            q = torch.linalg.eigh(p_k + 1e-30 * eye).eigenvectors
        except RuntimeError:  # the reference's fallback: retry in float64 (torch.linalg.LinAlgError)
            q = torch.linalg.eigh(p_k.double() + 1e-30 * eye.double()).eigenvectors.to(p_k.dtype)
        out.append(torch.flip(q, [1]))
    return out


def refresh_eigenbases(gg: list[torch.Tensor], qs: list[torch.Tensor], v: torch.Tensor):
    """One power iteration and a QR per P_k, columns sorted by the eigenvalues estimated in the old basis, and V
    re-sorted along that dimension to match. Returns (new Q list, new V)."""
    new = []
    for k, (p_k, q) in enumerate(zip(gg, qs)):
        if not q.numel():
            new.append(q)
            continue
        pq = p_k @ q
        order = torch.argsort((q * pq).sum(0), descending=True, stable=True)  # diag(Qᵀ P Q)
        v = v.index_select(k, order)
        new.append(torch.linalg.qr(pq[:, order]).Q)
    return new, v


class SOAP(HybridOptimizer):
    """SOAP with nikhilvyas/SOAP's defaults (soap.py at a1e553530, the README's recommended call).

    Args:
        lr: learning rate (3e-3, the reference's default and README).
        betas: (β1, β2) of Adam's moments in the eigenbasis ((0.95, 0.95), reference default and README).
        shampoo_beta: EMA rate β_s of the preconditioners L, R; negative means β2 (-1, reference default).
        eps: added to the uncorrected √V (1e-8, reference default).
        weight_decay: decoupled decay W ← W − lr·wd·W after the update (0.01, reference default and README).
        precondition_frequency: refresh the eigenbases every this many Adam steps (10, reference default and README).
        max_precond_dim: dimensions larger than this get no preconditioner (10000, reference default: above the
            layer widths, below common vocabulary sizes).
        precondition_1d: precondition 1-D parameters too (P = g gᵀ) instead of plain Adam (False, reference default).
        normalize_grads: rescale each parameter's update N to RMS 1 (False, reference default; the reference notes it
            helps at precondition_frequency ~100 and hurts at ~10).
        correct_bias: Adam's bias corrections in the step size (True, reference default).
    """

    flops_per_element = ADAMW_FLOPS_PER_ELEMENT  # the Adam part; preconditioner work is counted in _count_flops
    matrices_only = False
    default_routing = "none"

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float = -1.0, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, precondition_1d: bool = False,
                 normalize_grads: bool = False, correct_bias: bool = True):
        check_adamw_args(lr, betas, eps, weight_decay)
        check_number("shampoo_beta", shampoo_beta, hi=1)  # < 1; negative: use β2
        check_int("precondition_frequency", precondition_frequency, 1)
        check_int("max_precond_dim", max_precond_dim, 0)
        check_bool("precondition_1d", precondition_1d)
        check_bool("normalize_grads", normalize_grads)
        check_bool("correct_bias", correct_bias)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), shampoo_beta=float(shampoo_beta), eps=eps,
                                      weight_decay=weight_decay, precondition_frequency=int(precondition_frequency),
                                      max_precond_dim=int(max_precond_dim), precondition_1d=precondition_1d,
                                      normalize_grads=normalize_grads, correct_bias=correct_bias))

    def _init_state(self, state: dict, p: torch.Tensor, g: torch.Tensor, group: dict, shampoo_beta: float) -> None:
        dtype = g.dtype
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["exp_avg"] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        on = preconditioned(p.shape, group["max_precond_dim"], group["precondition_1d"])
        state["GG"] = [torch.zeros((d, d) if o else (0,), dtype=dtype, device=p.device)
                       for d, o in zip(p.shape, on)]
        update_preconditioners(state["GG"], g, shampoo_beta)
        state["Q"] = eigenbases(state["GG"])

    def _step(self, groups):
        for group, params, grads in self._groups_with_grads(groups):
            beta1, beta2 = group["betas"]
            shampoo_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else beta2
            lr, wd = group["lr"], group["weight_decay"]
            for p, grad in zip(params, grads):
                state = self.state[p]
                g = grad.to(state_dtype(p))
                if "step" not in state:  # the first step only initialises the preconditioners and bases
                    self._init_state(state, p, g, group, shampoo_beta)
                    continue
                qs = state["Q"]
                g_rot = project(g, qs)
                state["step"] += 1
                t = int(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(g_rot, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).add_(g_rot.square(), alpha=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = lr
                if group["correct_bias"]:
                    step_size = lr * (1.0 - beta2**t) ** 0.5 / (1.0 - beta1**t)
                update = project_back(exp_avg / denom, qs)
                if group["normalize_grads"]:
                    update = update / (1e-30 + torch.mean(update**2) ** 0.5)
                p.add_(update.to(p.dtype), alpha=-step_size)
                if wd > 0:
                    p.add_(p, alpha=-lr * wd)

                refresh = t % group["precondition_frequency"] == 0
                if refresh:
                    exp_avg = project_back(exp_avg, qs)
                update_preconditioners(state["GG"], g, shampoo_beta)
                if refresh:
                    state["Q"], state["exp_avg_sq"] = refresh_eigenbases(state["GG"], qs, exp_avg_sq)
                    state["exp_avg"] = project(exp_avg, state["Q"]).contiguous()

    # ---------------------------------------------------------------------------------------------------------
    # FLOPs (module docstring)

    def _preconditioned_sizes(self, p: torch.Tensor, group: dict) -> list[int]:
        state = self.state.get(p)
        if state and "Q" in state:
            return [q.shape[0] for q in state["Q"] if q.numel()]
        on = preconditioned(p.shape, group["max_precond_dim"], group["precondition_1d"])
        return [d for d, o in zip(p.shape, on) if o]

    def _count_flops(self) -> dict:
        flops = super()._count_flops()
        flops["decomposition"] = 0
        for group in self.param_groups:
            if group["backup_adamw"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                sizes, n = self._preconditioned_sizes(p, group), p.numel()
                one_pass = sum(2 * d * n for d in sizes)  # one projection, or one update of the P_k
                gg_elements = sum(d * d for d in sizes)
                state = self.state.get(p)
                if not state or "step" not in state:  # initialising step: P_k update and eigh, no Adam
                    flops["matmul"] += one_pass
                    flops["decomposition"] += sum(EIGH_FLOPS_PER_CUBE * d**3 for d in sizes)
                    flops["elementwise"] += 4 * gg_elements - self.flops_per_element * n
                    continue
                flops["matmul"] += 3 * one_pass
                flops["elementwise"] += 3 * gg_elements + (3 * n if group["normalize_grads"] else 0)
                if (int(state["step"]) + 1) % group["precondition_frequency"] == 0:
                    flops["matmul"] += 2 * one_pass + sum(2 * d**3 for d in sizes)
                    flops["decomposition"] += sum(qr_flops(d) for d in sizes)
                    flops["elementwise"] += 2 * gg_elements
        return flops
