"""Tests for model.py: parameter names, shapes and counts for every named size and both archs (big models on the
meta device), GPT-2 reference counts, init, tying, loss at init, learning, causality, RoPE, generation, the chunked
cross-entropy (loss and gradients equal to the unchunked ones)."""

import math

import pytest
import torch
from torch.nn import functional as F

import model as model_module
from errors import ConfigError
from model import ARCHS, GPT, MODEL_SIZES, GPTConfig, apply_rope, model_config, rope_cache

chunked_cross_entropy = model_module.chunked_cross_entropy


def expected_shapes(cfg: GPTConfig) -> dict:
    """Parameter name -> shape, written from the contract in docs/INTERFACES.md / the task brief (not from model.py)."""
    d, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    shapes = {"transformer.wte.weight": (V, d)}
    if cfg.arch == "gpt2":
        shapes["transformer.wpe.weight"] = (cfg.block_size, d)
    hidden = 4 * d if cfg.arch == "gpt2" else 256 * math.ceil(8 * d / 3 / 256)
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes[p + "ln_1.weight"] = (d,)
        shapes[p + "attn.c_attn.weight"] = (3 * d, d)
        shapes[p + "attn.c_proj.weight"] = (d, d)
        shapes[p + "ln_2.weight"] = (d,)
        if cfg.arch == "gpt2":
            shapes[p + "mlp.c_fc.weight"] = (hidden, d)
        else:
            shapes[p + "mlp.w_gate.weight"] = (hidden, d)
            shapes[p + "mlp.w_up.weight"] = (hidden, d)
        shapes[p + "mlp.c_proj.weight"] = (d, hidden)
        if cfg.bias:
            shapes[p + "ln_1.bias"] = (d,)
            shapes[p + "attn.c_attn.bias"] = (3 * d,)
            shapes[p + "attn.c_proj.bias"] = (d,)
            shapes[p + "ln_2.bias"] = (d,)
            shapes[p + "mlp.c_fc.bias"] = (hidden,)
            shapes[p + "mlp.c_proj.bias"] = (d,)
    shapes["transformer.ln_f.weight"] = (d,)
    if cfg.bias:
        shapes["transformer.ln_f.bias"] = (d,)
    return shapes


def meta_model(cfg):
    with torch.device("meta"):
        return GPT(cfg)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_names_shapes_counts_every_size(arch, size):
    cfg = model_config(arch, size)
    model = meta_model(cfg)
    want = expected_shapes(cfg)
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert got == want
    total = sum(math.prod(s) for s in want.values())
    wte = cfg.vocab_size * cfg.n_embd
    wpe = cfg.block_size * cfg.n_embd if arch == "gpt2" else 0
    assert model.param_counts() == dict(total=total, non_embedding=total - wpe,
                                        without_embeddings=total - wte - wpe, embeddings=wte + wpe)
    idx = torch.zeros(2, 16, dtype=torch.long, device="meta")
    logits, loss = model(idx, idx)
    assert logits is None and loss.shape == ()  # the training path never materialises the logits
    logits, loss = model(idx, idx, full_logits=True)
    assert logits.shape == (2, 16, cfg.vocab_size) and loss.shape == ()
    logits, loss = model(idx)
    assert logits.shape == (2, 1, cfg.vocab_size) and loss is None
    logits, loss = model(idx, full_logits=True)
    assert logits.shape == (2, 16, cfg.vocab_size) and loss is None


def test_named_sizes():
    assert {k: (v["n_layer"], v["n_head"], v["n_embd"]) for k, v in MODEL_SIZES.items() if k != "tiny"} == {
        "gpt2-124m": (12, 12, 768), "gpt2-355m": (24, 16, 1024), "gpt2-720m": (12, 16, 2048),
        "gpt2-774m": (36, 20, 1280), "gpt2-1.5b": (48, 25, 1600), "llama-1b": (22, 32, 2048)}
    assert model_config("llama", "gpt2-124m").mlp_hidden == 2048  # 8·768/3 = 2048 exactly
    assert model_config("llama", "gpt2-355m").mlp_hidden == 2816  # 8·1024/3 = 2730.7 -> 2816
    assert model_config("gpt2", "gpt2-124m").mlp_hidden == 3072


@pytest.mark.parametrize("size,total,non_embedding", [
    ("gpt2-124m", 124_439_808, 123_653_376),  # OpenAI GPT-2 small; nanoGPT prints "123.65M" (minus wpe)
    ("gpt2-355m", 354_823_168, None),  # GPT-2 medium (Hugging Face gpt2-medium num_parameters())
    ("gpt2-774m", 774_030_080, None),  # GPT-2 large (Hugging Face gpt2-large num_parameters())
])
def test_openai_gpt2_parameter_counts(size, total, non_embedding):
    model = meta_model(model_config("gpt2", size, bias=True, vocab_size=50257, block_size=1024))
    counts = model.param_counts()
    assert counts["total"] == total
    if non_embedding is not None:
        assert counts["non_embedding"] == non_embedding


def test_model_config_overrides_and_errors():
    cfg = model_config("gpt2", "gpt2-124m", n_layer=0, n_head=None, block_size=512, bias=False, dropout=0.0)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 512)
    with pytest.raises(ConfigError, match="gpt2-124m"):  # names the valid sizes
        model_config("gpt2", "gpt2-125m")
    with pytest.raises(ConfigError, match="arch"):
        model_config("bert", "tiny")
    with pytest.raises(ConfigError, match="divisible"):
        model_config("gpt2", "tiny", n_head=3)
    with pytest.raises(ConfigError, match="bias"):
        model_config("llama", "tiny", bias=True)
    with pytest.raises(ConfigError, match="n_lyer"):
        model_config("gpt2", "tiny", n_lyer=2)


@pytest.mark.parametrize("arch", ARCHS)
def test_init_std_and_tied_weights(arch):
    torch.manual_seed(0)
    cfg = model_config(arch, "tiny", n_layer=8)
    model = GPT(cfg)
    params = dict(model.named_parameters())
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in params.items():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "w_gate.weight", "w_up.weight", "wte.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.all(p == 1), name
    # tied: one tensor, listed once, and the lm_head's gradient lands in wte
    assert model.lm_head.weight is model.transformer.wte.weight
    assert "lm_head.weight" not in params
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    model(idx, idx)[1].backward()
    assert model.transformer.wte.weight.grad is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_untrained_loss_is_log_vocab(arch):
    torch.manual_seed(0)
    model = GPT(model_config(arch, "tiny"))
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 50304, (4, 64), generator=g)
    targets = torch.randint(0, 50304, (4, 64), generator=g)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50304)) < 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_adamw_steps_reduce_loss(arch):
    torch.manual_seed(0)
    model = GPT(model_config(arch, "tiny", n_layer=2, vocab_size=512, block_size=32))
    idx = torch.randint(0, 512, (4, 32))
    targets = torch.roll(idx, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_causality(arch):
    torch.manual_seed(0)
    cfg = model_config(arch, "tiny", vocab_size=256, block_size=16)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    with torch.no_grad():
        a, _ = model(idx, full_logits=True)
        b, _ = model(changed, full_logits=True)
    assert torch.equal(a[:, :10], b[:, :10])  # the past cannot see a future token
    assert not torch.allclose(a[:, 10:], b[:, 10:])  # ...but the present and future do


def test_forward_rejects_too_long_input():
    model = GPT(model_config("gpt2", "tiny", vocab_size=64, block_size=8))
    with pytest.raises(ConfigError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_rope_is_relative():
    # RoPE's point: <rope(q, m), rope(k, n)> depends only on m − n
    cos, sin = rope_cache(head_dim=16, max_len=64)
    q, k = torch.randn(16), torch.randn(16)

    def rot(x, pos):
        return apply_rope(x.view(1, 1, 1, 16), cos[pos:pos + 1], sin[pos:pos + 1]).view(16)

    s1 = rot(q, 7) @ rot(k, 3)
    s2 = rot(q, 40) @ rot(k, 36)
    s3 = rot(q, 40) @ rot(k, 30)
    assert s1.item() == pytest.approx(s2.item(), abs=1e-4)
    assert abs(s1.item() - s3.item()) > 1e-3
    assert torch.allclose(rot(q, 0), q)  # position 0 is the identity
    assert rot(q, 5).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)  # rotations keep the norm


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_is_deterministic_given_a_generator(arch):
    torch.manual_seed(0)
    model = GPT(model_config(arch, "tiny", block_size=16)).eval()
    prompt = torch.tensor([[1, 2, 3]])

    def sample(seed, **kw):
        return model.generate(prompt, 20, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = sample(123, temperature=1.0), sample(123, temperature=1.0), sample(124, temperature=1.0)
    assert a.shape == (1, 23) and torch.equal(a[:, :3], prompt)  # longer than block_size: the context is cropped
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(sample(1, temperature=0.0), sample(2, temperature=0.0))  # greedy ignores the generator
    limited = sample(5, temperature=2.0, valid_vocab=50257)
    assert limited[:, 3:].max().item() < 50257
    top1 = sample(6, temperature=1.0, top_k=1)
    assert torch.equal(top1, sample(7, temperature=0.0))  # top_k=1 is greedy
    with pytest.raises(ConfigError, match="top_k"):
        sample(1, top_k=0)


# ---- the chunked cross-entropy over the lm_head

def reference_loss_and_grads(x, w, t):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy((x @ w.t()).float(), t, ignore_index=-1)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("n,vocab,chunk", [(100, 37, 16), (64, 50304, 16), (5, 11, 128), (48, 40, 48), (1, 7, 1)])
def test_chunked_cross_entropy_matches_the_unchunked_loss_and_gradients(n, vocab, chunk):
    g = torch.Generator().manual_seed(n + vocab)
    x = torch.randn(n, 32, generator=g).requires_grad_()
    w = (torch.randn(vocab, 32, generator=g) * 0.3).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)
    t[::3] = -1  # ignore_index: these rows add nothing to the loss or the gradients, nor to the mean's count
    t[0] = 3 % vocab
    ref, gx, gw = reference_loss_and_grads(x, w, t)
    loss = chunked_cross_entropy(x, w, t, chunk)
    (loss * 0.25).backward()  # an incoming gradient other than 1 (gradient accumulation's loss / accum)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, 0.25 * gx, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(w.grad, 0.25 * gw, rtol=1e-5, atol=1e-8)
    with torch.no_grad():  # the forward-only path (evaluation) gives the same loss
        torch.testing.assert_close(chunked_cross_entropy(x, w, t, chunk), ref, rtol=1e-6, atol=1e-6)


def test_chunked_cross_entropy_with_every_target_ignored_is_nan_with_zero_gradients():
    x, w = torch.randn(10, 8, requires_grad=True), torch.randn(13, 8, requires_grad=True)
    t = torch.full((10,), -1)
    loss = chunked_cross_entropy(x, w, t, 4)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x @ w.t(), t, ignore_index=-1))  # as the reference
    loss.backward()
    assert not x.grad.any() and not w.grad.any()


@pytest.mark.parametrize("arch", ARCHS)
def test_model_loss_and_gradients_chunked_equal_unchunked(arch, monkeypatch):
    assert model_module.loss_chunk_rows(torch.device("cpu"), 50304) > 0  # the CPU default is the chunked path
    monkeypatch.setitem(model_module.LOSS_CHUNK_ROWS, "cpu", 24)  # 3 chunks, the last one partial (2×30 rows)
    torch.manual_seed(0)
    model = GPT(model_config(arch, "tiny", vocab_size=96, block_size=32))
    idx = torch.randint(0, 96, (2, 30))
    targets = torch.randint(0, 96, (2, 30))
    targets[1, 25:] = -1

    def loss_and_grads(**kw):
        model.zero_grad(set_to_none=True)
        logits, loss = model(idx, targets, **kw)
        loss.backward()
        return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    logits, loss, grads = loss_and_grads()
    full, ref, ref_grads = loss_and_grads(full_logits=True)
    assert logits is None and full.shape == (2, 30, 96)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:  # wte gets both the embedding's and the lm_head's gradient (tied)
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx, targets)[1], ref, rtol=1e-6, atol=1e-6)
        # the sampling path: last-position logits, equal to the full logits' last row
        torch.testing.assert_close(model(idx)[0], full[:, [-1]].detach(), rtol=1e-5, atol=1e-5)


def test_chunked_cross_entropy_under_bf16_autocast():
    torch.manual_seed(0)
    x, w = torch.randn(40, 16, requires_grad=True), (torch.randn(50, 16) * 0.3).requires_grad_()
    t = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(x, w, t, 16)
        ref = F.cross_entropy((x @ w.t()).float(), t)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-2, atol=1e-2)
