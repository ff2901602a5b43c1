"""Which parameter goes to the optimizer's own rule and which to the backup AdamW (docs/optimizers.md §5, §6.3, §7.3,
§8.1). Every optimizer has a default rule (its class's `default_routing`); a config may set any rule for any
optimizer (`routing = "lionmuon"` for lion gives the LionMuon paper's "Lion with an AdamW for embeddings").

Names are the model's (docs/INTERFACES.md): transformer.wte.weight (tied to the lm_head), transformer.wpe.weight
(gpt2), transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.w_gate,mlp.w_up,mlp.c_proj}.weight (.bias),
transformer.ln_f.weight. Prefixes added by DDP (`module.`) and torch.compile (`_orig_mod.`) are stripped first.
arch "track3" (model.py) uses its own names on the same scheme: transformer.wte, transformer.ln_e.gains,
transformer.h.{i}.{ln_1,ln_2}.gains, .attn.{c_q,c_k,c_v,c_proj} and .mlp.{c_fc,c_proj} (.weight, .bias),
transformer.ln_f.gains and an untied lm_head (.weight, .bias): "hidden" gives Muon exactly the track's block
matrices; build.py's adamw_lr_by_name splits the backup into the track's three AdamW lrs.

Rules (each reproduces its reference repo's rule on our parameter names):
  "none"      every parameter to the optimizer, no backup AdamW (adamw, lion, signum); build_optimizer then gives
              weight decay to ≥2-D parameters only, as nanoGPT's configure_optimizers does.
  "hidden"    muon (KellerJordan/Muon's MuonWithAuxAdam example, Moonlight, torch.optim.Muon's docs): matrices
              (ndim ≥ 2) that are not an embedding or the head; i.e. the attention and MLP weights of every block.
              wte, wpe, lm_head, norms, biases → AdamW.
  "lionmuon"  lionmuon, signmuon (lion-muon src/optim/lion_muon.py: `p.ndim >= 2 and p.size(0) < 10000`):
              the block matrices AND wpe (block_size×d); the tied wte/lm_head (50304×d) → AdamW, and norms.
  "olion"     olion (kv-wang/OLion nanoGPT/train.py): AdamW if the name contains any of wte, wpe, embd, embed, ln,
              norm, lm_head, output, final_layer, bias; OLion otherwise (only ≥2-D params can reach OLion).
  "leo"       leo (vukrosic/leo-optimizer setup_leo_optimizer: `ndim == 2` and not token_embedding / norm): the block
              matrices and wpe; wte (the token embedding, tied to the head), an untied lm_head, norms → AdamW.
Overrides (config `to_backup`, `to_matrix`): a parameter whose name contains any `to_backup` substring goes to
AdamW; else one containing a `to_matrix` substring goes to the matrix optimizer (it must be ≥2-D).
"""

from errors import ConfigError
from model import unwrapped_name

ROUTINGS = ("none", "hidden", "lionmuon", "olion", "leo")

_OLION_BACKUP = ("wte", "wpe", "embd", "embed", "ln", "norm", "lm_head", "output", "final_layer", "bias")
_EMBED_OR_HEAD = ("wte", "wpe", "embed", "embd", "lm_head")


def to_matrix_by_rule(rule: str, name: str, shape) -> bool:
    """True if `rule` sends the parameter (cleaned name, shape) to the matrix optimizer."""
    ndim = len(shape)
    if rule == "none":
        return True
    if rule == "hidden":
        return ndim >= 2 and not any(k in name for k in _EMBED_OR_HEAD)
    if rule == "lionmuon":
        return ndim >= 2 and shape[0] < 10000
    if rule == "olion":
        return ndim >= 2 and not any(k in name for k in _OLION_BACKUP)
    if rule == "leo":
        return ndim == 2 and not any(k in name for k in ("wte", "token_embedding", "embed", "lm_head", "norm", "ln_"))
    raise ConfigError(f"optimizer.routing = {rule!r} is not a routing rule. Use one of {', '.join(ROUTINGS)}")


def route(named_params, rule: str, to_backup=(), to_matrix=(), matrices_only: bool = True):
    """Split (name, param) pairs into (matrix, backup) lists of (clean name, param), in model order.

    Every parameter that requires grad lands in exactly one list. Raises ConfigError for an override that matches
    nothing, or (matrices_only: for an optimizer that updates only matrices) that would send a 1-D parameter to it.
    """
    to_backup, to_matrix = tuple(to_backup or ()), tuple(to_matrix or ())
    matrix, backup = [], []
    used = set()
    for raw, p in named_params:
        if not p.requires_grad:
            continue
        name = unwrapped_name(raw)
        hit_b = [s for s in to_backup if s in name]
        hit_m = [s for s in to_matrix if s in name]
        used.update(hit_b + hit_m)
        if hit_b:
            is_matrix = False
        elif hit_m:
            if p.ndim < 2 and matrices_only:
                raise ConfigError(f"optimizer.to_matrix {hit_m[0]!r} matches the {p.ndim}-D parameter {name}; "
                                  "only ≥2-D parameters can be orthogonalised, so narrow the substring")
            is_matrix = True
        else:
            is_matrix = to_matrix_by_rule(rule, name, tuple(p.shape))
        (matrix if is_matrix else backup).append((name, p))
    unused = [s for s in to_backup + to_matrix if s not in used]
    if unused:
        raise ConfigError(f"optimizer routing override {unused[0]!r} matches no parameter name; "
                          "use a substring of a name such as 'transformer.wpe' or 'attn.c_proj'")
    return matrix, backup
