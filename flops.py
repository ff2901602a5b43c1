"""Training FLOPs accounting: model FLOPs per token, the LionMuon paper's formula, Newton–Schulz FLOPs, the peak
FLOP/s table behind MFU, and the cumulative counter that train.py logs ("validation loss vs training FLOPs").

One formula each:
  model_flops_per_token(cfg)  = 6·N + 12·L·d·T                     PaLM (Chowdhery et al. 2022) appendix B, exactly
      nanoGPT's estimate_mfu: N = n_params(cfg)["non_embedding"] = all parameters minus wpe. The token embedding
      stays in N because, tied, it is also the lm_head matmul (V·d multiply-adds per token); wpe is a lookup, not a
      matmul. N also holds the norm weights and biases (0.03 % of N at 124M), as nanoGPT's N does. 6·N is
      forward (2N) + backward (4N) for the weight matmuls; 12·L·d·T counts the attention scores and the weighted
      sum over a full T×T matrix (no causal halving, as PaLM and nanoGPT). For llama, N counts the three SwiGLU
      matrices exactly (3·d·hidden per layer).
  lionmuon_paper_model_flops_per_step(L, d, T, V, B) = 6·(12·L·d² + V·d + T·d)·T·B
      brain-lab-research/lion-muon scripts/plotting/plot_results.py compute_flops (docs/optimizers.md §6.6): no
      attention term, 12·d² per layer for both archs, B = sequences per optimizer step.
      Use it only to compare with that paper.
  Newton–Schulz FLOPs: optimizers/newton_schulz.py ns_matmul_flops (the one copy of that formula; used here for
      the paper's per-step NS charge, and by the optimizers' last_step_flops()).
"""

from collections.abc import Mapping
from dataclasses import dataclass

from errors import CheckpointError
from optimizers.newton_schulz import ns_matmul_flops

# -----------------------------------------------------------------------------
# model FLOPs (ours)


def n_params(cfg) -> dict:
    """Parameter counts of model.GPT(cfg) from the config alone (same keys and definitions as GPT.param_counts(),
    tied wte/lm_head counted once), so big models need not be built. tests/test_flops.py checks they agree."""
    L, d, V, T, h = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.mlp_hidden
    wte = V * d
    if cfg.arch == "track3":  # model.py's track3: untied head with bias, separate q/k/v, biases everywhere, gains
        block = 2 * d + 4 * (d * d + d) + (h * d + h) + (d * h + d)  # ln_1, ln_2; c_q, c_k, c_v, c_proj; mlp
        total = wte + 2 * d + L * block + V * d + V  # + ln_e, ln_f; lm_head weight and bias
        return dict(total=total, non_embedding=total - wte, without_embeddings=total - wte - V * d, embeddings=wte)
    if cfg.arch == "gpt2":
        b = 1 if cfg.bias else 0
        norm = d * (1 + b)  # LayerNorm weight (+ bias)
        attn = 3 * d * d + 3 * d * b + d * d + d * b  # c_attn (+ bias), c_proj (+ bias)
        mlp = h * d + h * b + d * h + d * b  # c_fc (+ bias), c_proj (+ bias)
        wpe = T * d
    else:
        norm = d  # RMSNorm weight
        attn = 4 * d * d
        mlp = 3 * d * h  # w_gate, w_up, c_proj
        wpe = 0
    total = wte + wpe + L * (2 * norm + attn + mlp) + norm  # + ln_f
    return dict(total=total, non_embedding=total - wpe, without_embeddings=total - wte - wpe, embeddings=wte + wpe)


def model_flops_per_token(cfg, seq_len: int | None = None) -> int:
    """Training (forward + backward) FLOPs per token: 6·N + 12·L·d·T with N = all parameters minus wpe (nanoGPT's
    estimate_mfu) and T = seq_len (default cfg.block_size)."""
    T = cfg.block_size if seq_len is None else seq_len
    return 6 * n_params(cfg)["non_embedding"] + 12 * cfg.n_layer * cfg.n_embd * T


# -----------------------------------------------------------------------------
# the LionMuon paper's accounting (docs/optimizers.md §6.6), for reproducing its x-axis


def lionmuon_paper_n_params(L: int, d: int, T: int, V: int) -> int:
    """N = 12·L·d² + V·d + T·d (lion-muon compute_flops; same for gpt2 and llama)."""
    return 12 * L * d * d + V * d + T * d


def lionmuon_paper_model_flops_per_step(L: int, d: int, T: int, V: int, B: int) -> int:
    """6·N·T·B with N = lionmuon_paper_n_params(L, d, T, V) and B sequences of length T per step."""
    return 6 * lionmuon_paper_n_params(L, d, T, V) * T * B


def lionmuon_paper_model_flops_for(cfg, batch_seqs: int, seq_len: int | None = None) -> int:
    """lionmuon_paper_model_flops_per_step for a GPTConfig (the paper ignores arch: 12·d² per layer for llama too)."""
    T = cfg.block_size if seq_len is None else seq_len
    return lionmuon_paper_model_flops_per_step(cfg.n_layer, cfg.n_embd, T, cfg.vocab_size, batch_seqs)


def lionmuon_paper_ns_flops_per_step(L: int, d: int, ns_steps: int = 5) -> int:
    """NS/iter = L·Σ ns_matmul_flops over the 4 GPT-2 matrices of a layer, (d,3d), (d,d), (d,4d), (4d,d)."""
    return L * sum(ns_matmul_flops(m, n, ns_steps) for m, n in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)))


def lionmuon_paper_sign_flops_per_step(L: int, d: int) -> int:
    """sign/iter = L·Σ m·n over the same 4 matrices = 12·L·d² (one FLOP per element of a sign step)."""
    return 12 * L * d * d


def lionmuon_paper_flops_per_step(L: int, d: int, T: int, V: int, B: int, period: float | None = None,
                                  ns_steps: int = 5) -> float:
    """Total FLOPs per iteration as lion-muon's compute_flops charges them:
    period None (adamw, lion): model; period <= 1 (Muon every step): model + NS;
    period P > 1 (muon / sign_muon / lion_muon with an NS step every P steps): model + NS/P + (1 − 1/P)·sign."""
    model = lionmuon_paper_model_flops_per_step(L, d, T, V, B)
    if period is None:
        return model
    ns = lionmuon_paper_ns_flops_per_step(L, d, ns_steps)
    if period <= 1:
        return model + ns
    return model + ns / period + (1 - 1 / period) * lionmuon_paper_sign_flops_per_step(L, d)


# -----------------------------------------------------------------------------
# peak throughput and MFU

# Dense (no sparsity) bf16 tensor-core peak FLOP/s per GPU, from NVIDIA's datasheets. Only GPUs listed here get an
# MFU; anything else reports none rather than a guessed peak.
PEAK_BF16_FLOPS: dict[str, float] = {
    "A100": 312e12,  # A100 SXM4 and PCIe (40 GB and 80 GB)
    "H100 SXM": 989e12,  # torch reports it as "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756e12,
    "H200": 989e12,  # H200 SXM; the H200 NVL has a lower peak and is not listed
}


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s for a torch.cuda.get_device_name() string, or None when the GPU is not in
    PEAK_BF16_FLOPS (or is a variant with a different peak, e.g. NVL), so MFU is omitted."""
    if not device_name:
        return None
    name = device_name.upper().replace("-", " ")
    if "NVL" in name:
        return None
    if "A100" in name:
        return PEAK_BF16_FLOPS["A100"]
    if "H100" in name:
        if "PCIE" in name:
            return PEAK_BF16_FLOPS["H100 PCIe"]
        if "SXM" in name or "HBM3" in name:
            return PEAK_BF16_FLOPS["H100 SXM"]
        return None  # a bare "H100" could be either board
    if "H200" in name:
        return PEAK_BF16_FLOPS["H200"]
    return None


def mfu(flops_per_s: float, device_name: str | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s (summed over all n_devices) / (n_devices · peak), or None when the
    peak of device_name is unknown."""
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return flops_per_s / (n_devices * peak)


# -----------------------------------------------------------------------------
# cumulative counter


@dataclass
class FlopsCounter:
    """Cumulative training FLOPs. train.py calls add_step() once per optimizer step with the tokens processed
    (global, all ranks) and the optimizer's last_step_flops(); model FLOPs are tokens·model_flops_per_token.
    Python ints, so the sums are exact and a resumed run continues from state_dict() bit for bit."""

    model_flops_per_token: int
    tokens: int = 0
    model_flops: int = 0
    optimizer_flops: int = 0

    @property
    def total_flops(self) -> int:
        return self.model_flops + self.optimizer_flops

    def add_step(self, tokens: int, optimizer_flops: int | Mapping = 0) -> None:
        """optimizer_flops: an int, or last_step_flops()'s dict(matmul=..., elementwise=...) (its values are summed)."""
        if isinstance(optimizer_flops, Mapping):
            optimizer_flops = sum(optimizer_flops.values())
        self.tokens += int(tokens)
        self.model_flops += int(tokens) * self.model_flops_per_token
        self.optimizer_flops += int(optimizer_flops)

    def as_dict(self) -> dict:
        """The cumulative fields of a metrics.jsonl record."""
        return dict(tokens=self.tokens, model_flops=self.model_flops, optimizer_flops=self.optimizer_flops,
                    total_flops=self.total_flops)

    def state_dict(self) -> dict:
        return dict(model_flops_per_token=self.model_flops_per_token, tokens=self.tokens,
                    model_flops=self.model_flops, optimizer_flops=self.optimizer_flops)

    def load_state_dict(self, state: dict) -> None:
        if state["model_flops_per_token"] != self.model_flops_per_token:
            raise CheckpointError(f"checkpoint counts {state['model_flops_per_token']} model FLOPs per token but this "
                                  f"model has {self.model_flops_per_token}. Resume with the same model config")
        self.tokens = int(state["tokens"])
        self.model_flops = int(state["model_flops"])
        self.optimizer_flops = int(state["optimizer_flops"])
