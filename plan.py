"""The run planner: what a config will cost before any GPU time is spent (`python train.py CONFIG --plan`).

    python train.py configs/gpt2_124m.toml --optimizer.name=lionmuon --plan --plan.gpu=h100 --plan.gpus=8

No data is read and nothing is allocated: the model is built on torch's meta device and the optimizer takes ten
steps there, so parameter counts, optimizer state bytes and optimizer FLOPs (Newton–Schulz counted exactly, as in
training) are the real ones. Activation memory is an estimate (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", eq. 2 without the attention-score term, since torch's SDPA kernels do not
keep the T×T matrix: 34·d bytes per token per layer in 16-bit, twice that in fp32), plus the logits, which at GPT-2's
50k vocabulary are often the larger part. For 124M at 16×1024 with AdamW the estimate is 17.0 GB against 18.9 GB
(17.6 GiB) measured eager on one H200 (benchmarks/RESULTS.md), 10 % under; torch.compile needed 12.3 GB there.
A config whose estimate does not fit the GPU is refused, naming the micro-batch that would fit.
"""

from dataclasses import dataclass

import torch

from errors import ConfigError
from flops import model_flops_per_token, n_params

# GPU memory in bytes and dense bf16 peak FLOP/s (NVIDIA datasheets; flops.PEAK_BF16_FLOPS for the MFU ones).
GPUS = {
    "a100": (80e9, 312e12),
    "a100-40gb": (40e9, 312e12),
    "h100": (80e9, 989e12),
    "h200": (141e9, 989e12),
    "h100-pcie": (80e9, 756e12),
}
# The MFU assumed when none is given: 124M trained at 44.3 % MFU with torch.compile on one H200
# (benchmarks/RESULTS.md); eager runs reach ~31 %.
DEFAULT_MFU = 0.40
OPTIMIZER_PLAN_STEPS = 10  # meta steps averaged for FLOPs/step (LionMuon's P-periodic NS, SOAP's refresh)


@dataclass
class PlanOptions:
    gpu: str = "h100"
    gpus: int = 8
    mfu: float = DEFAULT_MFU


def count(n: float) -> str:
    """205k, 1.05B: a token count for people."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def parse_plan_options(args: list[str]) -> PlanOptions:
    """--plan.gpu=h100 --plan.gpus=8 --plan.mfu=0.4 (each optional)."""
    opts = PlanOptions()
    for arg in args:
        key, _, value = arg.removeprefix("--plan.").partition("=")
        if key == "gpu":
            if value.lower() not in GPUS:
                raise ConfigError(f"--plan.gpu={value} is not a GPU the planner knows; use one of: {', '.join(GPUS)}")
            opts.gpu = value.lower()
        elif key in ("gpus", "mfu"):
            try:
                number = (int if key == "gpus" else float)(value)
            except ValueError:
                number = -1
            if not number > 0 or (key == "mfu" and number > 1):
                raise ConfigError(f"--plan.{key}={value} is not valid; give "
                                  f"{'a number of GPUs >= 1' if key == 'gpus' else 'a fraction in (0, 1], e.g. 0.4'}")
            setattr(opts, key, number)
        else:
            raise ConfigError(f"unknown planner option {arg!r}; use --plan.gpu=NAME, --plan.gpus=N, --plan.mfu=F")
    return opts


def optimizer_on_meta(cfg, mcfg):
    """(state bytes, mean FLOPs per step) of the configured optimizer on the model's real shapes, on the meta
    device (no memory is allocated)."""
    from model import GPT
    from optimizers import build_optimizer

    with torch.device("meta"):
        model = GPT(mcfg)
    optimizer = build_optimizer(model, cfg.optimizer.method, cfg.optimizer.settings)
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    flops = 0
    for _ in range(OPTIMIZER_PLAN_STEPS):
        optimizer.step()
        flops += sum(optimizer.last_step_flops().values())
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    return state, flops // OPTIMIZER_PLAN_STEPS


def activation_bytes(mcfg, micro_batch: int, bytes_per_value: int) -> int:
    """Estimated activation memory of one micro-batch (see the module docstring): 34·d per token per layer in
    16-bit (×2 in fp32) plus the logits: B·T·V values in the compute dtype, their fp32 copy and softmax for the
    loss, and their gradient in the compute dtype."""
    tokens = micro_batch * mcfg.block_size
    layers = 34 * mcfg.n_embd * mcfg.n_layer * tokens * bytes_per_value // 2
    logits = tokens * mcfg.vocab_size * (2 * bytes_per_value + 8)
    return layers + logits


def plan(cfg, mcfg, opts: PlanOptions, batch_layout) -> list[str]:
    """The planner's lines for a loaded config; raises ConfigError when the run cannot fit the GPU."""
    tc, counts = cfg.train, n_params(mcfg)
    gpu_memory, peak = GPUS[opts.gpu]
    tokens = tc.max_steps * tc.batch_tokens
    per_token = model_flops_per_token(mcfg)
    state, opt_flops = optimizer_on_meta(cfg, mcfg)
    total_flops = per_token * tokens + opt_flops * tc.max_steps
    micro_batch, accum = batch_layout(tc, mcfg.block_size, opts.gpus)
    value_bytes = 4 if tc.dtype == "float32" else 2
    weights = grads = 4 * counts["total"]  # fp32 master weights and gradients (bf16 is autocast only)
    fsdp = cfg.train.parallel == "fsdp" and opts.gpus > 1
    if fsdp:  # FSDP2 shards weights, gradients and optimizer state 1/N per rank (parallel.py; docs/fsdp.md)
        weights, grads, state = weights // opts.gpus, grads // opts.gpus, state // opts.gpus
    buckets = 4 * counts["total"] if opts.gpus > 1 and not fsdp else 0  # DDP's gradient buckets
    fixed = weights + grads + buckets + state
    acts = activation_bytes(mcfg, micro_batch, value_bytes)
    hours = total_flops / (opts.gpus * peak * opts.mfu) / 3600
    layouts = "; ".join(f"{n} GPU{'s' if n > 1 else ''}: {'{} × {}'.format(*batch_layout(tc, mcfg.block_size, n))}"
                        for n in sorted({1, 2, 4, 8, opts.gpus}) if (tc.batch_tokens // mcfg.block_size) % n == 0)
    lines = [
        f"model      {mcfg.arch}, {mcfg.n_layer} layers × {mcfg.n_head} heads × {mcfg.n_embd}, context "
        f"{mcfg.block_size}: {counts['total'] / 1e6:.1f}M parameters ({counts['non_embedding'] / 1e6:.1f}M "
        f"in the FLOPs formula's N, {counts['without_embeddings'] / 1e6:.1f}M without embeddings)",
        f"tokens     {tc.max_steps:,} steps × {tc.batch_tokens:,} = {count(tokens)} tokens = "
        f"{tokens / counts['total']:.3g} tokens per parameter ({tokens / counts['total'] / 20:.3g}× Chinchilla's 20)",
        f"FLOPs      model {per_token:.3e} per token, optimizer {cfg.optimizer.name} {opt_flops:.3e} per step; "
        f"{total_flops:.3e} in total ({opt_flops * tc.max_steps / total_flops:.2%} optimizer)",
        f"batch      micro_batch × accumulation per GPU count: {layouts}",
        f"memory     per GPU at {opts.gpus} GPU(s){' (fsdp: sharded 1/N)' if fsdp else ''}: "
        f"weights {weights / 1e9:.2f} GB + gradients {grads / 1e9:.2f}"
        + (f" + DDP buckets {buckets / 1e9:.2f}" if buckets else "") +
        f" + optimizer state {state / 1e9:.2f} + activations ~{acts / 1e9:.2f} (micro_batch {micro_batch}, "
        f"{'fp32' if value_bytes == 4 else 'bf16'}; estimate) = ~{(fixed + acts) / 1e9:.1f} GB of "
        f"{gpu_memory / 1e9:.0f} ({opts.gpu})",
        f"time       ~{f'{hours * 60:.0f} min' if hours < 1 else f'{hours:.1f} h'} on {opts.gpus}× {opts.gpu} "
        f"at {opts.mfu:.0%} MFU (bf16 peak {peak / 1e12:.0f} "
        f"TFLOP/s; measured: 44 % for 124M compiled on one H200)",
    ]
    if fixed + acts > gpu_memory:
        fits = [m for m in range(micro_batch, 0, -1)
                if (tc.batch_tokens // mcfg.block_size // opts.gpus) % m == 0
                and fixed + activation_bytes(mcfg, m, value_bytes) <= gpu_memory]
        knob = (f"set --train.micro_batch={fits[0]} (gradient accumulation keeps the batch)" if fits else
                "the weights, gradients and optimizer state alone do not fit: use a GPU with more memory"
                " or a smaller model")
        raise ConfigError(f"the run needs ~{(fixed + acts) / 1e9:.1f} GB per GPU, more than the {opts.gpu}'s "
                          f"{gpu_memory / 1e9:.0f} GB; {knob}")
    return lines
