"""train.parallel = "fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`) for models whose weights, gradients and
optimizer state do not fit on every GPU, and the gathered, world-size-free checkpoints of a sharded run
(docs/fsdp.md).

- `shard_model`: fully_shard on every transformer block, then on the root (embeddings, final norm, the tied head);
  parameters are split by rows over the ranks (Shard(0) DTensors). On CUDA the blocks compute in bf16
  (MixedPrecisionPolicy: bf16 parameters in forward/backward, gradients reduced in fp32), while the sharded
  parameters (master weights) and the optimizer state stay fp32; on the CPU everything stays fp32.
  `activation_checkpointing` recomputes each block's activations in the backward pass (under DDP too).
- `shard_optimizer`: the optimizer steps the local shards (optimizers/sharded_ns.py: elementwise rules on shards,
  Newton–Schulz on one owner rank per matrix).
- `grad_sync`: gradient accumulation. DDP's no_sync(); FSDP2's set_requires_gradient_sync(False) on every
  micro-step but the last, so gradients are reduce-scattered once per step.
- `full_state_dicts` / `load_full_state`: a checkpoint holds the FULL model and optimizer state dicts, in exactly
  the format a DDP (or single-process) run writes, so a run saved under FSDP on N ranks resumes under DDP, on any
  world size, and the reverse. The model's is torch.distributed.checkpoint.state_dict's get_model_state_dict /
  set_model_state_dict (full_state_dict=True, cpu_offload=True: gathered one tensor at a time, kept on rank 0's
  CPU); the optimizer's, whose state is per local shard, is gathered and sliced here the same way.
- `shard_bytes`: this rank's parameter and optimizer-state bytes (sum of local numel × element size).
"""

import contextlib
import functools

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, init_device_mesh
from torch.utils.checkpoint import checkpoint

from errors import ConfigError
from optimizers.sharded_ns import ShardedOptimizer, shard_rows
from optimizers.sharded_ns import shard_optimizer as _shard_optimizer

PARALLEL_MODES = ("ddp", "fsdp")


def blocks(model) -> list[torch.nn.Module]:
    """The transformer blocks of a GPT (model.transformer.h), the units of sharding and of recomputation."""
    return list(model.transformer.h)


def checkpoint_activations(model) -> None:
    """Recompute each block's activations in backward instead of keeping them (torch.utils.checkpoint, non-reentrant):
    activation memory of one block instead of all, for about one more forward pass of compute."""
    for block in blocks(model):
        forward = block.forward
        block.forward = functools.wraps(forward)(
            lambda *args, _forward=forward, **kwargs: checkpoint(_forward, *args, use_reentrant=False, **kwargs))


def shard_model(model, device: torch.device, world_size: int) -> None:
    """fully_shard every block, then the root, over all ranks (a 1-D mesh), in place."""
    mesh = init_device_mesh(device.type, (world_size,))
    kwargs = dict(mesh=mesh)
    if device.type == "cuda":  # bf16 compute, fp32 reductions; the sharded master weights stay fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def shard_optimizer(optimizer):
    """optimizers/sharded_ns.shard_optimizer, with its refusal (SOAP) as one ConfigError line."""
    try:
        return _shard_optimizer(optimizer)
    except ValueError as e:
        raise ConfigError(f"train.parallel = 'fsdp': {e}") from None


def fsdp_root(model):
    """The FSDPModule under torch.compile's wrapper, or None."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, FSDPModule) else None


def is_sharded(model) -> bool:
    return fsdp_root(model) is not None


def grad_sync(model, sync: bool):
    """The context of one micro-step's forward (its backward follows outside): DDP syncs gradients only when
    `sync`; FSDP2 reads its flag during backward, so it is set here and stays until the next micro-step."""
    root = fsdp_root(model)
    if root is not None:
        root.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_finite(params) -> bool:
    """Whether every entry of every parameter is finite, on every rank (sharded parameters: each rank checks its
    shards, then one all_reduce)."""
    local = [p.detach().to_local() if isinstance(p, DTensor) else p.detach() for p in params]
    ok = torch.stack([t.isfinite().all() for t in local]).all() if local else torch.tensor(True)
    if any(isinstance(p, DTensor) for p in params):
        flag = ok.to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    return bool(ok)


# -------------------------------------------------------------------------------------------------------------
# checkpoints: full state dicts, the same as DDP's


def _row_offset(p: DTensor) -> tuple[int, int]:
    """(first row, rows) of this rank's shard of p."""
    split = shard_rows(p.size(0), p.device_mesh.size())
    rank = p.device_mesh.get_local_rank()
    return sum(split[:rank]), split[rank]


def _full_tensor(local: torch.Tensor, p: DTensor) -> torch.Tensor:
    """The whole tensor of a state buffer sharded like p's rows (an all-gather)."""
    shape = (p.size(0), *local.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, p.device_mesh, [Shard(0)], run_check=False, shape=shape,
                              stride=stride).full_tensor()


def full_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict), whole, on rank 0's CPU (empty dicts on the other ranks); every
    rank must call it. The format is model.state_dict() / optimizer.state_dict() of an unsharded run."""
    master = dist.get_rank() == 0
    model_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    local = optimizer.state_dict()  # per-shard state; the params are the indices of the unsharded optimizer
    index = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i in sorted(local["state"]):
        p = optimizer._dtensors[index[i]]
        entry = {}
        for key, value in local["state"][i].items():
            if torch.is_tensor(value) and value.ndim >= 1:
                if value.size(0) != _row_offset(p)[1]:
                    raise RuntimeError(f"optimizer state {key!r} of shape {tuple(value.shape)} is not sharded like "
                                       f"its parameter's rows")
                value = _full_tensor(value, p)
            entry[key] = value.cpu() if torch.is_tensor(value) else value
        if master:
            state[i] = entry
    return model_sd, (dict(state=state, param_groups=local["param_groups"]) if master else {})


def load_full_state(model, optimizer, model_sd: dict, optimizer_sd: dict) -> None:
    """Load whole state dicts (of any run, sharded or not, on any world size) into a sharded model and optimizer:
    each rank keeps its rows. Raises RuntimeError/ValueError/KeyError when they do not fit."""
    set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True))
    index = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, entry in optimizer_sd["state"].items():
        if not 0 <= int(i) < len(index):
            raise KeyError(f"optimizer state for parameter {i}, which this optimizer does not have")
        p = optimizer._dtensors[index[int(i)]]
        first, rows = _row_offset(p)
        state[i] = {k: (v[first:first + rows].clone() if torch.is_tensor(v) and v.ndim >= 1 else v)
                    for k, v in entry.items()}
    optimizer.load_state_dict(dict(state=state, param_groups=optimizer_sd["param_groups"]))


# -------------------------------------------------------------------------------------------------------------
# memory


def _nbytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def shard_bytes(model, optimizer) -> dict:
    """This rank's bytes of parameters and of optimizer state: the sum of its local tensors' numel × element size
    (the whole tensors under DDP, the shards under FSDP). Tied parameters count once."""
    params = sum(_nbytes(p) for p in {id(p): p for p in model.parameters()}.values())
    state = sum(_nbytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return dict(params=params, optimizer_state=state, total=params + state)


def planned_shard_bytes(model, optimizer, world_size: int, rank: int = 0) -> dict:
    """shard_bytes of `rank` under FSDP on `world_size` ranks, from an UNSHARDED model and optimizer (after a step,
    so that the state exists; the meta device will do): every parameter and ≥1-D state tensor split by rows as
    FSDP2 splits them (shard_rows), 0-d state whole. Rank 0 holds the largest shards."""
    def local(t):
        if t.ndim == 0:
            return t.element_size()
        return shard_rows(t.size(0), world_size)[rank] * (t.numel() // max(1, t.size(0))) * t.element_size()

    params = sum(local(p) for p in {id(p): p for p in model.parameters()}.values())
    state = sum(local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return dict(params=params, optimizer_state=state, total=params + state)


def memory_table(sizes=("gpt2-124m", "gpt2-1.5b", "llama-1b"), methods=("adamw", "muon", "lionmuon"),
                 world_sizes=(1, 2, 4, 8)) -> str:
    """The docs/fsdp.md table: parameters + optimizer state per rank (GiB), DDP (every rank the whole) against
    FSDP on N ranks, for the default recipe of each optimizer (its routing and backup AdamW). Built on the meta
    device: the shapes of one real step's state, no memory."""
    from model import GPT, model_config
    from optimizers import build_optimizer

    rows = ["| model | optimizer | params + state, DDP (any N) | " +
            " | ".join(f"FSDP N={n}" for n in world_sizes) + " |", "|---|---|---|" + "---|" * len(world_sizes)]
    gib = 2 ** 30
    for size in sizes:
        arch = "llama" if size.startswith("llama") else "gpt2"
        with torch.device("meta"):
            for method in methods:
                model = GPT(model_config(arch, size))
                opt = build_optimizer(model, method, {"ns_dtype": "float32"} if method != "adamw" else {})
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
                opt.step()
                full = planned_shard_bytes(model, opt, 1)
                per = [planned_shard_bytes(model, opt, n) for n in world_sizes]
                rows.append(f"| {size} ({model.param_counts()['total'] / 1e6:.0f}M) | {method} | "
                            f"{full['params'] / gib:.2f} + {full['optimizer_state'] / gib:.2f} = "
                            f"{full['total'] / gib:.2f} GiB | " +
                            " | ".join(f"{m['total'] / gib:.2f} ({full['total'] / m['total']:.2f}×)" for m in per)
                            + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(memory_table())


__all__ = ["PARALLEL_MODES", "ShardedOptimizer", "checkpoint_activations", "shard_model", "shard_optimizer",
           "grad_sync", "is_sharded", "all_finite", "full_state_dicts", "load_full_state", "shard_bytes",
           "planned_shard_bytes", "memory_table"]
