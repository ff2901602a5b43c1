"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer: Better, Faster, Older", arXiv 2409.03137).

Adam plus a second, slow EMA of the gradient (β3, typically 0.999–0.9999) added to Adam's numerator with weight α.
Update, per parameter, t counting this parameter's steps from 1 (apple/ml-ademamix: pytorch/ademamix.py, copied
in epfml/llm-optimizer-benchmark: src/optim/ademamix.py, the same code reformatted):
    α(t)  = α·t/T_α if t < T_α else α                                   linear warm-up from 0 (T_α = alpha_warmup)
    β3(t) = f⁻¹((1 − t/T_β3)·f(β1) + (t/T_β3)·f(β3)) if t < T_β3 else β3  half-life-linear warm-up from β1
            f(β) = ln(0.5)/ln(β + 1e-8) − 1,  f⁻¹(h) = 0.5^(1/(h + 1))  (the reference's linear_hl_warmup_scheduler,
            eps = 1e-8 inside the log included; f is the half-life of an EMA with decay β, in steps, minus 1)
    m1 ← β1·m1 + (1−β1)·g ;   m2 ← β3(t)·m2 + (1−β3(t))·g ;   v ← β2·v + (1−β2)·g²
    u  = (m1/(1−β1ᵗ) + α(t)·m2) / (sqrt(v)/sqrt(1−β2ᵗ) + eps)            m2 is NOT bias-corrected
    p  ← p − lr·(u + wd·p)
No warm-up (alpha_warmup / beta3_warmup None or 0; the reference's None, and its formula gives the same for 0 or 1)
means α(t) = α and β3(t) = β3 from the first step.

Weight decay is the reference's form: wd·p is added to the normalised update and the sum is scaled by the current
(scheduled) lr, i.e. p ← p·(1 − lr·wd) − lr·u, AdamW's decoupled decay (not L2: wd·p never enters m1, m2 or v). With
α = 0 the method is therefore AdamW (tests/test_ademamix.py checks this against torch.optim.AdamW). Routing "none"
(the default) gives weight decay to ≥2-D parameters only, none to biases and norm gains (build.py, as nanoGPT).

`ademamix_update` runs the reference's operations in its order (`m.mul_(β).add_(g, alpha=1−β)`,
`v.mul_(β2).addcmul_(g, g, value=1−β2)`, `(sqrt(v)/sqrt(bc2)).add_(eps)`, `(m1.div(bc1) + α·m2)/denom`,
`u.add_(p, alpha=wd)`, `p.add_(−lr·u)`) as torch._foreach_* ops, one kernel per operation over the tensors of a group
that share a step count, so on the CPU it equals the reference bit for bit in fp32 (CUDA's multi-tensor kernels
may round differently; not checked on a GPU). The only departures: the wd
term is skipped when wd = 0 (the reference adds 0·p, which can only flip the sign of an exact zero), and a buffer
for m1 is kept when β1 = 0 (the reference then uses g itself and stores None; same values, one more buffer).

State per parameter: exp_avg_fast (m1), exp_avg_slow (m2), exp_avg_sq (v), 3 fp32 buffers (AdamW has 2), and
`step`, a Python int, as in the reference: the warm-ups and bias corrections read it, and state_dict() carries it,
so a resumed run continues the warm-ups exactly (resume.py re-applies the config's group
hyperparameters after loading, never per-parameter state).

Defaults: the reference class's, lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 2.0, no warm-ups, eps 1e-8, wd 0.
The reference README's usage example: lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 8.0, alpha_warmup = beta3_warmup
= the number of iterations (256000), wd 0.1. epfml/llm-optimizer-benchmark's 124M run (scripts/124m/ademamix.sh; a
Llama-style 124M model, 128000 iterations, cosine schedule with 2000 warm-up steps, grad clip 0.5): lr 1e-3, betas
(0.9, 0.999, 0.999), alpha 8.0, alpha_warmup = beta3_warmup = 128000, wd 0.1, eps the default 1e-8. Those warm-ups
span the whole run: in a recipe set them to train.max_steps.
"""

import math

import torch

from .base import HybridOptimizer, check_number

HL_EPS = 1e-8  # the reference's eps inside log(β + eps) of the half-life warm-up


def alpha_at(step: int, alpha: float, warmup: int | None) -> float:
    """α(t): the reference's linear_warmup_scheduler(step, alpha_end=alpha, alpha_start=0, warmup)."""
    if warmup is not None and step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * 0 + a * alpha  # the reference's (1−a)·alpha_start + a·alpha_end, alpha_start = 0
    return alpha


def beta3_at(step: int, beta1: float, beta3: float, warmup: int | None) -> float:
    """β3(t): the reference's linear_hl_warmup_scheduler(step, beta_end=beta3, beta_start=beta1, warmup), linear in
    the half-life f(β) = ln(0.5)/ln(β + 1e-8) − 1 from f(β1) to f(β3)."""
    if warmup is not None and step < warmup:
        a = step / float(warmup)
        half_life = (1.0 - a) * (math.log(0.5) / math.log(beta1 + HL_EPS) - 1) \
            + a * (math.log(0.5) / math.log(beta3 + HL_EPS) - 1)
        return math.pow(0.5, 1 / (half_life + 1))
    return beta3


def check_warmup(name: str, x) -> None:
    if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 0):
        raise ValueError(f"{name} = {x!r} is invalid; it must be an integer number of steps >= 0, or None (0 and None "
                         "mean no warm-up)")


class AdEMAMix(HybridOptimizer):
    """AdEMAMix with the reference code's defaults (apple/ml-ademamix: pytorch/ademamix.py).

    Args:
        lr: learning rate; it also scales the weight decay (reference 1e-3; epfml 124M 1e-3).
        betas: (β1, β2, β3): decays of the fast EMA m1, of the second moment v, and of the slow EMA m2
            (reference (0.9, 0.999, 0.9999); its README the same; epfml 124M (0.9, 0.999, 0.999)).
        alpha: α, the weight of the slow EMA m2 in the numerator (reference 2.0; README and epfml 124M 8.0).
        beta3_warmup: steps of the half-life-linear warm-up of β3 from β1; None or 0 = none (reference None;
            epfml 124M 128000 = its iterations).
        alpha_warmup: steps of the linear warm-up of α from 0; None or 0 = none (reference None; epfml 124M 128000).
        eps: added to sqrt(v)/sqrt(1−β2ᵗ) in the denominator (reference 1e-8; epfml leaves the default).
        weight_decay: wd, added to the update as wd·p and scaled by the current lr (reference 0; epfml 124M 0.1).
    """

    # m1, m2 EMAs (mul + fused multiply-add: 3 each), v (mul + g·g·c + add: 4), denominator (sqrt, divide, + eps: 3),
    # numerator and ratio (m1/bc1, α·m2, add, divide: 4), decay (wd·p + u: 2), step (−lr·u, add: 2) ≈ 21
    flops_per_element = 21

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, beta3_warmup: int | None = None, alpha_warmup: int | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        check_number("lr", lr, 0, lo_open=True)
        if not isinstance(betas, (list, tuple)) or len(betas) != 3 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas = {list(betas) if isinstance(betas, tuple) else betas!r} is invalid; it must be "
                             "three numbers (β1, β2, β3) in [0, 1), e.g. [0.9, 0.999, 0.9999]")
        check_number("alpha", alpha, 0)
        check_warmup("beta3_warmup", beta3_warmup)
        check_warmup("alpha_warmup", alpha_warmup)
        check_number("eps", eps, 0)
        check_number("weight_decay", weight_decay, 0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), alpha=alpha, beta3_warmup=beta3_warmup,
                                      alpha_warmup=alpha_warmup, eps=eps, weight_decay=weight_decay))

    def _step(self, groups):
        for group, params, grads, fast, slow, sq in self._groups_with_grads(
                groups, "exp_avg_fast", "exp_avg_slow", "exp_avg_sq"):
            # the counter is per parameter (the reference's state["step"]); a parameter that missed a step (no
            # gradient) runs behind, so the tensors are stepped in buckets of equal counts (normally one bucket)
            buckets: dict[int, list[int]] = {}
            for i, p in enumerate(params):
                state = self.state[p]
                state["step"] = int(state.get("step", 0)) + 1
                buckets.setdefault(state["step"], []).append(i)
            beta1, beta2, beta3 = group["betas"]
            for step, idx in buckets.items():
                ademamix_update(
                    [params[i] for i in idx], [grads[i] for i in idx], [fast[i] for i in idx],
                    [slow[i] for i in idx], [sq[i] for i in idx], step=step, lr=group["lr"], beta1=beta1,
                    beta2=beta2, beta3=beta3_at(step, beta1, beta3, group["beta3_warmup"]),
                    alpha=alpha_at(step, group["alpha"], group["alpha_warmup"]), eps=group["eps"],
                    weight_decay=group["weight_decay"])


def ademamix_update(params, grads, exp_avg_fast, exp_avg_slow, exp_avg_sq, *, step, lr, beta1, beta2, beta3, alpha,
                    eps, weight_decay):
    """One AdEMAMix step on lists of tensors sharing the step count `step` (already incremented), with the
    scheduled α(t), β3(t) given; the reference's operations in its order."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    torch._foreach_mul_(exp_avg_fast, beta1)
    torch._foreach_add_(exp_avg_fast, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_slow, beta3)
    torch._foreach_add_(exp_avg_slow, grads, alpha=1 - beta3)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
    update = torch._foreach_div(exp_avg_fast, bias_correction1)
    torch._foreach_add_(update, torch._foreach_mul(exp_avg_slow, alpha))  # m1/bc1 + α·m2 (two roundings, as ref)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, math.sqrt(bias_correction2))
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(update, denom)
    del denom
    if weight_decay != 0:
        torch._foreach_add_(update, params, alpha=weight_decay)
    torch._foreach_mul_(update, -lr)
    torch._foreach_add_(params, update)  # p + (−lr·u), not p − lr·u fused: the reference's rounding
