"""arch = "track3" (modded-nanogpt Track 3's model), the backup AdamW's per-name lrs (adamw_lr_by_name) and
configs/track3_124m.toml. The reference below is a line-by-line copy of the module math of KellerJordan/
modded-nanogpt records/track_3_optimization/train_gpt_simple.py (only its casts adapted to float64)."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import config
from errors import ConfigError
from model import GPT, model_config
from optimizers.build import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "track3_124m.toml")
needs_config_choice = pytest.mark.skipif(
    "track3" not in config.CHOICES["model.arch"],
    reason="config.py's CHOICES['model.arch'] does not list 'track3' yet (docs/track3.md: the pending edit)")


# ----------------------------------------------------------------------------- the track's modules, copied


class RefRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gains = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), weight=self.gains.type_as(x))


class RefLinear(nn.Linear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=True)

    def forward(self, x):
        return F.linear(x, self.weight.type_as(x), self.bias.type_as(x))


class RefRotary(nn.Module):
    def __init__(self, dim):
        super().__init__()
        angular_freq = (1 / 1024) ** torch.linspace(0, 1, steps=dim // 4, dtype=torch.float32)
        self.register_buffer("angular_freq", torch.cat([angular_freq, angular_freq.new_zeros(dim // 4)]))

    def forward(self, x_BTHD):
        pos = torch.arange(x_BTHD.size(1), dtype=torch.float64, device=x_BTHD.device)  # track: float32
        theta = torch.outer(pos, self.angular_freq)[None, :, None, :]
        cos, sin = theta.cos(), theta.sin()
        x1, x2 = x_BTHD.to(dtype=torch.float64).chunk(2, dim=-1)  # track: float32
        y1 = x1 * cos + x2 * sin
        y2 = x1 * (-sin) + x2 * cos
        return torch.cat((y1, y2), 3).type_as(x_BTHD)


class RefAttention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        hdim = self.num_heads * self.head_dim
        self.q = RefLinear(dim, hdim)
        self.k = RefLinear(dim, hdim)
        self.v = RefLinear(dim, hdim)
        self.proj = RefLinear(hdim, dim)
        self.rotary = RefRotary(head_dim)

    def forward(self, x):
        B, T = x.size(0), x.size(1)
        q = self.q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k(x).view(B, T, self.num_heads, self.head_dim)
        v = self.v(x).view(B, T, self.num_heads, self.head_dim)
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), scale=0.12, is_causal=True).transpose(1, 2)
        y = y.contiguous().view(B, T, self.num_heads * self.head_dim)
        return self.proj(y)


class RefMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = RefLinear(dim, 4 * dim)
        self.proj = RefLinear(4 * dim, dim)

    def forward(self, x):
        return self.proj(self.fc(x).relu().square())


class RefBlock(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.attn = RefAttention(dim, head_dim)
        self.mlp = RefMLP(dim)
        self.norm1 = RefRMSNorm(dim)
        self.norm2 = RefRMSNorm(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab_size, num_layers, model_dim, head_dim):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, model_dim)  # track: .bfloat16()
        self.blocks = nn.ModuleList([RefBlock(model_dim, head_dim) for _ in range(num_layers)])
        self.proj = RefLinear(model_dim, vocab_size)
        self.norm1 = RefRMSNorm(model_dim)
        self.norm2 = RefRMSNorm(model_dim)

    def forward(self, inputs, targets):
        x = self.norm1(self.embed(inputs))
        for block in self.blocks:
            x = block(x)
        logits = self.proj(self.norm2(x))  # track: .float()
        logits = 15 * logits * (logits.square() + 15**2).rsqrt()
        return F.cross_entropy(logits.view(targets.numel(), -1), targets.view(-1), reduction="sum"), logits


def ours_from_ref(name: str) -> str:
    """The track's parameter name → ours (model.py's track3 table)."""
    for a, b in (("embed.", "transformer.wte."), ("blocks.", "transformer.h."), (".norm1.", ".ln_1."),
                 (".norm2.", ".ln_2."), (".attn.q.", ".attn.c_q."), (".attn.k.", ".attn.c_k."),
                 (".attn.v.", ".attn.c_v."), (".proj.", ".c_proj."), (".fc.", ".c_fc.")):
        name = name.replace(a, b) if not name.startswith(("norm", "proj")) else name
    return {"norm1.gains": "transformer.ln_e.gains", "norm2.gains": "transformer.ln_f.gains",
            "proj.weight": "lm_head.weight", "proj.bias": "lm_head.bias"}.get(name, name)


# ----------------------------------------------------------------------------- the model


def test_parameter_count_is_the_tracks():
    # train_gpt_simple.py's shapes at vocab 50304, 12 layers, 768 wide, by hand:
    V, d, L = 50304, 768, 12
    block = 2 * d + 4 * (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)  # norm1/2 gains; q,k,v,proj; fc; proj
    track = V * d + L * block + (d * V + V) + 2 * d  # embed; blocks; proj (head) with bias; norm1, norm2 gains
    assert track == 162_354_816
    with torch.device("meta"):
        model = GPT(model_config("track3", "gpt2-124m", n_head=6))
    assert model.param_counts()["total"] == track
    attn = model.transformer.h[0].attn
    assert (attn.n_head, attn.head_dim) == (6, 128)


def test_forward_equals_the_tracks_math():
    torch.manual_seed(0)
    V, d, L, hs, T = 97, 64, 3, 16, 24
    ours = GPT(model_config("track3", "tiny", n_layer=L, n_embd=d, n_head=d // hs, vocab_size=V, block_size=T))
    ref = RefGPT(V, L, d, hs)
    ours, ref = ours.double(), ref.double()
    with torch.no_grad():  # random values everywhere (the init zeroes the projections), copied by name
        for p in ours.parameters():
            p.normal_(std=0.3)
        mine = dict(ours.named_parameters())
        assert sorted(ours_from_ref(n) for n, _ in ref.named_parameters()) == sorted(mine)
        for n, p in ref.named_parameters():
            p.copy_(mine[ours_from_ref(n)])
    idx = torch.randint(0, V, (2, T))
    tgt = torch.randint(0, V, (2, T))
    ref_sum, ref_logits = ref(idx, tgt)
    logits, loss = ours(idx, tgt, full_logits=True)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, ref_sum / tgt.numel(), rtol=1e-12, atol=1e-12)
    _, chunked = ours(idx, tgt)  # the CPU default: the chunked loss
    torch.testing.assert_close(chunked, ref_sum / tgt.numel(), rtol=1e-12, atol=1e-12)


def test_chunked_loss_and_gradients_equal_unchunked():
    torch.manual_seed(1)
    model = GPT(model_config("track3", "tiny", n_layer=2, n_embd=32, n_head=2, vocab_size=200, block_size=16))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)
    idx, tgt = torch.randint(0, 200, (3, 16)), torch.randint(0, 200, (3, 16))
    tgt[1, :7] = -1  # ignored positions
    grads = []
    for full in (False, True):
        model.zero_grad()
        _, loss = model(idx, tgt, full_logits=full)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_init_is_the_tracks():
    torch.manual_seed(0)
    model = GPT(model_config("track3", "tiny", n_layer=2, n_embd=256, n_head=2, vocab_size=4096, block_size=16))
    p = dict(model.named_parameters())
    for name in ("transformer.h.0.attn.c_proj.weight", "transformer.h.1.mlp.c_proj.weight", "lm_head.weight"):
        assert p[name].abs().max() == 0
    assert all(p[n].abs().max() == 0 for n in p if n.endswith("bias"))
    assert all(bool((p[n] == 1).all()) for n in p if n.endswith("gains"))
    assert abs(p["transformer.wte.weight"].std().item() - 1.0) < 0.01
    assert abs(p["transformer.h.0.attn.c_q.weight"].std().item() - (0.33 / 256) ** 0.5) < 0.002
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std().item() - (0.33 / 256) ** 0.5) < 0.002
    _, loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert abs(loss.item() - np.log(4096)) < 1e-5  # zero head: uniform logits


def test_head_size_must_suit_the_rope():
    with pytest.raises(ConfigError, match="divisible by 4"):
        model_config("track3", "tiny", n_embd=36, n_head=6)


# ----------------------------------------------------------------------------- the optimizer recipe


def test_routing_and_per_name_backup_lrs():
    model = GPT(model_config("track3", "tiny", n_layer=2, n_embd=32, n_head=2, vocab_size=128, block_size=16))
    cfg = config.load_config(CONFIG, full_check=False) if "track3" in config.CHOICES["model.arch"] else None
    settings = dict(lr=0.025, weight_decay=0.05, routing="hidden", adamw_lr=0.015,
                    adamw_lr_by_name=["wte=0.7", "lm_head.weight=0.004"], adamw_betas=[0.8, 0.95],
                    adamw_eps=1e-10, adamw_weight_decay=0.001)
    if cfg is not None:
        assert cfg.optimizer.settings["adamw_lr_by_name"] == settings["adamw_lr_by_name"]
    opt = build_optimizer(model, "muon", settings)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["backup_adamw"], g["lr"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups]
    muon = [n for b, _, ns in groups if not b for n in ns]
    assert sorted(muon) == sorted(n for n, p in model.named_parameters()
                                  if p.ndim == 2 and n.startswith("transformer.h."))  # the track's Muon set
    by_lr = {lr: ns for b, lr, ns in groups if b}
    assert by_lr[0.7] == ["transformer.wte.weight"] and by_lr[0.004] == ["lm_head.weight"]
    assert "lm_head.bias" in by_lr[0.015] and all(dict(model.named_parameters())[n].ndim == 1 for n in by_lr[0.015])
    assert all(g["betas"] == (0.8, 0.95) and g["weight_decay"] == 0.001 for g in opt.param_groups if g["backup_adamw"])
    assert all(g["base_lr"] == g["lr"] for g in opt.param_groups)  # so the schedule scales each group


@pytest.mark.parametrize("rules,match", [
    (["nothing_like_this=0.1"], "matches no parameter of the backup AdamW"),
    (["attn.c_q.weight=0.1"], "matches no parameter of the backup AdamW"),  # a Muon parameter, not a backup one
    (["wte"], "NAME_SUBSTRING=LR"), (["wte=-1"], "NAME_SUBSTRING=LR"), (["=0.1"], "NAME_SUBSTRING=LR"),
])
def test_bad_lr_rules(rules, match):
    model = GPT(model_config("track3", "tiny", n_layer=1, n_embd=32, n_head=2, vocab_size=64, block_size=8))
    with pytest.raises(ConfigError, match=match):
        build_optimizer(model, "muon", dict(adamw_lr_by_name=rules))
    with pytest.raises(ConfigError, match="routing = 'none'"):
        build_optimizer(model, "adamw", dict(adamw_lr_by_name=["wte=0.1"]))


# ----------------------------------------------------------------------------- the config


@needs_config_choice
def test_config_loads_with_the_tracks_numbers():
    cfg = config.load_config(CONFIG)
    assert (cfg.model.arch, cfg.model.n_head, cfg.data.source) == ("track3", 6, "fineweb10b-gpt2")
    assert (cfg.train.batch_tokens, cfg.train.micro_batch, cfg.data.val_tokens) == (524288, 64, 20 * 524288)
    assert (cfg.train.max_steps, cfg.train.target_val_loss, cfg.train.stop_at_target) == (3250, 3.28, False)
    assert (cfg.schedule.kind, cfg.schedule.decay_fraction, cfg.schedule.min_lr_ratio) == ("wsd", 0.7, 0.0)
    assert cfg.logging.run_dir == "out/track3_muon"
    adamw = config.load_config(CONFIG, ["--optimizer.name=adamw", "--train.max_steps=5625",
                                        "--schedule.warmup_steps=249"])
    from schedule import lr_factor

    # the AdamW log's warmup min(1, (step + 1) / 250), exactly
    for step in (0, 1, 100, 248, 249, 250):
        assert abs(lr_factor(step, adamw.schedule, 5625) - min(1.0, (step + 1) / 250)) < 1e-12
    # Muon: wsd = the track's eta one step ahead (docs/track3.md)
    for step in (975, 2000, 3249):
        assert abs(lr_factor(step, cfg.schedule, 3250) - (1 - (step + 1) / 3250) / 0.7) < 1e-9


@needs_config_choice
def test_plan_runs():
    from conftest import run_subprocess

    out = run_subprocess([sys.executable, "train.py", CONFIG, "--plan"])
    assert "track3" in out.stdout


@needs_config_choice
@pytest.mark.slow
def test_smoke_train_on_tiny_data(tmp_path):
    from conftest import run_subprocess

    from data.shards import write_shard

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    write_shard(str(data / "fineweb_val_000000.bin"), rng.integers(0, 50257, 4096, dtype=np.uint16))
    write_shard(str(data / "fineweb_train_000001.bin"), rng.integers(0, 50257, 20000, dtype=np.uint16))
    run = tmp_path / "run"
    run_subprocess([sys.executable, "train.py", CONFIG, "--model.n_layer=2", "--model.n_embd=64",
                    "--model.n_head=2", "--model.block_size=64", f"--data.dir={data}", "--data.val_tokens=512",
                    "--train.batch_tokens=512", "--train.micro_batch=4", "--train.max_steps=4",
                    "--train.eval_interval=2", "--train.compile=false", "--train.device=cpu",
                    "--optimizer.ns_steps=5", f"--logging.run_dir={run}"])
    final = json.loads((run / "final.json").read_text())
    assert final and os.path.isfile(run / "metrics.jsonl")
