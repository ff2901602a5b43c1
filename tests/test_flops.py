"""Tests for flops.py: model FLOPs per token derived by hand, the LionMuon paper's numbers (docs/optimizers.md §6.6),
Newton–Schulz FLOPs (§5.5), the analytic parameter count against model.py, the peak table and MFU, FlopsCounter."""

import pytest
import torch

import flops
from errors import CheckpointError
from model import GPT, MODEL_SIZES, model_config
from optimizers.newton_schulz import ns_matmul_flops


def test_gpt2_124m_flops_per_token_by_hand():
    cfg = model_config("gpt2", "gpt2-124m")  # L=12, d=768, T=1024, V=50304, no biases
    d, L, T, V = 768, 12, 1024, 50304
    per_layer = (3 * d * d  # c_attn      1,769,472
                 + d * d  # attn c_proj  589,824
                 + 4 * d * d  # c_fc   2,359,296
                 + 4 * d * d  # mlp c_proj 2,359,296
                 + 2 * d)  # ln_1, ln_2 weights 1,536
    assert per_layer == 7_079_424
    N = V * d + L * per_layer + d  # wte (= lm_head) 38,633,472 + blocks 84,953,088 + ln_f 768; wpe excluded
    assert N == 123_587_328
    # 6·N = 741,523,968; 12·L·d·T = 12·12·768·1024 = 113,246,208
    assert 6 * N == 741_523_968 and 12 * L * d * T == 113_246_208
    assert flops.model_flops_per_token(cfg) == 741_523_968 + 113_246_208 == 854_770_176
    # the attention term scales with the sequence length actually trained on
    assert flops.model_flops_per_token(cfg, seq_len=512) == 741_523_968 + 56_623_104


def test_llama_counts_swiglu_exactly():
    # at d=768 the SwiGLU hidden is 2048 and 3·2048 = 8·768, so llama-124m has exactly GPT-2's matmul count
    # (minus wpe, which is not in N anyway)
    assert flops.model_flops_per_token(model_config("llama", "gpt2-124m")) == 854_770_176
    # at d=1024 the hidden rounds up to 2816: 3·1024·2816 = 8,650,752 vs GPT-2's 8·1024² = 8,388,608 per layer
    gap = flops.model_flops_per_token(model_config("llama", "gpt2-355m")) - \
        flops.model_flops_per_token(model_config("gpt2", "gpt2-355m"))
    assert gap == 6 * 24 * (8_650_752 - 8_388_608)


@pytest.mark.parametrize("size", list(MODEL_SIZES))
@pytest.mark.parametrize("arch,bias", [("gpt2", False), ("gpt2", True), ("llama", False)])  # llama has no biases
def test_n_params_matches_model(arch, size, bias):
    cfg = model_config(arch, size, bias=bias)
    with torch.device("meta"):
        model = GPT(cfg)
    assert flops.n_params(cfg) == model.param_counts()


def test_lionmuon_paper_values():
    # docs/optimizers.md §6.6, 124M at T=512, B=32, K=5
    assert flops.lionmuon_paper_n_params(12, 768, 512, 50304) == 123_961_344
    model = flops.lionmuon_paper_model_flops_per_step(12, 768, 512, 50304, 32)
    assert model == pytest.approx(1.21859e13, rel=1e-5)
    assert flops.lionmuon_paper_model_flops_for(model_config("gpt2", "gpt2-124m", block_size=512), 32) == model
    assert flops.lionmuon_paper_ns_flops_per_step(12, 768, 5) == pytest.approx(1.52203e12, rel=1e-5)
    assert flops.lionmuon_paper_sign_flops_per_step(12, 768) == pytest.approx(8.4935e7, rel=1e-4)
    # 355M (T=1024, 512 sequences) and 720M rows of the same table
    assert flops.lionmuon_paper_n_params(24, 1024, 1024, 50304) == 354_549_760
    assert flops.lionmuon_paper_model_flops_per_step(24, 1024, 1024, 50304, 512) == pytest.approx(1.11532e15, rel=1e-5)
    assert flops.lionmuon_paper_ns_flops_per_step(24, 1024) == pytest.approx(7.21555e12, rel=1e-5)
    assert flops.lionmuon_paper_n_params(12, 2048, 512, 50304) == 708_050_944
    assert flops.lionmuon_paper_ns_flops_per_step(12, 2048) == pytest.approx(2.88622e13, rel=1e-5)
    # totals at 124M over 64k iterations
    totals = {None: 7.79897e17, 1: 8.77307e17, 2: 8.28605e17, 5: 7.99384e17, 20: 7.84773e17, 100: 7.80877e17}
    for period, want in totals.items():
        got = 64_000 * flops.lionmuon_paper_flops_per_step(12, 768, 512, 50304, 32, period=period)
        assert got == pytest.approx(want, rel=1e-5), period


@pytest.mark.parametrize("m,n,want", [(768, 768, 1.359e10), (768, 2304, 3.171e10), (3072, 768, 4.077e10),
                                      (1024, 4096, 9.664e10)])
def test_ns_flops_spec_table(m, n, want):
    assert ns_matmul_flops(m, n, 5) == pytest.approx(want, rel=5e-4)
    assert ns_matmul_flops(m, n, 5) == ns_matmul_flops(n, m, 5)  # transposing does not change the work


def test_ns_flops_exact():
    # one step on 2×3: r=2, c=3 -> X·Xᵀ 2·2·2·3=24, A·A 2·2³=16, B·X 24 -> 64
    assert ns_matmul_flops(2, 3, 1) == 64
    assert ns_matmul_flops(3, 2, 4) == 256


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H100 NVL", None), ("NVIDIA H200 NVL", None), ("NVIDIA H100", None),
    ("NVIDIA GeForce RTX 4090", None), ("cpu", None), (None, None), ("", None),
])
def test_peak_flops_table(name, peak):
    assert flops.peak_flops(name) == peak


def test_mfu():
    assert flops.mfu(494.5e12, "NVIDIA H200") == pytest.approx(0.5)
    assert flops.mfu(494.5e12, "NVIDIA H200", n_devices=2) == pytest.approx(0.25)
    assert flops.mfu(156e12, "NVIDIA A100-SXM4-40GB") == pytest.approx(0.5)
    assert flops.mfu(1e12, "Tesla T4") is None


def test_flops_counter_accumulates_and_resumes():
    c = flops.FlopsCounter(model_flops_per_token=1000)
    c.add_step(tokens=512, optimizer_flops={"matmul": 300, "elementwise": 20})
    c.add_step(tokens=512, optimizer_flops=80)
    assert c.as_dict() == dict(tokens=1024, model_flops=1_024_000, optimizer_flops=400, total_flops=1_024_400)
    resumed = flops.FlopsCounter(model_flops_per_token=1000)
    resumed.load_state_dict(c.state_dict())
    resumed.add_step(tokens=1, optimizer_flops=0)
    assert resumed.as_dict() == dict(tokens=1025, model_flops=1_025_000, optimizer_flops=400, total_flops=1_025_400)
    with pytest.raises(CheckpointError, match="model FLOPs per token"):
        flops.FlopsCounter(model_flops_per_token=999).load_state_dict(c.state_dict())
