"""What every optimizer in this package shares: param-group conventions, the backup AdamW, FLOPs reporting.

Param groups. Every group has `lr` (the current, scheduled value) and `base_lr` (its value at construction);
train.py's schedule sets `group["lr"] = group["base_lr"] * factor(step)` for every group, so the ratios between
groups (matrix lr, backup-AdamW lr, LionMuon's ηL/ηM) never change. Every group also has a `kind`:
  "main"   the optimizer's own rule (Lion, Muon, ...),
  "adamw"  the backup AdamW of the hybrid methods (embeddings, norms, biases; see routing.py), stepped with
           torch's own AdamW kernels (fused on CUDA, foreach elsewhere) so it is exactly torch.optim.AdamW:
           p ← p·(1 − lr·wd);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
           p ← p − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps).
           (The LionMuon code's backup adds eps to the *uncorrected* sqrt(v) instead; spec §2. We keep torch's
           placement, which differs from it only by the size of eps in the first steps.)
Holding both kinds in ONE optimizer (like KellerJordan's MuonWithAuxAdam) lets train.py schedule, clip and
checkpoint a single object.

FLOPs. `last_step_flops()` returns {"matmul": int, "elementwise": int} for the step just taken (see flops.py).
"""

import torch
from torch.optim.adam import adam as torch_adam  # torch's functional Adam(W): fused / foreach kernels

from .flops import ELEMENTWISE_PER_ELEMENT, ns_elementwise_flops, ns_matmul_flops, zero_flops
from .newton_schulz import orthogonalize


class NanoptimOptimizer(torch.optim.Optimizer):
    """Base class: adds `base_lr`/`kind` to every group, steps "adamw" groups, and records the step's FLOPs.

    Subclasses set `method` (the key of flops.ELEMENTWISE_PER_ELEMENT) and implement `_step_main(groups)`, which
    updates the "main" groups and returns that work's FLOPs dict.
    """

    method = ""

    def __init__(self, params, defaults):
        self._last_flops = zero_flops()
        # Split Newton–Schulz across ranks: None = whenever torch.distributed is initialised with >1 rank.
        self.distributed: bool | None = None
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        param_group.setdefault("kind", "main")
        if param_group["kind"] == "adamw":  # backup AdamW groups must say their own hyperparameters
            missing = {"lr", "betas", "eps", "weight_decay"} - set(param_group)
            if missing:
                raise ValueError(f"backup AdamW group is missing {sorted(missing)}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", group["lr"])

    def last_step_flops(self) -> dict:
        """FLOPs of the last step(): {"matmul": NS matmul FLOPs (exact), "elementwise": estimate}."""
        return dict(self._last_flops)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flops = zero_flops()
        main = [g for g in self.param_groups if g["kind"] == "main"]
        for group in self.param_groups:
            if group["kind"] == "adamw":
                n = adamw_group_step(self.state, group)
                flops["elementwise"] += ELEMENTWISE_PER_ELEMENT["adamw"] * n
        if main:
            f = self._step_main(main)
            flops["matmul"] += f["matmul"]
            flops["elementwise"] += f["elementwise"]
        self._last_flops = flops
        return loss

    def _step_main(self, groups: list[dict]) -> dict:
        raise NotImplementedError

    def _step_elementwise(self, groups: list[dict], update) -> dict:
        """The `_step_main` of the one-buffer elementwise methods (Lion, Signum, Leo): for each group with gradients,
        update(group, params, grads, exp_avgs) on lists of tensors; returns the step's (estimated) FLOPs."""
        n = 0
        for group in groups:
            params, grads, (exp_avgs,) = self._collect(group, ("exp_avg",))
            if params:
                update(group, params, grads, exp_avgs)
                n += sum(p.numel() for p in params)
        return {"matmul": 0, "elementwise": ELEMENTWISE_PER_ELEMENT[self.method] * n}

    def _apply_matrix_updates(self, work, params, outs, scale):
        """p ← p·(1 − lr·wd) − lr·s·O for each (group, _), p, O with s = scale(group, rows, cols); one foreach call
        per (group, s)."""
        buckets: dict[tuple[int, float], tuple[dict, list, list]] = {}
        for (group, _), p, o in zip(work, params, outs):
            s = scale(group, o.size(0), o.size(1))
            entry = buckets.setdefault((id(group), s), (group, [], []))
            entry[1].append(p)
            entry[2].append(o.reshape(p.shape))
        for (_, s), (group, ps, os) in buckets.items():
            lr, wd = group["lr"], group["weight_decay"]
            if wd != 0:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_add_(ps, os, alpha=-lr * s)

    def _orthogonalize(self, work: list[tuple[dict, torch.Tensor]]) -> tuple[list[torch.Tensor], dict]:
        """NS of each (group, matrix) in `work` with that group's ns_steps/ns_coefficients/ns_dtype, batched by
        shape and split across ranks (newton_schulz.orthogonalize). Returns the outputs (in order) and their FLOPs."""
        outs: list[torch.Tensor | None] = [None] * len(work)
        flops = zero_flops()
        settings: dict[tuple, list[int]] = {}
        for i, (group, _) in enumerate(work):
            settings.setdefault((group["ns_steps"], group["ns_coefficients"], group["ns_dtype"]), []).append(i)
        for (steps, coefficients, ns_dtype), idx in settings.items():
            mats = [work[i][1] for i in idx]
            outs_k = orthogonalize(mats, steps, coefficients, ns_dtype, distributed=self.distributed)
            for i, o in zip(idx, outs_k):
                outs[i] = o
            for m in mats:
                flops["matmul"] += ns_matmul_flops(m.size(0), m.size(1), steps)
                flops["elementwise"] += ns_elementwise_flops(m.size(0), m.size(1), steps)
        return outs, flops

    def _collect(self, group: dict, buffer_names: tuple[str, ...]):
        """Params of `group` that have a gradient, their grads, and one list per named fp32/param-dtype state buffer
        (zero-initialised on first use)."""
        params, grads = [], []
        bufs: list[list[torch.Tensor]] = [[] for _ in buffer_names]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            for k, name in enumerate(buffer_names):
                if name not in state:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs[k].append(state[name])
        return params, grads, bufs


def adamw_group_step(state: dict, group: dict) -> int:
    """One torch AdamW step on `group` (decoupled wd), fused on CUDA, foreach otherwise. Returns elements stepped."""
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        params.append(p)
        grads.append(p.grad)
    if not params:
        return 0
    fused = all(p.is_cuda and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    for p in params:
        st = state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # fused kernels want the step counter on the device, foreach ones on the CPU; a checkpoint saved on the
        # other kind of device (or loaded by torch's load_state_dict) may hold it elsewhere
        want = p.device if fused else torch.device("cpu")
        if st["step"].device != want or st["step"].dtype != torch.float32:
            st["step"] = st["step"].to(device=want, dtype=torch.float32)
        exp_avgs.append(st["exp_avg"])
        exp_avg_sqs.append(st["exp_avg_sq"])
        steps.append(st["step"])
    beta1, beta2 = group["betas"]
    torch_adam(
        params, grads, exp_avgs, exp_avg_sqs, [], steps,
        foreach=not fused, fused=fused, decoupled_weight_decay=True,
        amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=False,
    )
    return sum(p.numel() for p in params)


def matrix_view(t: torch.Tensor) -> torch.Tensor:
    """A ≥2-D tensor seen as the matrix (size(0), rest) that NS orthogonalises (conv filters flattened)."""
    return t if t.ndim == 2 else t.reshape(t.size(0), -1)
