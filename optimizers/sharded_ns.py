"""The optimizers on FSDP2-sharded parameters: every rank steps its own row shard, and the Newton–Schulz methods
orthogonalise each whole matrix on exactly one rank (its owner).

`shard_optimizer(opt)` turns an optimizer built over the DTensor parameters of a `fully_shard`-ed model into one
that steps the local shards (parallel.py calls it; docs/fsdp.md):

- Every parameter is presented to the update rule as its local shard (a plain tensor sharing the shard's storage;
  FSDP2 shards every parameter by rows, Shard(0)), with the local shard of its gradient. Optimizer state is
  created from those, so it is sharded too: each rank holds 1/N of every buffer. The elementwise rules (AdamW and
  the backup AdamW, Lion, Signum, AdEMAMix, LionMuon's and SignMuon's sign steps, Leo's 1-D branch) run unchanged.
- Newton–Schulz (Muon, OLion, LionMuon, SignMuon, NorMuon): `sharded_orthogonalize` assigns each matrix to one
  owner rank, balanced by NS FLOPs (the plan of newton_schulz.orthogonalize under DDP); one all_to_all sends every
  rank's row shard of each matrix's NS input (the momentum-derived update, cast to the NS dtype) to its owner,
  the owner orthogonalises its whole matrices (batched by shape), and a second all_to_all sends each rank its rows
  of the result. Momentum stays sharded; a full matrix exists only on its owner, and only for the NS.
- Where the rule needs a whole-matrix or whole-column quantity, the shards reduce it with one all_reduce per step:
  the shape factors use the global (rows, cols); OLion's ‖sign(O)‖_F counts non-zeros over all shards; NorMuon's
  per-row second moment is local (rows are whole) but ‖O‖_F and ‖Ô‖_F are all-reduced; Leo's row norms are local,
  its column norms (a sum of squares per column) and its RMS (a sum of squares per matrix) are all-reduced.
- SOAP is refused: its Kronecker factors need the whole gradient of a matrix on every rank.

The results equal the unsharded optimizer's up to floating-point rounding (sums in a different order, NS batched
with different partners); tests/test_fsdp.py checks 2 and 4 ranks against 1 process.
"""

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .base import HybridOptimizer
from .leo import Leo
from .muon import momentum_step
from .newton_schulz import _plan, materialize, matrix_shape, ns_settings, orthogonalize, resolve_dtype
from .normuon import NorMuon
from .normuon import scale_factor as normuon_scale_factor
from .olion import OLion
from .soap import SOAP


def shard_rows(rows: int, world_size: int) -> list[int]:
    """The rows of each rank's shard of a rows-long dim 0 under FSDP2 (torch.chunk's split: ceil(rows/N) per rank,
    the last ranks fewer or none)."""
    chunk = -(-rows // world_size) if rows else 0
    return [max(0, min(chunk, rows - k * chunk)) for k in range(world_size)]


def _all_to_all(send: torch.Tensor, send_splits: list[int], recv_splits: list[int], group) -> torch.Tensor:
    """all_to_all_single of a flat buffer; bf16 travels as fp16 bit patterns (the collective only copies bytes, and
    gloo has no bf16)."""
    recv = send.new_empty(sum(recv_splits))
    raw = (lambda t: t.view(torch.float16)) if send.dtype == torch.bfloat16 else (lambda t: t)
    dist.all_to_all_single(raw(recv), raw(send), recv_splits, send_splits, group=group)
    return recv


def sharded_orthogonalize(shards: list[torch.Tensor], full_shapes: list[tuple[int, int]], steps: int,
                          coefficients: str, ns_dtype: str, group=None, ns_method: str = "auto") -> list[torch.Tensor]:
    """NS of whole matrices given as row shards: shards[i] is this rank's (rows_k, cols) rows of a full_shapes[i]
    matrix (FSDP2's split, shard_rows); returns this rank's rows of each NS output, in the NS dtype.

    Matrix i is orthogonalised on one owner (newton_schulz._plan: greedy, balanced by NS FLOPs, the same plan on
    every rank); two all_to_all_single calls move the shards to the owners and the results back."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if not shards:
        return []
    dtype = resolve_dtype(ns_dtype, shards[0])
    device = shards[0].device
    plan = _plan(tuple(full_shapes), world_size)
    owned = [[i for _, idx in buckets for i in idx] for buckets in plan]  # matrices of each rank, in plan order
    rows = [shard_rows(r, world_size) for r, _ in full_shapes]  # rows[i][k]: rank k's rows of matrix i
    cols = [c for _, c in full_shapes]
    for i, s in enumerate(shards):
        if tuple(s.shape) != (rows[i][rank], cols[i]):
            raise RuntimeError(f"matrix {i}: this rank's shard is {tuple(s.shape)}, but FSDP2's row split of "
                               f"{full_shapes[i]} over {world_size} ranks gives it ({rows[i][rank]}, {cols[i]})")
    # 1. every rank's shards to their owners
    send_splits = [sum(rows[i][rank] * cols[i] for i in owned[k]) for k in range(world_size)]
    recv_splits = [sum(rows[i][k] * cols[i] for i in owned[rank]) for k in range(world_size)]
    send = torch.empty(sum(send_splits), dtype=dtype, device=device)
    offset = 0
    for k in range(world_size):
        for i in owned[k]:
            n = rows[i][rank] * cols[i]
            send[offset:offset + n].view(rows[i][rank], cols[i]).copy_(shards[i])
            offset += n
    recv = _all_to_all(send, send_splits, recv_splits, group)
    # 2. the owner assembles its matrices (row blocks in rank order = the global row order) and orthogonalises them
    full = {i: torch.empty(full_shapes[i], dtype=dtype, device=device) for i in owned[rank]}
    offset = 0
    for k in range(world_size):
        for i in owned[rank]:
            start, n = sum(rows[i][:k]), rows[i][k]
            full[i][start:start + n].copy_(recv[offset:offset + n * cols[i]].view(n, cols[i]))
            offset += n * cols[i]
    mine = orthogonalize([full[i] for i in owned[rank]], steps, coefficients, str(dtype).removeprefix("torch."),
                         distributed=False, ns_method=ns_method)
    results = dict(zip(owned[rank], mine))
    del full
    # 3. each rank's rows of the results back from the owners
    send = torch.empty(sum(recv_splits), dtype=dtype, device=device)
    offset = 0
    for k in range(world_size):
        for i in owned[rank]:
            start, n = sum(rows[i][:k]), rows[i][k]
            send[offset:offset + n * cols[i]].view(n, cols[i]).copy_(results[i][start:start + n])
            offset += n * cols[i]
    del results
    recv = _all_to_all(send, recv_splits, send_splits, group)
    out: list[torch.Tensor | None] = [None] * len(shards)
    offset = 0
    for k in range(world_size):
        for i in owned[k]:
            n = rows[i][rank] * cols[i]
            out[i] = recv[offset:offset + n].view(rows[i][rank], cols[i])
            offset += n
    return out


def ns_bytes_per_step(full_shapes: list[tuple[int, int]], world_size: int, element_size: int) -> int:
    """Bytes all ranks together send in one sharded NS step (both all_to_alls; a rank's own rows stay local)."""
    plan = _plan(tuple(full_shapes), world_size)
    total = 0
    for owner, buckets in enumerate(plan):
        for _, idx in buckets:
            for i in idx:
                r, c = full_shapes[i]
                total += 2 * (r - shard_rows(r, world_size)[owner]) * c
    return total * element_size


class ShardedOptimizer:
    """Mixed into an optimizer class by shard_optimizer (the instance's class becomes Sharded<Name>)."""

    def _init_shards(self) -> None:
        self._dtensors: dict[torch.Tensor, torch.Tensor] = {}  # local stand-in -> its DTensor parameter
        with torch.no_grad():
            for group in self.param_groups:
                locals_ = []
                for p in group["params"]:
                    if not isinstance(p, DTensor):
                        raise ValueError("sharded optimizers need the DTensor parameters of a fully_shard-ed model")
                    if p.device_mesh.ndim != 1 or [type(pl).__name__ for pl in p.placements] != ["Shard"] \
                            or p.placements[0].dim != 0:
                        raise ValueError(f"sharded optimizers need parameters sharded by rows on a 1-D mesh "
                                         f"(FSDP2's fully_shard), not {p.placements} on {p.device_mesh}")
                    local = p.to_local().detach()
                    self._dtensors[local] = p
                    locals_.append(local)
                group["params"] = locals_
        self._group = next(iter(self._dtensors.values())).device_mesh.get_group()

    def full_matrix_shape(self, local: torch.Tensor) -> tuple[int, int]:
        """The (rows, cols) of the whole matrix a local shard belongs to."""
        return matrix_shape(self._dtensors[local])

    def _refresh(self) -> None:
        """Point each stand-in at its shard's current storage (a state-dict load may replace it) and give it the
        local shard of its gradient."""
        for local, p in self._dtensors.items():
            shard = p.to_local()
            if local.data_ptr() != shard.data_ptr() or local.shape != shard.shape:
                local.data = shard.detach()
            local.grad = None if p.grad is None else p.grad.to_local()

    @torch.no_grad()
    def step(self, closure=None):
        self._refresh()
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none)
        for p in self._dtensors.values():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _count_flops(self) -> dict:
        """FLOPs of the whole (unsharded) step, as the unsharded optimizer counts them: of every rank together."""
        saved = [g["params"] for g in self.param_groups]
        for g in self.param_groups:
            g["params"] = [self._dtensors[p] for p in g["params"]]
        try:
            return super()._count_flops()
        finally:
            for g, ps in zip(self.param_groups, saved):
                g["params"] = ps

    def _ns_params(self, ns_inputs) -> list[torch.Tensor]:
        """The stand-in parameter of each NS input: every optimizer here orthogonalises, per group, the updates of
        the group's parameters with gradients, in order (checked by shape)."""
        queues: dict[int, list[torch.Tensor]] = {}
        out = []
        for group, t in ns_inputs:
            q = queues.setdefault(id(group), [p for p in group["params"] if p.grad is not None])
            if not q or q[0].shape != t.shape:
                raise RuntimeError(f"{type(self).__name__}: an NS input of shape {tuple(t.shape)} does not follow "
                                   f"its group's parameters with gradients in order")
            out.append(q.pop(0))
        return out

    def _orthogonalize(self, ns_inputs):
        """NS of whole matrices from row shards (sharded_orthogonalize); returns this rank's rows of each output."""
        ns_inputs = [(group, materialize(t)) for group, t in ns_inputs]  # a Lerp is computed on the shard first
        params = self._ns_params(ns_inputs)
        outs: list[torch.Tensor | None] = [None] * len(ns_inputs)
        by_settings: dict[tuple, list[int]] = {}
        for i, (group, _) in enumerate(ns_inputs):
            by_settings.setdefault(ns_settings(group), []).append(i)
        for (steps, coefficients, ns_dtype, ns_method), idx in by_settings.items():
            shards = [ns_inputs[i][1].reshape(ns_inputs[i][1].size(0), -1) for i in idx]
            shapes = [self.full_matrix_shape(params[i]) for i in idx]
            for i, o in zip(idx, sharded_orthogonalize(shards, shapes, steps, coefficients, ns_dtype, self._group,
                                                          ns_method)):
                outs[i] = o
        return outs

    def _all_reduce(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum each tensor over the ranks, in one all_reduce (float64 for scalars: counts and squared norms)."""
        if not values:
            return []
        flat = torch.cat([v.reshape(-1) for v in values])
        dist.all_reduce(flat, group=self._group)
        return list(flat.split([v.numel() for v in values]))


class ShardedOLion(ShardedOptimizer):
    def _step(self, groups):  # olion.py's update with γ from the whole matrix: (rows, cols) and ‖S‖_F over shards
        ns_inputs, params = [], []
        for group, ps, grads, bufs in self._groups_with_grads(groups, "exp_avg"):
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
            updates = torch._foreach_lerp(grads, bufs, beta1) if group["nesterov"] else bufs
            ns_inputs += [(group, u) for u in updates]
            params += ps
        signs = [torch.sign(o) for o in self._orthogonalize(ns_inputs)]
        nonzeros = self._all_reduce([torch.count_nonzero(S).double().reshape(1) for S in signs])
        for (group, _), p, S, nnz in zip(ns_inputs, params, signs, nonzeros):
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            rows, cols = self.full_matrix_shape(p)
            gamma = 0.2 * math.sqrt(min(rows, cols) * max(rows, cols)) / (nnz[0].sqrt() + eps)
            if wd != 0:
                p.mul_(1.0 - lr * wd)
            p.addcmul_(S.reshape(p.shape), gamma.to(p.dtype), value=-lr)


class ShardedNorMuon(ShardedOptimizer):
    def _step(self, groups):  # normuon.py's update; the rows are whole, ‖O‖_F and ‖Ô‖_F are summed over shards
        ns_inputs, params = [], []
        for group, ps, grads, bufs in self._groups_with_grads(groups, "momentum_buffer"):
            ns_inputs += [(group, u) for u in momentum_step(bufs, grads, group["momentum"], group["nesterov"])]
            params += ps
        normalized, squares = [], []
        for (g, _), p, o in zip(ns_inputs, params, self._orthogonalize(ns_inputs)):
            v = self._variance(p)
            o = o.to(v.dtype)
            squares.append(o.double().square().sum().reshape(1))
            v.lerp_(o.square().mean(dim=-1, keepdim=True), 1.0 - g["beta2"])
            o = o / (v.sqrt() + g["eps"])
            squares.append(o.double().square().sum().reshape(1))
            normalized.append(o)
        sums = self._all_reduce(squares)
        for k, ((g, _), o) in enumerate(zip(ns_inputs, normalized)):
            norm, norm_hat = sums[2 * k][0].sqrt(), sums[2 * k + 1][0].sqrt()
            o.mul_((norm / norm_hat.clamp_min(g["eps"])).to(o.dtype))
        self._apply_matrix_updates([g for g, _ in ns_inputs], params, normalized,
                                   lambda g, rows, cols: normuon_scale_factor(g["scaling"], rows, cols))


class ShardedLeo(ShardedOptimizer):
    def _step(self, groups):  # leo.py's update; row norms are local, column norms and the RMS summed over shards
        for group, params, grads, exp_avgs in self._groups_with_grads(groups, "exp_avg"):
            lr, wd, eps, align = group["lr"], group["weight_decay"], group["eps"], group["align_const"]
            beta1, beta2 = group["betas"]
            directions = torch._foreach_lerp(grads, exp_avgs, beta1)  # from the OLD momentum
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)
            mats = [k for k, u in enumerate(directions) if u.ndim == 2]
            col_sq = self._all_reduce([directions[k].square().sum(dim=0) for k in mats])
            updates, squares = {}, []
            for k, sq in zip(mats, col_sq):
                u = directions[k]
                rows = torch.linalg.vector_norm(u, dim=1, keepdim=True)
                U = u / (rows + eps) + u / (sq.sqrt().unsqueeze(0) + eps)
                updates[k] = U
                squares.append(U.double().square().sum().reshape(1))
            sums = self._all_reduce(squares)
            for k, s in zip(mats, sums):
                rms = (s[0] / self._dtensors[params[k]].numel() + eps).sqrt()
                directions[k].copy_(updates[k].mul_((align / (rms + eps)).to(updates[k].dtype)))
            for u in directions:
                if u.ndim != 2:
                    u.sign_().mul_(align)
            if wd != 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, directions, alpha=-lr)


_SPECIAL = ((OLion, ShardedOLion), (NorMuon, ShardedNorMuon), (Leo, ShardedLeo))


def shard_optimizer(optimizer: HybridOptimizer) -> HybridOptimizer:
    """Make `optimizer` (built over DTensor parameters of a fully_shard-ed model) step the local shards, in place;
    returns it. SOAP raises ValueError."""
    cls = type(optimizer)
    if isinstance(optimizer, ShardedOptimizer):
        return optimizer
    if isinstance(optimizer, SOAP):
        raise ValueError("soap does not run on sharded parameters (its Shampoo factors need every matrix's whole "
                         "gradient on every rank); use train.parallel = 'ddp'")
    mixin = next((m for base, m in _SPECIAL if isinstance(optimizer, base)), ShardedOptimizer)
    optimizer.__class__ = type(f"Sharded{cls.__name__}", (mixin, cls), {})
    optimizer._init_shards()
    return optimizer
