"""AdEMAMix (optimizers/ademamix.py) against an independent float64 NumPy reference written from the update formula,
against the apple/ml-ademamix reference loop in fp32 (bit for bit), the α = 0 identity with torch.optim.AdamW,
state_dict round trips across the warm-ups, config recipes, and a few training steps of a small GPT."""

import copy
import io
import math

import numpy as np
import pytest
import torch

import optimizers
from errors import ConfigError
from optimizers import build_optimizer, check_recipe
from optimizers.ademamix import AdEMAMix, alpha_at, beta3_at

SHAPES = [(12, 5), (5, 12), (7, 7), (9,)]  # tall, wide, square, 1-D
FACTORS = [1.0, 0.5, 0.25, 0.8, 1.3, 0.9, 0.6, 1.1, 0.7, 0.4]  # group["lr"] = base_lr * factor at each step
STEPS = len(FACTORS)


@pytest.fixture
def registered(monkeypatch):
    """"ademamix" in the registry for this test only (optimizers/__init__.py is not edited)."""
    monkeypatch.setitem(optimizers.OPTIMIZERS, "ademamix", "optimizers.ademamix:AdEMAMix")


# ---------------------------------------------------------------------------------------------------------------
# harness (as tests/test_optimizers.py)


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads_for(step, params, seed=100):
    """Deterministic gradients, a stripe of exact zeros in every tensor."""
    g = torch.Generator().manual_seed(seed + step)
    out = []
    for p in params:
        gr = torch.randn(p.shape, generator=g, dtype=p.dtype)
        gr.view(-1)[::4] = 0.0
        out.append(gr)
    return out


def has_grad(step, i, skip):
    return (step, i) not in skip


def run(opt, params, steps=STEPS, skip=(), start=0):
    """Steps start..steps-1 with the FACTORS schedule; (step, i) in `skip`: param i gets no gradient at that step."""
    history = []
    for t in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * FACTORS[t]
        for i, (p, gr) in enumerate(zip(params, grads_for(t, params))):
            p.grad = gr.clone() if has_grad(t, i, skip) else None
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


# ---------------------------------------------------------------------------------------------------------------
# (1) float64 NumPy reference, written from the formula (paper eq. + the reference code's warm-up schedulers)


def half_life(beta):
    return math.log(0.5) / math.log(beta + 1e-8) - 1  # the reference's f, eps = 1e-8 inside the log


def ademamix_ref(p, g, s, lr, wd, betas, alpha, t_alpha, t_beta3, eps=1e-8):
    b1, b2, b3 = betas
    t = s["t"] = s.get("t", 0) + 1
    a_t = alpha * t / t_alpha if t_alpha and t < t_alpha else alpha
    if t_beta3 and t < t_beta3:
        r = t / t_beta3
        b3_t = 0.5 ** (1 / ((1 - r) * half_life(b1) + r * half_life(b3) + 1))
    else:
        b3_t = b3
    s["m1"] = b1 * s.get("m1", 0) + (1 - b1) * g
    s["m2"] = b3_t * s.get("m2", 0) + (1 - b3_t) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    u = (s["m1"] / (1 - b1 ** t) + a_t * s["m2"]) / (np.sqrt(s["v"]) / math.sqrt(1 - b2 ** t) + eps)
    return p - lr * (u + wd * p)


def run_ref(params0, lr, wd, betas, alpha, t_alpha, t_beta3, skip=(), steps=STEPS):
    ps = [p.detach().double().numpy().copy() for p in params0]
    states = [{} for _ in ps]
    history = []
    for t in range(steps):
        grads = [gr.double().numpy() for gr in grads_for(t, params0)]
        for i in range(len(ps)):
            if has_grad(t, i, skip):
                ps[i] = ademamix_ref(ps[i], grads[i], states[i], lr * FACTORS[t], wd, betas, alpha, t_alpha, t_beta3)
        history.append([p.copy() for p in ps])
    return history


def assert_history(hist, ref, atol):
    for t, (got, want) in enumerate(zip(hist, ref)):
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g.numpy(), w, atol=atol, rtol=0, err_msg=f"step {t}, param {SHAPES[i]}")


@pytest.mark.parametrize("alpha_warmup,beta3_warmup", [(5, 5), (3, 7), (None, None), (0, 4)])
def test_float64_reference(alpha_warmup, beta3_warmup):
    # 10 steps crossing the end of both warm-ups; the 1-D param misses the gradient at step 2, so its own counter
    # (and with it its warm-ups and bias corrections) runs one behind the others from then on.
    betas, skip = (0.9, 0.99, 0.999), {(2, 3)}
    params = make_params()
    ref = run_ref(params, 1e-2, 0.1, betas, 4.0, alpha_warmup, beta3_warmup, skip)
    opt = AdEMAMix(params, lr=1e-2, betas=betas, alpha=4.0, alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup,
                   weight_decay=0.1)
    assert_history(run(opt, params, skip=skip), ref, atol=1e-10)
    assert [opt.state[p]["step"] for p in params] == [STEPS, STEPS, STEPS, STEPS - 1]


def test_schedulers():
    # α: linear from 0, α/2 half way, α from the end of the warm-up on; none = α from step 1
    assert [alpha_at(t, 8.0, 4) for t in (1, 2, 3, 4, 5)] == [2.0, 4.0, 6.0, 8.0, 8.0]
    assert alpha_at(1, 8.0, None) == alpha_at(1, 8.0, 0) == 8.0
    # β3: starts at β1 (+ the 1e-8 inside the log), ends at β3, and the half-life of β3(t), ln 0.5/ln β3(t) − 1
    # (f⁻¹ inverts f without the 1e-8), is linear in t between f(β1) and f(β3)
    b1, b3, T = 0.9, 0.9999, 10
    assert beta3_at(0, b1, b3, T) == pytest.approx(b1 + 1e-8, abs=1e-15)
    hl = [math.log(0.5) / math.log(beta3_at(t, b1, b3, T)) - 1 for t in range(T)]
    want = [(1 - t / T) * half_life(b1) + t / T * half_life(b3) for t in range(T)]
    np.testing.assert_allclose(hl, want, rtol=1e-9)
    assert beta3_at(T, b1, b3, T) == beta3_at(T + 5, b1, b3, T) == b3 == beta3_at(1, b1, b3, None)
    assert all(b1 < beta3_at(t, b1, b3, T) < b3 for t in range(1, T))


# ---------------------------------------------------------------------------------------------------------------
# (2) the apple/ml-ademamix reference (pytorch/ademamix.py @ e7327151), its per-parameter step restated minimally


def ref_linear_warmup_scheduler(step, alpha_end, alpha_start=0, warmup=1):
    if step < warmup:
        a = step / float(warmup)
        return (1.0-a) * alpha_start + a * alpha_end
    return alpha_end


def ref_linear_hl_warmup_scheduler(step, beta_end, beta_start=0, warmup=1):

    def f(beta, eps=1e-8):
        return math.log(0.5)/math.log(beta+eps)-1

    def f_inv(t):
        return math.pow(0.5, 1/(t+1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0-a) * f(beta_start) + a * f(beta_end))
    return beta_end


@torch.no_grad()
def ref_step(state, p, grad, lr, lmbda, eps, betas, alpha_final, beta3_warmup, alpha_warmup):
    """The body of the reference's `for p in group['params']` loop."""
    beta1, beta2, beta3_final = betas
    if len(state) == 0:
        state['step'] = 0
        if beta1 != 0.0:
            state['exp_avg_fast'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        else:
            state['exp_avg_fast'] = None
        state['exp_avg_slow'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
    exp_avg_fast, exp_avg_slow, exp_avg_sq = state['exp_avg_fast'], state['exp_avg_slow'], state['exp_avg_sq']
    state['step'] += 1
    bias_correction1 = 1 - beta1 ** state['step']
    bias_correction2 = 1 - beta2 ** state['step']
    if alpha_warmup is not None:
        alpha = ref_linear_warmup_scheduler(state["step"], alpha_end=alpha_final, alpha_start=0, warmup=alpha_warmup)
    else:
        alpha = alpha_final
    if beta3_warmup is not None:
        beta3 = ref_linear_hl_warmup_scheduler(state["step"], beta_end=beta3_final, beta_start=beta1,
                                               warmup=beta3_warmup)
    else:
        beta3 = beta3_final
    if beta1 != 0.0:
        exp_avg_fast.mul_(beta1).add_(grad, alpha=1 - beta1)
    else:
        exp_avg_fast = grad
    exp_avg_slow.mul_(beta3).add_(grad, alpha=1 - beta3)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    update = (exp_avg_fast.div(bias_correction1) + alpha * exp_avg_slow) / denom
    update.add_(p, alpha=lmbda)
    p.add_(-lr * update)


@pytest.mark.parametrize("betas,wd,alpha_warmup,beta3_warmup", [
    ((0.9, 0.999, 0.9999), 0.1, 5, 5),
    ((0.9, 0.99, 0.999), 0.05, 3, 7),
    ((0.0, 0.99, 0.999), 0.1, 4, 4),  # β1 = 0: the reference uses g itself and keeps no m1
    ((0.8, 0.999, 0.9999), 0.0, None, None),
])
def test_matches_apple_reference_fp32(betas, wd, alpha_warmup, beta3_warmup):
    params = make_params(dtype=torch.float32)
    ref_params = [p.detach().clone() for p in params]
    ref_states = [{} for _ in params]
    opt = AdEMAMix(params, lr=3e-3, betas=betas, alpha=5.0, alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup,
                   eps=1e-8, weight_decay=wd)
    for t, got in enumerate(run(opt, params)):
        for p, gr, s in zip(ref_params, grads_for(t, ref_params), ref_states):
            ref_step(s, p, gr, 3e-3 * FACTORS[t], wd, 1e-8, betas, 5.0, beta3_warmup, alpha_warmup)
        for i, (a, b) in enumerate(zip(got, ref_params)):
            assert torch.equal(a, b), f"step {t}, param {SHAPES[i]}: max |diff| {(a - b).abs().max().item():.3g}"
    for p, s in zip(params, ref_states):  # the state too, buffer for buffer
        assert opt.state[p]["step"] == s["step"] == STEPS
        for name in ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq"):
            if s[name] is not None:
                assert torch.equal(opt.state[p][name], s[name]), name


# ---------------------------------------------------------------------------------------------------------------
# (3) state_dict round trip across the warm-ups


@pytest.mark.parametrize("through_file", [False, True])
def test_state_dict_round_trip(through_file):
    # 3 steps, save, load into a fresh optimizer on copies of the params, 5 more == 8 uninterrupted, bit for bit;
    # the warm-ups (5 steps) end after the resume, so a lost step counter restarts them and fails here.
    kwargs = dict(lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=4.0, alpha_warmup=5, beta3_warmup=5, weight_decay=0.1)
    p1 = make_params(dtype=torch.float32)
    o1 = AdEMAMix(p1, **kwargs)
    run(o1, p1, steps=3)
    sd = copy.deepcopy(o1.state_dict())
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    if through_file:  # as a checkpoint is written and read (torch.save, torch.load(weights_only=True))
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
    h1 = run(o1, p1, steps=8, start=3)
    o2 = AdEMAMix(p2, **kwargs)
    o2.load_state_dict(sd)
    assert [o2.state[p]["step"] for p in p2] == [3] * 4
    h2 = run(o2, p2, steps=8, start=3)
    for t, (a, b) in enumerate(zip(h1, h2)):
        for x, y in zip(a, b):
            assert torch.equal(x, y), f"step {t + 3}"


# ---------------------------------------------------------------------------------------------------------------
# (4) α = 0 without warm-up is AdamW (decoupled decay): p − lr·(u + wd·p) = p·(1 − lr·wd) − lr·u; m2 unused


def test_alpha_zero_is_torch_adamw():
    pa, pb = make_params(), make_params()
    ours = AdEMAMix(pa, lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=0.0, eps=1e-8, weight_decay=0.1)
    adamw = torch.optim.AdamW(pb, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    for group in adamw.param_groups:
        group["base_lr"] = group["lr"]
    for t, (a, b) in enumerate(zip(run(ours, pa), run(adamw, pb))):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-13, rtol=0, msg=f"step {t}")


# ---------------------------------------------------------------------------------------------------------------
# arguments and config recipes


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), r"lr = 0.0 is out of range"),
    (dict(betas=(0.9, 0.999)), r"betas = \[0.9, 0.999\] is invalid; it must be three numbers"),
    (dict(betas=(0.9, 0.999, 1.0)), r"betas .* \[0, 1\)"),
    (dict(betas=(0.9, -0.1, 0.99)), r"betas"),
    (dict(alpha=-1.0), r"alpha = -1.0 is out of range"),
    (dict(alpha_warmup=-1), r"alpha_warmup = -1 is invalid"),
    (dict(beta3_warmup=2.5), r"beta3_warmup = 2.5 is invalid"),
    (dict(beta3_warmup=True), r"beta3_warmup = True is invalid"),
    (dict(eps=-1e-8), r"eps = -1e-08 is out of range"),
    (dict(weight_decay=-0.1), r"weight_decay = -0.1 is out of range"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdEMAMix(make_params(), **kwargs)


def test_defaults_are_the_reference_class_defaults(registered):
    from optimizers.build import constructor_arguments

    args = constructor_arguments(optimizers.optimizer_class("ademamix"))
    assert {k: d for k, (_, d) in args.items()} == dict(
        lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None, alpha_warmup=None, eps=1e-8,
        weight_decay=0.0)
    assert (AdEMAMix.default_routing, AdEMAMix.matrices_only, AdEMAMix.uses_newton_schulz) == ("none", False, False)


def test_config_recipe(registered):
    # what a TOML table gives: lists for tuples, floats that are integers, the string "none" for None
    check_recipe("ademamix", dict(betas=[0.9, 0.999, 0.999], alpha=8, alpha_warmup=128000.0, beta3_warmup="none",
                                  weight_decay=0.1))
    for settings, match in [(dict(betas=[0.9, 0.999]), r"optimizer.betas = \[0.9, 0.999\] is invalid"),
                            (dict(betas=[0.9, 0.999, 1.0]), r"optimizer.betas .* \[0, 1\)"),
                            (dict(alpha_warmup=2.5), r"optimizer.alpha_warmup = 2.5"),
                            (dict(beta3_warmup=-3), r"optimizer.beta3_warmup = -3"),
                            (dict(beta3=0.999), r"unknown key optimizer.beta3")]:
        with pytest.raises(ConfigError, match=match) as e:
            check_recipe("ademamix", settings)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# (5) build_optimizer on a small GPT: trains, nanoGPT decay split, state, FLOPs


def test_build_optimizer_trains_small_gpt(registered):
    from model import GPT, model_config

    torch.manual_seed(0)
    model = GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96))
    opt = build_optimizer(model, "ademamix", dict(lr=3e-3, betas=[0.9, 0.999, 0.999], alpha=8.0, alpha_warmup=4,
                                                  beta3_warmup=4, weight_decay=0.1))
    decay, no_decay = opt.param_groups  # routing "none": wd on ≥2-D params only (nanoGPT)
    assert decay["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"]) and no_decay["params"]
    assert not any(g["backup_adamw"] for g in opt.param_groups)
    x = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    losses = []
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert opt.last_step_flops() == {"matmul": 0, "elementwise": AdEMAMix.flops_per_element * numel}
    _, final = model(x, y)
    assert all(math.isfinite(v) for v in losses)
    assert final.item() < losses[0] - 0.1, (losses, final.item())
    for p in model.parameters():
        state = opt.state[p]
        assert state["step"] == 5 and sorted(state) == ["exp_avg_fast", "exp_avg_slow", "exp_avg_sq", "step"]
