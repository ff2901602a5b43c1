"""NorMuon: Muon followed by a per-neuron (row-wise) second-moment normalisation (Li, Liu, Liang, Chen, Zhao 2025,
"NorMuon: Making Muon more efficient and scalable", arXiv 2510.05491; reference: microsoft/dion: dion/normuon.py).

Update, per matrix W of shape (rows, cols) (microsoft/dion `normuon_update_megabatch_async` and
`_normuon_normalization_core`):
    B ← μ·B + (1−μ)·g                          EMA momentum (buf.lerp_(g, 1−μ)), as Muon
    U ← (1−μ)·g + μ·B   if nesterov else B     Nesterov: g.lerp(B, μ)
    O ← NS_K(U)                                Newton–Schulz (newton_schulz.py), batched by shape, split across ranks
    v ← β2·v + (1−β2)·mean_j(O_ij²)            v: one entry per row ("neuron"), shape (rows, 1)
    Ô ← O / (√v + eps)                         each row divided by its root second moment
    Ô ← Ô · ‖O‖_F / max(‖Ô‖_F, eps)            rescaled to O's Frobenius norm (dion's clamp; 0 stays 0)
    W ← W·(1 − lr·wd)                          decoupled decay with the UNadjusted lr
    W ← W − lr·s·Ô                             s = scaling factor:
        "spectral_norm"    √(rows/cols)                (dion adjust_lr="spectral_norm", its default)
        "match_rms_adamw"  0.2·√max(rows, cols)        (dion adjust_lr="rms_norm"; Moonlight, arXiv 2502.16982)
        "original"         √max(1, rows/cols)          (the paper's code, zichongli5/NorMuon, and modded-nanogpt)
        "none"             1                           (dion adjust_lr=None)
The normalisation runs in the second-moment buffer's dtype (the parameter's), on the NS output cast to it (dion).
Tensors with more than two dimensions are orthogonalised and normalised as (size(0), −1) (newton_schulz.matrix_shape;
dion treats them as a batch of matrices over the leading dimensions unless flatten=True).

State: `momentum_buffer` (the parameter's shape) and `variance_neuron` (rows, 1), in the parameter's dtype, per
matrix, on every rank; under torch.distributed only the NS work is split across ranks and all-gathered (every rank
then normalises the same O), so state_dict() on any rank is complete. Embeddings, head, norms and biases go to the
backup AdamW (routing "hidden": dion's train.py gives NorMuon the matrices of transformer.h and AdamW wte, lm_head).

Defaults (the NorMuon class docstring says each one's source): lr 0.02, momentum 0.95, nesterov True, beta2 0.95,
eps 1e-8, weight_decay 0.01, scaling "spectral_norm" and the backup AdamW (lr = the NorMuon lr, betas (0.95, 0.98),
eps 1e-8, weight decay 0) are dion's GPT recipe (train.py, configs/normuon_160m.yaml); NS is 5 "kellerjordan" steps.

References read: microsoft/dion dion/normuon.py, muon.py, megabatch_base.py, polar_express.py, train.py @0a059a45;
zichongli5/NorMuon (the paper's code) normuon.py @e5aaaf42; KellerJordan/modded-nanogpt @f411b3d3:
records/track_1_short/2025-10-24_NorMuon, 2025-10-27_FixMuonLR and train_gpt.py `NorMuonAndAdam`.

Where the references differ (we follow microsoft/dion at 0a059a45, dion/normuon.py last changed in 5f5b9485):
  - momentum: dion keeps a sum M ← μM + g, U = μM + g (Nesterov) or M. With B = (1−μ)·M our U is exactly (1−μ)
    times dion's, and NS removes the scale, so the two agree up to NS's eps (1e-7 here, relative to ‖U‖_F).
  - axis: dion and the paper (Algorithm 1 and its code) normalise every matrix per ROW (mean over dim −1, v of shape
    (rows, 1)); we do too. modded-nanogpt (records/track_1_short/2025-10-24_NorMuon and train_gpt.py
    `_apply_normuon_variance_reduction`) normalises along the LONGER side: per row if rows ≥ cols, per column
    (v of shape (1, cols)) if the matrix is wide.
  - eps: dion adds 1e-8 to √v and clamps ‖Ô‖_F at 1e-8 (both hard-coded; its `epsilon` argument goes to NS); we use
    `eps` for both (1e-8 = dion). The paper's code adds 1e-10 to √v and to ‖Ô‖_F; modded-nanogpt multiplies by
    v.clamp_min(1e-10).rsqrt() (its 2025-10-24 record: 1/max(√v, 1e-10)) and clamps ‖Ô‖_F at 1e-10.
  - scale after normalisation: dion and the paper's code and modded-nanogpt all restore ‖O‖_F, then multiply by a
    shape factor: dion √(rows/cols) (default since April 2026; 0.2·√max before), the paper's code and modded-nanogpt
    √max(1, rows/cols). The paper's Algorithm 1 as quoted in third-party documentation (not checked against the
    PDF) writes η̂ = 0.2·η·√(rows·cols)/‖Ô‖_F (update RMS exactly 0.2), which equals dion's "rms_norm" when
    ‖O‖_F = √min(rows, cols), i.e. when O is exactly orthogonal.
  - Newton–Schulz: the dion class's default is its 5-step Polar Express set (safety 1.02), its train.py's (and the
    class's with use_polar_express=False) its own 5 tuned tuples (4.0848, −6.8946, 2.9270), …, with the 1e-8
    `epsilon` in X/(s·‖X‖_F + eps); neither set is in newton_schulz.py. We default to
    "kellerjordan", the quintic of the paper's code (KellerJordan/Muon), and offer "polar_express" (Amsel et al.'s
    list, safety 1.01: close to, not equal to, dion's and modded-nanogpt's).
  - weight decay: dion (and the paper's code) decay with lr·wd, as here; modded-nanogpt's current code uses cautious
    decay (only where update and weight agree in sign).
"""

import math

import torch

from .base import HybridOptimizer, check_choice, check_number
from .muon import momentum_step
from .muon import scale_factor as muon_scale_factor
from .newton_schulz import check_ns_args, matrix_shape

SCALINGS = ("spectral_norm", "match_rms_adamw", "original", "none")


def scale_factor(scaling: str, rows: int, cols: int) -> float:
    """Multiplier of the normalised NS output for a (rows, cols) matrix (see the module docstring)."""
    if scaling == "spectral_norm":
        return math.sqrt(rows / cols)
    if scaling == "none":
        return 1.0
    return muon_scale_factor(scaling, rows, cols)


def normalize_neurons(o: torch.Tensor, v: torch.Tensor, beta2: float, eps: float) -> torch.Tensor:
    """v ← β2·v + (1−β2)·mean(O², dim=−1); O / (√v + eps) rescaled to ‖O‖_F (clamp eps). Updates v in place."""
    o = o.to(v.dtype)
    norm = torch.linalg.vector_norm(o)
    v.lerp_(o.square().mean(dim=-1, keepdim=True), 1.0 - beta2)
    o = o / (v.sqrt() + eps)
    return o.mul_(norm / torch.linalg.vector_norm(o).clamp_min(eps))


class NorMuon(HybridOptimizer):
    """NorMuon with microsoft/dion's update rule and the settings of its GPT training recipe (dion train.py and
    configs/normuon_160m.yaml, a 768-wide, 12-layer GPT: lr 0.02, mu 0.95, muon_beta2 0.95, nesterov=True,
    weight_decay 0.01, adjust_lr "spectral_norm"). The dion class's own defaults differ in lr (0.01) and nesterov
    (False). Its backup AdamW there (wte, lm_head): the same lr, betas (0.95, 0.98), eps 1e-8, weight decay 0.

    Args:
        lr: learning rate (0.02; dion train.py / configs/normuon_160m.yaml, the paper's code; dion class 0.01).
        momentum: μ of the EMA momentum buffer (0.95; dion `mu`, the paper's code, modded-nanogpt).
        nesterov: orthogonalise the Nesterov mix (1−μ)·g + μ·B instead of B (True; dion train.py, the paper's code,
            modded-nanogpt; the dion class default is False).
        beta2: β2 of the per-row second moment (0.95; dion `muon_beta2`, the paper's code, modded-nanogpt's record).
        eps: added to √v, and the clamp of ‖Ô‖_F; must be > 0 (1e-8; dion's hard-coded constant).
        weight_decay: decoupled weight decay, with the unadjusted lr (0.01; dion class and train.py).
        ns_steps: Newton–Schulz iterations (5; every reference).
        ns_coefficients: "kellerjordan" (the paper's code) or "polar_express" ("kellerjordan"; see the module
            docstring for dion's own sets).
        ns_dtype: "auto" (bf16 on CUDA, as dion, and on CPUs with bf16 matrix units: newton_schulz.py), "bfloat16",
            "float32", "float64".
        ns_method: "auto" (Gram NS for float32 NS where it has fewer FLOPs: newton_schulz.py), "standard", "gram".
        scaling: "spectral_norm" (√(rows/cols)), "match_rms_adamw" (0.2·√max), "original" (√max(1, rows/cols)) or
            "none" ("spectral_norm"; dion adjust_lr's default).
    """

    # momentum lerp 3, Nesterov lerp 3, decay 1, scaled update 2 (as Muon's 8), plus the normalisation: square and
    # row mean 2, divide by √v + eps 1, the two Frobenius norms 2 + 2, the rescale 1 (per-row work and NS separate)
    flops_per_element = 16
    matrices_only = True
    uses_newton_schulz = True
    default_routing = "hidden"
    default_backup_adamw = dict(lr_ratio=1.0, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.0)

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, beta2: float = 0.95,
                 eps: float = 1e-8, weight_decay: float = 0.01, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto", ns_method: str = "auto",
                 scaling: str = "spectral_norm"):
        check_number("lr", lr, 0, lo_open=True)
        check_number("momentum", momentum, 0, 1)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov = {nesterov!r} is invalid; it must be true or false")
        check_number("beta2", beta2, 0, 1)
        check_number("eps", eps, 0, lo_open=True)
        check_number("weight_decay", weight_decay, 0)
        check_ns_args(ns_steps, ns_coefficients, ns_dtype, ns_method)
        check_choice("scaling", scaling, SCALINGS)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, beta2=beta2, eps=eps,
                                      weight_decay=weight_decay, ns_steps=int(ns_steps),
                                      ns_coefficients=ns_coefficients, ns_dtype=ns_dtype, ns_method=ns_method,
                                      scaling=scaling))

    def _variance(self, p: torch.Tensor) -> torch.Tensor:
        """The (rows, 1) second-moment buffer of p's matrix (zero on first use)."""
        state = self.state[p]
        if "variance_neuron" not in state:
            state["variance_neuron"] = torch.zeros((matrix_shape(p)[0], 1), dtype=p.dtype, device=p.device)
        return state["variance_neuron"]

    def _step(self, groups):
        ns_inputs, params = [], []
        for group, ps, grads, bufs in self._groups_with_grads(groups, "momentum_buffer"):
            updates = momentum_step(bufs, grads, group["momentum"], group["nesterov"])
            ns_inputs += [(group, u) for u in updates]
            params += ps
        outs = [normalize_neurons(o, self._variance(p), g["beta2"], g["eps"])
                for (g, _), p, o in zip(ns_inputs, params, self._orthogonalize(ns_inputs))]
        self._apply_matrix_updates([g for g, _ in ns_inputs], params, outs,
                                   lambda g, rows, cols: scale_factor(g["scaling"], rows, cols))
