"""The GPT language model: GPT-2 (as in nanoGPT / llm.c) and a LLaMA-style variant, in one file.

arch="gpt2" (OpenAI GPT-2, following karpathy/nanoGPT model.py and karpathy/llm.c train_gpt2.py):
  learned absolute position embeddings (wpe), pre-norm LayerNorm, GELU (tanh approximation, as GPT-2 and llm.c)
  MLP with hidden 4d, causal self-attention through F.scaled_dot_product_attention, token embedding tied to the
  lm_head, optional biases (default off), dropout.
arch="llama" (the "llama" baseline of the LionMuon paper's code and of the EPFL llm-baselines repo):
  no wpe; rotary position embeddings (RoPE, base 10000) on q and k; RMSNorm (eps 1e-5, weight only);
  SwiGLU MLP with hidden = 8d/3 rounded up to a multiple of 256 (2048 at d=768); no biases; tied embeddings.

Both archs use the same parameter names, so optimizers/routing.py can route by name (see docs/INTERFACES.md):
  transformer.wte.weight                (V×d, also the lm_head: lm_head.weight is the same tensor)
  transformer.wpe.weight                (T×d, gpt2 only)
  transformer.h.{i}.ln_1.weight (.bias) transformer.h.{i}.attn.c_attn.weight (3d×d, fused q,k,v)
  transformer.h.{i}.attn.c_proj.weight  transformer.h.{i}.ln_2.weight (.bias)
  gpt2:  transformer.h.{i}.mlp.c_fc.weight (4d×d)     transformer.h.{i}.mlp.c_proj.weight (d×4d)
  llama: transformer.h.{i}.mlp.w_gate.weight, .w_up.weight (hidden×d)   transformer.h.{i}.mlp.c_proj.weight (d×hidden)
  transformer.ln_f.weight (.bias)
(.bias entries exist only for arch="gpt2" with bias=True.)

Initialization (GPT-2 paper §2.3 as implemented by nanoGPT/llm.c, used for both archs): every Linear and Embedding
weight ~ N(0, 0.02); the residual-stream output projections (every `c_proj`) ~ N(0, 0.02/sqrt(2·n_layer));
biases zero; norm weights one.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from errors import ConfigError

ARCHS = ("gpt2", "llama")  # the archs with the GPT-2 parameter names above
TRACK3_ARCH = "track3"  # modded-nanogpt Track 3's model (its own names: see the track3 section at the end)

# Named sizes. block_size is the default context; configs usually set [model] block_size to the training sequence
# length (the LionMuon paper trains at 512). "tiny" is a CPU smoke-test model: 4 layers, 4 heads, width 128,
# context 256: 7.3M parameters, 6.4M of them the 50304×128 token embedding, ~45 MFLOP per training token (39 of
# them the lm_head), i.e. ~2 s per 1,024-token step on a busy 2-core CPU (benchmarks/RESULTS.md). Width 128 keeps
# the vocabulary matmul, which dominates at this size, cheap.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # GPT-2 small
    "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # GPT-2 medium
    "gpt2-720m": dict(n_layer=12, n_head=16, n_embd=2048, block_size=1024),  # the LionMuon/EPFL "720M" (wide, shallow)
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # GPT-2 large
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # GPT-2 XL (train.parallel = "fsdp")
    # TinyLlama-1.1B's shape: with arch = "llama" (SwiGLU 5632 wide, RoPE) 1.2B parameters at vocab 50304
    "llama-1b": dict(n_layer=22, n_head=32, n_embd=2048, block_size=2048),
}


@dataclass
class GPTConfig:
    arch: str = "gpt2"  # "gpt2" or "llama"
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024  # maximum context length
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls (as nanoGPT)
    bias: bool = False  # biases in Linears and LayerNorms (gpt2 only; OpenAI's GPT-2 had them)
    dropout: float = 0.0

    def __post_init__(self):
        if self.arch not in ARCHS + (TRACK3_ARCH,):
            raise ConfigError(f"unknown model arch {self.arch!r}. Use one of {', '.join(ARCHS + (TRACK3_ARCH,))}")
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}. Fix [model] {key}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"model.n_embd={self.n_embd} is not divisible by n_head={self.n_head}. "
                              "Pick n_embd a multiple of n_head")
        if self.arch == "llama" and (self.n_embd // self.n_head) % 2 != 0:
            raise ConfigError(f"RoPE needs an even head size, got n_embd/n_head={self.n_embd // self.n_head}. "
                              "Change n_embd or n_head")
        if self.arch == "llama" and self.bias:
            raise ConfigError("arch='llama' has no biases. Set model.bias=false")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}. Fix [model] dropout")
        if self.arch == TRACK3_ARCH:
            check_track3_config(self)

    @property
    def mlp_hidden(self) -> int:
        """Width of the MLP hidden layer: 4d for gpt2; for llama 8d/3 rounded up to a multiple of 256."""
        if self.arch in ("gpt2", TRACK3_ARCH):
            return 4 * self.n_embd
        return 256 * math.ceil(8 * self.n_embd / 3 / 256)


def model_config(arch: str = "gpt2", size: str = "tiny", **overrides) -> GPTConfig:
    """GPTConfig for a named size; overrides replace single fields. Overrides equal to 0 or None are ignored
    (the config file uses 0 for "take it from size")."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {size!r}. Use one of {', '.join(MODEL_SIZES)}")
    fields = set(GPTConfig.__dataclass_fields__) - {"arch"}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown model field(s) {', '.join(sorted(unknown))}. Valid: {', '.join(sorted(fields))}")
    kwargs = dict(MODEL_SIZES[size])
    # `is False` / `is 0.0` must still be applied (bias=False, dropout=0.0), so skip only None and int 0
    kwargs.update({k: v for k, v in overrides.items()
                   if v is not None and not (type(v) is int and v == 0)})
    return GPTConfig(arch=arch, **kwargs)


# -----------------------------------------------------------------------------
# building blocks

def unwrapped_name(name: str) -> str:
    """A parameter or state-dict name without the wrappers' prefixes, `module.` (DDP) and `_orig_mod.`
    (torch.compile), in any order or number: the name the model itself gives (routing rules and checkpoints use it)."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's nn.LayerNorm cannot drop just the bias before torch 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) as in LLaMA: x / sqrt(mean(x²) + eps) · weight."""

    def __init__(self, ndim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        # F.rms_norm computes in fp32 for bf16/fp16 inputs (and the residual stream is fp32 anyway)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_cache(head_dim: int, max_len: int, base: float = 10000.0):
    """cos and sin tables of shape (max_len, head_dim/2) for RoPE (Su et al. 2021), frequencies base^(-2i/head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of x (B, T, n_heads, hs) by the angles of their position,
    as Meta's LLaMA reference (view_as_complex, written here in real arithmetic). cos, sin: (T, hs/2).
    Computed in fp32, returned in x's dtype."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, n_heads, hs/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.use_rope = config.arch == "llama"
        # q, k, v projections fused into one 3d×d matmul (GPT-2's c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if self.use_rope:
            cos, sin = rope_cache(config.n_embd // config.n_head, config.block_size)
            # non-persistent: derived from the config, so they stay out of checkpoints
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3 * self.n_head, C // self.n_head)  # q heads, then k heads, then v heads
        qk, v = qkv.split((2 * self.n_head, self.n_head), dim=2)
        if self.use_rope:
            qk = apply_rope(qk, self.rope_cos[:T], self.rope_sin[:T])  # q and k in one pass: fewer kernels
        q, k = qk.split(self.n_head, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        # flash attention when the backend has it; is_causal masks the future
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2: c_proj(gelu(c_fc(x))), hidden 4d."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class SwiGLU(nn.Module):
    """LLaMA MLP (Shazeer 2020): c_proj(silu(w_gate(x)) * w_up(x)), hidden = config.mlp_hidden."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.w_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.w_up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.silu(self.w_gate(x)) * self.w_up(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        llama = config.arch == "llama"
        self.ln_1 = RMSNorm(config.n_embd) if llama else LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = RMSNorm(config.n_embd) if llama else LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = SwiGLU(config) if llama else MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------
# the loss: cross-entropy over the lm_head, a chunk of rows at a time

# Rows of logits per chunk by device type: chunk × vocab_size fp32 values = 25.8 MB at 128 rows and GPT-2's 50304,
# below glibc's largest dynamic mmap threshold (32 MiB), so the chunks are reused from the heap rather than mapped
# and unmapped every step. 0 = no chunking: materialise the full logits (CUDA, until chunking is measured there:
# with 16k rows per micro-batch a 128-row loop would launch ~1,000 small kernels per step).
LOSS_CHUNK_ROWS = {"cpu": 128}


def loss_chunk_rows(device: torch.device, vocab_size: int) -> int:
    """Rows per chunk of chunked_cross_entropy on this device (0 = materialise the full logits instead)."""
    return LOSS_CHUNK_ROWS.get(device.type, 0)


def _chunk_softmax(x, weight, targets):
    """For one chunk of rows: (exp(logits − max), its row sums s, the per-row loss lse − logit[target]), with the
    (rows, V) fp32 buffer reused in place. Targets of −1 are read as 0 (the caller masks those rows)."""
    logits = (x @ weight.t()).float()
    target_logit = logits.gather(1, targets.clamp(min=0).unsqueeze(1))
    m = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(m).exp_()
    s = e.sum(dim=1, keepdim=True)
    return e, s, (m + s.log() - target_logit).squeeze(1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """mean over the rows with target != -1 of cross_entropy(x @ weight.T, target), chunk_rows rows at a time.

    The gradients are computed in the forward pass, chunk by chunk (softmax − one-hot, then the two matmuls), and
    kept for backward, which only scales them by the incoming gradient: the same matmul FLOPs as the unchunked loss,
    no recomputation, and at most one chunk's logits in memory at a time. Under autocast the matmuls run in the
    autocast dtype, as nn.Linear's would; the softmax is fp32."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int):
        amp = torch.is_autocast_enabled(x.device.type)
        valid = targets != -1
        n_valid = valid.sum()
        # every row ignored: loss 0/0 = nan and zero gradients, as F.cross_entropy(..., ignore_index=-1)
        row_weight = valid.float() / n_valid.clamp(min=1).float()  # d(mean loss)/d(row loss)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        loss_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            xc, tc, wc = x[rows], targets[rows], row_weight[rows].unsqueeze(1)
            e, s, row_loss = _chunk_softmax(xc, weight, tc)
            loss_sum += torch.where(valid[rows], row_loss, 0.0).sum()
            g = e.mul_(wc / s)  # softmax · row weight ...
            g.scatter_add_(1, tc.clamp(min=0).unsqueeze(1), -wc)  # ... − one-hot · row weight
            if amp:  # autocast casts the operands of these matmuls (out= and in-place forms are not autocast)
                grad_x[rows] = g @ weight
                grad_w += g.t() @ xc
            else:
                g = g.to(x.dtype)
                torch.mm(g, weight, out=grad_x[rows])
                grad_w.addmm_(g.t(), xc)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss_sum / n_valid.float()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None


def chunked_cross_entropy(x, weight, targets, chunk_rows: int = 128):
    """F.cross_entropy((x @ weight.T).float(), targets, ignore_index=-1) for x (N, d), weight (V, d), targets (N,)
    int64, without materialising the N×V logits or their gradient: chunk_rows rows at a time. Matches the unchunked
    loss and its gradients to fp32 rounding (tests/test_model.py). Without autograd (torch.no_grad, eval) only the
    loss is computed."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(x, weight, targets, chunk_rows)
    with torch.no_grad():
        valid = targets != -1
        loss_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            loss_sum += torch.where(valid[rows], _chunk_softmax(x[rows], weight, targets[rows])[2], 0.0).sum()
        return loss_sum / valid.sum().float()


# -----------------------------------------------------------------------------
# the model

class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        if config.arch == TRACK3_ARCH:
            build_track3(self, config)
            return
        llama = config.arch == "llama"
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if not llama:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd) if llama else LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017, as GPT-2): one V×d tensor is both the input embedding and the output
        # projection. Registered under transformer.wte first, so named_parameters() lists only that name.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by 1/sqrt(2·n_layer)
        # (two residual additions per layer), keeping the residual variance roughly constant with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def param_counts(self) -> dict:
        """Parameter counts (tied wte/lm_head counted once):
        total: every parameter.
        non_embedding: total − wpe, exactly nanoGPT's get_num_params(non_embedding=True). wte stays in because it
            is also the lm_head matmul; this is the N of the 6·N FLOPs estimate (flops.py).
        without_embeddings: total − wte − wpe (Kaplan et al. 2020's N: transformer blocks and final norm only).
        embeddings: wte + wpe (wpe is 0 for llama).
        """
        if self.config.arch == TRACK3_ARCH:
            return track3_param_counts(self)
        total = sum(p.numel() for p in self.parameters())
        wte = self.transformer.wte.weight.numel()
        wpe = self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
        return dict(total=total, non_embedding=total - wpe, without_embeddings=total - wte - wpe,
                    embeddings=wte + wpe)

    def forward(self, idx, targets=None, full_logits: bool = False):
        """idx, targets: (B, T) int64 token ids, T <= block_size. Returns (logits, loss).

        With targets: loss = mean cross-entropy over all positions, in fp32 (positions whose target is -1 are
        ignored, as nanoGPT), and logits None: the loss is computed by chunked_cross_entropy, a few rows of the
        B·T×vocab_size logits at a time, so the full logits and their gradient are never held in memory (at the tiny
        CPU size they would be 412 MB each per 2,048 tokens). full_logits=True instead materialises the logits,
        returns them (B, T, vocab_size) and computes the loss with F.cross_entropy over them (the reference path).
        Without targets: logits (B, 1, vocab_size) for the last position only (what generation needs), or for every
        position (B, T, vocab_size) with full_logits=True; loss None."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}. "
                              "Use shorter inputs or a larger model.block_size")
        if self.config.arch == TRACK3_ARCH:
            return track3_forward(self, idx, targets, full_logits)
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        if targets is None:
            # list index [-1] keeps the time dimension
            return self.lm_head(x if full_logits else x[:, [-1], :]), None
        chunk_rows = loss_chunk_rows(x.device, self.config.vocab_size)
        if full_logits or not chunk_rows:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return (logits if full_logits else None), loss
        return None, chunked_cross_entropy(x.view(-1, x.size(-1)), self.lm_head.weight, targets.view(-1), chunk_rows)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, valid_vocab: int | None = None):
        """Append max_new_tokens sampled tokens to idx (B, T) and return the (B, T + max_new_tokens) tensor.
        The context is cropped to the last block_size tokens. temperature 0 means greedy (argmax); top_k keeps the k
        most likely tokens; valid_vocab masks the padded ids >= valid_vocab (50257 for GPT-2) so they are never
        sampled. Sampling draws only from `generator`, so a seeded torch.Generator gives the same tokens every time.
        Call model.eval() first if dropout > 0."""
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}. Use 0 for greedy or e.g. 0.8")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1 or unset, got {top_k}. Use e.g. 200 or leave it unset")
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float()
            if valid_vocab is not None:
                logits[:, valid_vocab:] = -float("inf")
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# -----------------------------------------------------------------------------
# arch = "track3": the model of modded-nanogpt's optimization benchmark (Track 3), records/track_3_optimization/
# train_gpt_simple.py, module by module (docs/track3.md). The track's names → ours (routing.py and parallel.py read
# ours: the block matrices go to Muon under routing "hidden"; wte, lm_head and every 1-D parameter to the backup):
#   embed.weight                 transformer.wte.weight              N(0, 1)
#   norm1.gains                  transformer.ln_e.gains              RMSNorm after the embedding, gains 1
#   blocks.{i}.norm1.gains       transformer.h.{i}.ln_1.gains
#   blocks.{i}.attn.q/k/v        transformer.h.{i}.attn.c_q/c_k/c_v  (.weight, .bias) N(0, 0.33/fan_in), bias 0
#   blocks.{i}.attn.proj         transformer.h.{i}.attn.c_proj       zero
#   blocks.{i}.norm2.gains       transformer.h.{i}.ln_2.gains
#   blocks.{i}.mlp.fc / .proj    transformer.h.{i}.mlp.c_fc / c_proj N(0, 0.33/fan_in) / zero
#   norm2.gains                  transformer.ln_f.gains              RMSNorm before the head
#   proj.weight, proj.bias       lm_head.weight, lm_head.bias        untied head, zero (the track's "proj" rule)
# Every Linear has a bias (model.bias is ignored); no dropout; no position embedding (RoPE). Head size =
# n_embd / n_head (the track: 128, 6 heads at 768). Precision: the track stores the embedding in bfloat16, so its
# whole forward (residual stream included) runs in bf16 and every weight is cast to the activations' dtype
# (`type_as`). Here the weights stay fp32 (the master copy the optimizers update); under autocast (train.dtype =
# "auto" on a GPU) the embedding's output is cast to the autocast dtype, which gives the track's bf16 residual
# stream; without autocast (CPU, tests) everything runs in the parameters' dtype. RoPE and the logits are computed
# in fp32, or in the parameters' dtype where that is wider (float64 tests).

TRACK3_SOFTCAP = 15.0  # logits ← 15·z / sqrt(z² + 15²)
TRACK3_ATTN_SCALE = 0.12  # attention scale instead of 1/sqrt(head size)
TRACK3_INIT_STD2 = 0.33  # hidden matrices ~ N(0, 0.33 / fan_in)


def check_track3_config(cfg: GPTConfig) -> None:
    head = cfg.n_embd // cfg.n_head
    if head % 4 != 0:
        raise ConfigError(f"arch='track3' needs a head size (n_embd/n_head) divisible by 4 for its half-truncated "
                          f"RoPE, got {head}. The track uses n_embd=768, n_head=6 (head size 128)")
    if cfg.dropout:
        raise ConfigError("arch='track3' has no dropout. Set model.dropout=0")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32 if it is in a 16-bit float type (the track's `.float()`), else unchanged (fp32, float64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def track3_softcap(z: torch.Tensor) -> torch.Tensor:
    return TRACK3_SOFTCAP * z * (z.square() + TRACK3_SOFTCAP ** 2).rsqrt()


class Track3RMSNorm(nn.Module):
    """F.rms_norm (eps: the dtype's machine epsilon) with learned `gains`, cast to the input's dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.gains = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), weight=self.gains.type_as(x))


class Track3Linear(nn.Linear):
    """Linear with bias, weight and bias cast to the input's dtype."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=True)

    def forward(self, x):
        return F.linear(x, self.weight.type_as(x), self.bias.type_as(x))


class Track3Rotary(nn.Module):
    """Half-truncated RoPE: frequencies (1/1024)^linspace(0, 1, hs/4) for the first hs/4 channel pairs and 0 (no
    rotation) for the other hs/4; pairs are (x[j], x[j + hs/2]) (the halves of the head), as the track's Rotary."""

    def __init__(self, head_dim: int):
        super().__init__()
        freq = (1 / 1024) ** torch.linspace(0, 1, steps=head_dim // 4, dtype=torch.float32)
        # non-persistent: derived from the config, so it stays out of checkpoints
        self.register_buffer("angular_freq", torch.cat([freq, freq.new_zeros(head_dim // 4)]), persistent=False)

    def forward(self, x_BTHD):
        dtype = torch.promote_types(x_BTHD.dtype, torch.float32)
        pos = torch.arange(x_BTHD.size(1), dtype=dtype, device=x_BTHD.device)
        theta = torch.outer(pos, self.angular_freq.to(dtype))[None, :, None, :]
        cos, sin = theta.cos(), theta.sin()
        x1, x2 = x_BTHD.to(dtype).chunk(2, dim=-1)
        y1 = x1 * cos + x2 * sin
        y2 = x1 * (-sin) + x2 * cos
        return torch.cat((y1, y2), 3).type_as(x_BTHD)


class Track3Attention(nn.Module):
    """Separate q, k, v projections with bias, RMS-normed q and k (no gains), RoPE, causal attention with scale
    0.12, output projection with bias."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        d = config.n_embd
        self.c_q, self.c_k, self.c_v = Track3Linear(d, d), Track3Linear(d, d), Track3Linear(d, d)
        self.c_proj = Track3Linear(d, d)
        self.rotary = Track3Rotary(self.head_dim)

    def forward(self, x):
        B, T = x.size(0), x.size(1)
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           scale=TRACK3_ATTN_SCALE, is_causal=True).transpose(1, 2)
        return self.c_proj(y.contiguous().view(B, T, self.n_head * self.head_dim))


class Track3MLP(nn.Module):
    """c_proj(relu(c_fc(x))²), hidden 4d, biases."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Track3Linear(config.n_embd, config.mlp_hidden)
        self.c_proj = Track3Linear(config.mlp_hidden, config.n_embd)

    def forward(self, x):
        return self.c_proj(self.c_fc(x).relu().square())


class Track3Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = Track3RMSNorm(config.n_embd)
        self.attn = Track3Attention(config)
        self.ln_2 = Track3RMSNorm(config.n_embd)
        self.mlp = Track3MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def build_track3(model: nn.Module, config: GPTConfig) -> None:
    """Give `model` (a GPT being constructed) the track's modules and initialisation."""
    d, V = config.n_embd, config.vocab_size
    model.transformer = nn.ModuleDict(dict(
        wte=nn.Embedding(V, d), ln_e=Track3RMSNorm(d),
        h=nn.ModuleList([Track3Block(config) for _ in range(config.n_layer)]), ln_f=Track3RMSNorm(d)))
    model.lm_head = Track3Linear(d, V)
    with torch.no_grad():  # the track's init loop, on our names (the table above)
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                if "c_proj" in name or name.startswith("lm_head"):  # the track's "proj" in name: zero
                    p.zero_()
                elif "wte" in name:
                    p.normal_()
                else:
                    p.normal_(std=TRACK3_INIT_STD2 ** 0.5 / p.size(-1) ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("gains"):
                p.fill_(1.0)
            else:
                raise AssertionError(f"uninitialized parameter {name}")


def track3_param_counts(model: nn.Module) -> dict:
    """GPT.param_counts() for arch track3 (untied head): non_embedding = total − wte (the embedding is a lookup; the
    head is a matmul, so it stays in the 6·N of flops.py); without_embeddings also drops the head's weight."""
    total = sum(p.numel() for p in model.parameters())
    wte, head = model.transformer.wte.weight.numel(), model.lm_head.weight.numel()
    return dict(total=total, non_embedding=total - wte, without_embeddings=total - wte - head, embeddings=wte)


def track3_forward(model: nn.Module, idx, targets, full_logits: bool):
    """GPT.forward for arch track3: same contract (logits and mean fp32 cross-entropy over the soft-capped logits,
    targets of -1 ignored, chunked on CPU)."""
    tr = model.transformer
    x = tr.wte(idx)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # the track's bf16 embedding: a bf16 residual stream
        x = x.to(torch.get_autocast_dtype(device_type))
    x = tr.ln_e(x)
    for block in tr.h:
        x = block(x)
    x = tr.ln_f(x)
    if targets is None:
        return track3_softcap(_wide(model.lm_head(x if full_logits else x[:, [-1], :]))), None
    chunk_rows = loss_chunk_rows(x.device, model.config.vocab_size)
    if full_logits or not chunk_rows:
        logits = track3_softcap(_wide(model.lm_head(x)))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return (logits if full_logits else None), loss
    head = model.lm_head
    return None, softcap_chunked_cross_entropy(x.view(-1, x.size(-1)), head.weight, head.bias, targets.view(-1),
                                               chunk_rows)


def _softcap_chunk(x, weight, bias, targets):
    """For one chunk: (softmax of the capped logits unnormalised e, its row sums s, the per-row loss, dcap/dz)."""
    z = _wide(F.linear(x, weight.type_as(x), bias.type_as(x)))
    r = (z.square() + TRACK3_SOFTCAP ** 2).rsqrt()
    logits = TRACK3_SOFTCAP * z * r
    target_logit = logits.gather(1, targets.clamp(min=0).unsqueeze(1))
    m = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(m).exp_()
    s = e.sum(dim=1, keepdim=True)
    # d(15 z / sqrt(z² + 225))/dz = 15·225 / (z² + 225)^(3/2) = 15³ r³
    dcap = r.pow_(3).mul_(TRACK3_SOFTCAP ** 3)
    return e, s, (m + s.log() - target_logit).squeeze(1), dcap


class _SoftcapChunkedCrossEntropy(torch.autograd.Function):
    """_ChunkedCrossEntropy for the track's head: logits = softcap(x @ weight.T + bias); gradients computed chunk by
    chunk in the forward pass (d/dz = (softmax − one-hot)·row weight·dcap/dz), scaled in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk_rows: int):
        amp = torch.is_autocast_enabled(x.device.type)
        valid = targets != -1
        n_valid = valid.sum()
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 sums (float64 for float64 inputs)
        row_weight = valid.to(acc) / n_valid.clamp(min=1).to(acc)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=acc)
        grad_b = torch.zeros_like(bias, dtype=acc)
        loss_sum = torch.zeros((), dtype=acc, device=x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            xc, tc, wc = x[rows], targets[rows], row_weight[rows].unsqueeze(1)
            e, s, row_loss, dcap = _softcap_chunk(xc, weight, bias, tc)
            loss_sum += torch.where(valid[rows], row_loss, 0.0).sum()
            g = e.mul_(wc / s)
            g.scatter_add_(1, tc.clamp(min=0).unsqueeze(1), -wc.to(g.dtype))
            g.mul_(dcap)  # through the soft-cap: gradient w.r.t. z = x @ W.T + b
            grad_b += g.sum(0)
            if amp:
                grad_x[rows] = g @ weight
                grad_w += g.t() @ xc
            else:
                g = g.to(x.dtype)
                torch.mm(g, weight.to(x.dtype), out=grad_x[rows])
                grad_w.addmm_(g.t().to(grad_w.dtype), xc.to(grad_w.dtype))
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype), grad_b.to(bias.dtype))
        return loss_sum / n_valid.to(acc)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, grad_b * grad_loss, None, None


def softcap_chunked_cross_entropy(x, weight, bias, targets, chunk_rows: int = 128):
    """F.cross_entropy(softcap(x @ weight.T + bias), targets, ignore_index=-1), chunk_rows rows at a time (the full
    N×V logits never exist); only the loss without autograd."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _SoftcapChunkedCrossEntropy.apply(x, weight, bias, targets, chunk_rows)
    with torch.no_grad():
        valid = targets != -1
        acc = torch.promote_types(x.dtype, torch.float32)
        loss_sum = torch.zeros((), dtype=acc, device=x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            row_loss = _softcap_chunk(x[rows], weight, bias, targets[rows])[2]
            loss_sum += torch.where(valid[rows], row_loss, 0.0).sum()
        return loss_sum / valid.sum().to(acc)
