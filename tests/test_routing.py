"""Routing: for gpt2-124m and llama every parameter lands in exactly one group, where the spec says it goes."""

import pytest
import torch

from errors import ConfigError
from model import GPT, model_config, unwrapped_name
from optimizers import build_optimizer
from optimizers.routing import route

BLOCK_MATRICES = {
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "llama": ("attn.c_attn", "attn.c_proj", "mlp.w_gate", "mlp.w_up", "mlp.c_proj"),
}


def meta_model(arch, bias=False):
    with torch.device("meta"):
        return GPT(model_config(arch, "gpt2-124m", bias=bias, block_size=512))


def expected_matrices(arch, n_layer, with_wpe):
    names = {f"transformer.h.{i}.{m}.weight" for i in range(n_layer) for m in BLOCK_MATRICES[arch]}
    return names | ({"transformer.wpe.weight"} if with_wpe else set())


def groups_by_name(opt, model):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in opt.param_groups:
        kind = "adamw" if group["backup_adamw"] else "main"
        out.setdefault(kind, []).extend(names[id(p)] for p in group["params"])
    return out


# method -> does wpe go to the matrix optimizer? (spec: muon/olion hidden only; lionmuon `size(0) < 10000` and leo
# `ndim == 2 and not token_embedding/norm` take wpe; the tied wte/lm_head always goes to AdamW)
CASES = {"muon": False, "olion": False, "lionmuon": True, "signmuon": True, "leo": True}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", list(CASES))
def test_every_parameter_in_exactly_one_group(arch, method):
    model = meta_model(arch)
    opt = build_optimizer(model, method, dict())
    got = groups_by_name(opt, model)
    all_names = [n for n, _ in model.named_parameters()]
    routed = got["main"] + got["adamw"]
    assert sorted(routed) == sorted(all_names)  # each exactly once
    assert len(set(routed)) == len(routed)
    want = expected_matrices(arch, 12, with_wpe=CASES[method] and arch == "gpt2")
    assert set(got["main"]) == want
    assert "transformer.wte.weight" in got["adamw"]
    assert all(n in got["adamw"] for n in all_names if "ln_" in n)
    assert "lm_head.weight" not in all_names  # tied: only wte is a parameter


@pytest.mark.parametrize("method", ["adamw", "lion", "signum"])
def test_plain_methods_decay_only_matrices(method):
    model = meta_model("gpt2", bias=True)
    opt = build_optimizer(model, method, dict(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_biases_go_to_backup():
    model = meta_model("gpt2", bias=True)
    got = groups_by_name(build_optimizer(model, "lionmuon", dict()), model)
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert biases and set(biases) <= set(got["adamw"])


def test_wrapped_names_and_overrides():
    model = meta_model("gpt2")
    named = [(f"module._orig_mod.{n}", p) for n, p in model.named_parameters()]
    assert unwrapped_name("_orig_mod.module.transformer.wte.weight") == "transformer.wte.weight"
    matrix, backup = route(named, "hidden")
    assert {n for n, _ in matrix} == expected_matrices("gpt2", 12, with_wpe=False)
    # overrides: send every attn.c_proj to AdamW and wpe to the matrix optimizer
    matrix, backup = route(named, "hidden", to_backup=["attn.c_proj"], to_matrix=["transformer.wpe"])
    names = {n for n, _ in matrix}
    assert "transformer.wpe.weight" in names and not any("attn.c_proj" in n for n in names)
    assert len(matrix) + len(backup) == len(named)


def test_unknown_rule():
    with pytest.raises(ConfigError, match="routing"):
        route([("x.weight", torch.nn.Parameter(torch.zeros(2, 2)))], "nope")
