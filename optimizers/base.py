"""HybridOptimizer: what every optimizer in this package shares, so that each optimizer file holds only its math.

The param-group contract (train.py, checkpoints and build.py rely on it):
  - every group has `lr` (the current, scheduled value) and `base_lr` (its value at construction); train.py's
    schedule sets `group["lr"] = group["base_lr"] * factor(step)` for every group, so the ratios between groups
    (matrix lr, backup-AdamW lr, LionMuon's ηL/ηM) never change;
  - every group has `backup_adamw`: False for the optimizer's own update rule, True for the backup AdamW that takes
    what routing keeps away from it (embeddings, norms, biases; routing.py). A backup group carries its own lr,
    betas, eps and weight_decay and is stepped by torch's own fused AdamW kernel (on CUDA and on CPU; foreach on
    other devices), so it is exactly torch.optim.AdamW(fused=True):
        p ← p·(1 − lr·wd);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
        p ← p − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps).
    The LionMuon code's backup adds eps to the *uncorrected* sqrt(v), i.e. an effective eps of eps/sqrt(1−β2ᵗ) in
    the formula above: 31.6·eps at t = 1 and still 1.07·eps at t = 2000 for β2 = 0.999. We keep torch's placement;
    the difference lasts thousands of steps, but eps = 1e-8 is far below typical sqrt(v) (docs/optimizers.md §2).
Holding both kinds in ONE optimizer (like KellerJordan's MuonWithAuxAdam and nanochat) lets train.py schedule,
clip and checkpoint a single object.

What a subclass declares (class attributes; build.py and this class read them, nothing else needs editing):
  flops_per_element     estimated elementwise FLOPs per parameter element per step (docs/optimizers.md §0)
  matrices_only         True: every non-backup parameter must be ≥2-D (the Newton–Schulz methods)
  uses_newton_schulz    True: a step orthogonalises every matrix (override takes_ns_step for some steps only)
  default_routing       the routing rule of routing.py applied when the config sets none ("none" = no backup)
  default_backup_adamw  the backup AdamW's lr (or lr_ratio, a multiple of the optimizer's lr), betas, eps and
                        weight_decay when the config sets none
and implements `_step(groups)`: update the non-backup groups (their params with gradients). The constructor
validates its own arguments (ValueError naming the argument) and passes its hyperparameters as `defaults`.

FLOPs. `last_step_flops()` is computed from the parameter shapes and the kind of step, not inside the math:
elementwise = flops_per_element × elements stepped (15 per element for backup AdamW groups), plus, for the groups
that took a Newton–Schulz step, NS matmul FLOPs (exact for the standard iteration, the algorithm's cost as the
papers count it, also when ns_method runs the cheaper Gram iteration: docs/optimizers.md §5.5) and NS elementwise
FLOPs (estimated) per matrix. It is
computed by `_count_flops()` BEFORE the step (so it may read step counters); an optimizer with other matmul work
(e.g. SOAP's projections and eigenbasis refreshes) overrides it and adds its own, from shapes, to super()'s count.
"""

import math

import torch
from torch.optim.adam import adam as torch_adam  # torch's functional Adam(W): fused / foreach kernels

from .newton_schulz import (
    matrix_shape,
    matrix_view,
    ns_elementwise_flops,
    ns_matmul_flops,
    ns_settings,
    orthogonalize,
)

ADAMW_FLOPS_PER_ELEMENT = 15  # two lerps, square, bias corrections, sqrt, add eps, divide, decay, update


class HybridOptimizer(torch.optim.Optimizer):
    """One optimizer: its own update rule on the groups with backup_adamw=False, torch's AdamW on the others."""

    flops_per_element: int = 0
    matrices_only: bool = False
    uses_newton_schulz: bool = False
    default_routing: str = "none"
    # torch.optim.AdamW's defaults: what a backup AdamW gets when neither the optimizer nor the config says more.
    default_backup_adamw: dict = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def __init__(self, params, defaults):
        self._last_flops = {"matmul": 0, "elementwise": 0}
        self._temporaries: dict[tuple, torch.Tensor] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        param_group.setdefault("backup_adamw", False)
        if param_group["backup_adamw"]:  # backup AdamW groups must say their own hyperparameters
            missing = {"lr", "betas", "eps", "weight_decay"} - set(param_group)
            if missing:
                raise ValueError(f"backup AdamW group is missing {sorted(missing)}")
            check_adamw_args(param_group["lr"], param_group["betas"], param_group["eps"],
                             param_group["weight_decay"], prefix="adamw_")
        super().add_param_group(param_group)  # params may be (name, tensor) pairs: torch keeps the names
        group = self.param_groups[-1]
        if self.matrices_only and not group["backup_adamw"] and any(p.ndim < 2 for p in group["params"]):
            raise ValueError(f"{type(self).__name__} only updates matrices (≥2-D parameters); give the 1-D ones to "
                             "a backup_adamw=True group (a routing rule does)")
        group.setdefault("base_lr", group["lr"])

    def takes_ns_step(self, group: dict) -> bool:
        """Whether the next step() orthogonalises this (non-backup) group's matrices (for the FLOPs count)."""
        return self.uses_newton_schulz

    def last_step_flops(self) -> dict:
        """FLOPs of the last step(): {"matmul": NS matmul FLOPs (exact), "elementwise": estimate}."""
        return dict(self._last_flops)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        own = [g for g in self.param_groups if not g["backup_adamw"]]
        self._last_flops = self._count_flops()  # before the step: LionMuon's step kind depends on its counter
        for group in self.param_groups:
            if group["backup_adamw"]:
                adamw_group_step(self.state, group)
        if own:
            self._step(own)
        return loss

    def _step(self, groups: list[dict]) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------------------
    # bookkeeping the update rules share

    def _count_flops(self) -> dict:
        flops = {"matmul": 0, "elementwise": 0}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            per_element = ADAMW_FLOPS_PER_ELEMENT if group["backup_adamw"] else self.flops_per_element
            flops["elementwise"] += per_element * sum(p.numel() for p in params)
            if not group["backup_adamw"] and self.takes_ns_step(group):
                for p in params:
                    rows, cols = matrix_shape(p)
                    flops["matmul"] += ns_matmul_flops(rows, cols, group["ns_steps"])
                    flops["elementwise"] += ns_elementwise_flops(rows, cols, group["ns_steps"])
        return flops

    def full_matrix_shape(self, p: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of the whole matrix p is (p itself here; a local shard's matrix under FSDP: sharded_ns.py)."""
        return matrix_shape(p)

    def _groups_with_grads(self, groups: list[dict], *buffer_names: str):
        """For each group with gradients: (group, params, grads, *one list per named state buffer), the buffers
        zero-initialised on first use, like the params. Lists of tensors, for torch._foreach_* ops."""
        for group in groups:
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
            if params:
                yield (group, params, grads, *bufs)

    def _scratch(self, like: torch.Tensor, k: int = 0) -> torch.Tensor:
        """A temporary of `like`'s shape, dtype and device, reused from step to step (the k-th of its kind; not
        optimizer state: no checkpoint holds it). Its contents are whatever the last user left. A non-contiguous
        `like` gets a new tensor of its own layout (torch.empty_like), so that reductions over the temporary run in
        the order they would over a result computed from `like`."""
        if not like.is_contiguous():
            return torch.empty_like(like)
        key = (k, like.dtype, like.device)
        buf = self._temporaries.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._temporaries[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf[:like.numel()].view(like.shape)

    def _orthogonalize(self, ns_inputs: list[tuple[dict, torch.Tensor]]) -> list[torch.Tensor]:
        """NS of each (group, tensor) in `ns_inputs` as a matrix (matrix_view), with that group's ns_steps,
        ns_coefficients, ns_dtype and ns_method: batched by shape and split across ranks
        (newton_schulz.orthogonalize)."""
        outs: list[torch.Tensor | None] = [None] * len(ns_inputs)
        by_settings: dict[tuple, list[int]] = {}
        for i, (group, _) in enumerate(ns_inputs):
            by_settings.setdefault(ns_settings(group), []).append(i)
        for (steps, coefficients, ns_dtype, ns_method), idx in by_settings.items():
            results = orthogonalize([matrix_view(ns_inputs[i][1]) for i in idx], steps, coefficients, ns_dtype,
                                    ns_method=ns_method)
            for i, o in zip(idx, results):
                outs[i] = o
        return outs

    def _apply_matrix_updates(self, groups: list[dict], params: list[torch.Tensor], updates: list[torch.Tensor],
                              scale) -> None:
        """p ← p·(1 − lr·wd) − lr·s·O for each group, p, O (an NS output of p's matrix shape), with
        s = scale(group, rows, cols) of p's whole matrix; one foreach call per (group, s)."""
        buckets: dict[tuple[int, float], tuple[dict, list, list]] = {}
        for group, p, o in zip(groups, params, updates):
            s = scale(group, *self.full_matrix_shape(p))
            entry = buckets.setdefault((id(group), s), (group, [], []))
            entry[1].append(p)
            entry[2].append(o.reshape(p.shape))
        for (_, s), (group, ps, os) in buckets.items():
            lr, wd = group["lr"], group["weight_decay"]
            if wd != 0:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_add_(ps, os, alpha=-lr * s)


# -------------------------------------------------------------------------------------------------------------
# one pass over memory on CPU

# Elements per batch of in_chunks() on CPU: slices of p, g, m and one temporary of 2^20 fp32 entries are 16 MiB, so
# the passes of an elementwise update after the first read the slice from cache, not main memory. Smaller batches
# cache as well but mean more kernel calls, each a parallel region (which costs most on an oversubscribed CPU);
# at 124M this is ~160 slices per step (benchmarks/RESULTS.md, issue 17).
CPU_CHUNK = 1 << 20


def in_chunks(*lists, chunk: int | None = None):
    """Split aligned lists of tensors (params, grads, buffers: same shapes) into batches for an elementwise update.

    Yields tuples of lists, one list per input. On CPU every batch holds at most `chunk` elements per list: a tensor
    larger than that is cut into contiguous slices (views), smaller ones are grouped, so a foreach update applied
    batch by batch makes one pass over main memory. Elementwise kernels give every entry the same result whichever
    slice it is in, so the update is bit for bit the one on whole tensors. Elsewhere (CUDA) one batch = the lists;
    empty lists, no batch."""
    if not lists[0]:
        return
    if lists[0][0].device.type != "cpu":
        yield lists
        return
    chunk = chunk or CPU_CHUNK
    batch: list[list[torch.Tensor]] = [[] for _ in lists]
    size = 0
    for ts in zip(*lists):
        n = ts[0].numel()
        if n > chunk and all(t.is_contiguous() for t in ts):
            flat = [t.view(-1) for t in ts]
            for start in range(0, n, chunk):
                yield tuple([f[start:start + chunk]] for f in flat)
            continue
        if size and size + n > chunk:
            yield tuple(batch)
            batch, size = [[] for _ in lists], 0
        for b, t in zip(batch, ts):
            b.append(t)
        size += n
    if size:
        yield tuple(batch)


# -------------------------------------------------------------------------------------------------------------
# argument checks shared by the constructors (ValueError naming the argument; build.py adds "optimizer.")


def check_number(name: str, x, lo=None, hi=None, lo_open=False, hi_open=True) -> None:
    """x must be a real number in the interval given by lo/hi (open or closed ends)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise ValueError(f"{name} = {x!r} is not a number")
    if math.isinf(x):
        raise ValueError(f"{name} = {x} is not finite; give a finite number")
    if (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and (x >= hi if hi_open else x > hi)):
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise ValueError(f"{name} = {x} is out of range; it must be {' and '.join(filter(None, [lo_s, hi_s]))}")


def check_betas(name: str, betas) -> None:
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{name} = {list(betas) if isinstance(betas, tuple) else betas!r} is invalid; it must be two "
                         "numbers in [0, 1), e.g. [0.9, 0.99]")


def check_choice(name: str, x, options) -> None:
    if x not in options:
        raise ValueError(f"{name} = {x!r} is invalid; use one of: {', '.join(options)}")


def check_adamw_args(lr, betas, eps, weight_decay, prefix: str = "") -> None:
    check_number(f"{prefix}lr", lr, 0, lo_open=True)
    check_betas(f"{prefix}betas", betas)
    check_number(f"{prefix}eps", eps, 0)
    check_number(f"{prefix}weight_decay", weight_decay, 0)


# torch's fused AdamW kernel, by device type: the dtypes it takes (float64 is CPU-only here: the CUDA path keeps the
# dtypes it has always been used with)
FUSED_ADAMW_DTYPES = {
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def adamw_group_step(state: dict, group: dict) -> None:
    """One torch AdamW step on `group` (decoupled wd): torch's fused kernel on CUDA and CPU, foreach otherwise.

    On CPU the fused kernel makes one pass over memory where foreach makes about ten (benchmarks/RESULTS.md,
    issue 17); it rounds differently from the foreach kernels in the last bit of a few entries, so the step equals
    torch.optim.AdamW(fused=True) bit for bit (and foreach/for-loop AdamW to within an ulp per step)."""
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        params.append(p)
        grads.append(p.grad)
    if not params:
        return
    device = params[0].device
    fused = all(p.device == device and p.dtype in FUSED_ADAMW_DTYPES.get(device.type, ()) for p in params)
    for p in params:
        st = state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # fused kernels want the step counter on the parameter's device, foreach ones on the CPU; a checkpoint saved
        # on another kind of device (or loaded by torch's load_state_dict) may hold it elsewhere
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
