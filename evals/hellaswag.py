"""HellaSwag (Zellers et al. 2019) as llm.c scores it: completion style, the 10,042 validation examples.

Each example is a context and four endings, one right. Every ending is appended to the context (GPT-2 tokens, with
a leading space, as llm.c's dev/data/hellaswag.py) and the model's cross-entropy of the ending's tokens is summed;
`acc` picks the ending with the lowest sum, `acc_norm` the lowest mean per token (the length-normalised score that
llm.c and modded-nanogpt report). GPT-2 124M (OpenAI's weights) scores acc_norm 0.2955 this way (llm.c), 0.25 is
chance.

Data: the official val file (`URL`, the one llm.c downloads), fetched once into `cache_dir()` (`$NANOPTIM_CACHE`, or
~/.cache/nanoptim) and checked: its rows must parse (context, 4 endings, a label in 0..3), and the sha256 recorded at
the first download must match on every later use (a file changed or truncated since is refused). No checksum is
published upstream, so the first download is trusted as the source's. `eval.hellaswag_path = FILE` uses a local copy
(offline machines) instead.
"""

import json
import os
import urllib.error
import urllib.request

import torch
import torch.nn.functional as F

from atomic import atomic_write
from checkpoint import file_sha256
from errors import DataError

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
N_VAL = 10042


def cache_dir() -> str:
    return os.environ.get("NANOPTIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nanoptim")


sha256 = file_sha256  # the project's one file hash (checkpoint.py)


def locate(path: str = "", log=print) -> str:
    """The val file: `path` if given (a local copy), else the cached download (downloaded on first use, its sha256
    recorded beside it and checked on every later use)."""
    if path:
        if not os.path.isfile(path):
            raise DataError(f"eval.hellaswag_path = {path!r} does not exist (from {os.getcwd()}); pass the path of "
                            f"hellaswag_val.jsonl (from {URL})")
        return path
    target = os.path.join(cache_dir(), "hellaswag", "hellaswag_val.jsonl")
    marker = target + ".sha256"
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        log(f"downloading HellaSwag val ({URL}) to {target}")
        try:
            with urllib.request.urlopen(URL, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"cannot download HellaSwag from {URL} ({getattr(e, 'reason', e)}); download it on a "
                            f"machine with internet and pass --eval.hellaswag_path=FILE") from None
        atomic_write(target, lambda f: f.write(data))
        load_examples(target)  # a download that is not HellaSwag is refused before its checksum is trusted
        atomic_write(marker, lambda f: f.write(f"{sha256(target)}  hellaswag_val.jsonl\n".encode()))
    if os.path.isfile(marker):
        expected = open(marker).read().split()[0]
        if sha256(target) != expected:
            raise DataError(f"{target} changed since it was downloaded (sha256 differs from {marker}); delete both "
                            f"files to download it again")
    return target


def load_examples(path: str, limit: int = 0) -> list[dict]:
    """The examples of a HellaSwag JSONL file (the first `limit`, if > 0), each checked."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
                ok = (isinstance(ex["ctx"], str) and isinstance(ex["endings"], list) and len(ex["endings"]) == 4
                      and all(isinstance(e, str) for e in ex["endings"]) and ex["label"] in (0, 1, 2, 3))
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise DataError(f"{path}:{i} is not a HellaSwag example (ctx, 4 endings, label 0-3); pass the "
                                f"official hellaswag_val.jsonl")
            examples.append(ex)
            if limit and len(examples) == limit:
                break
    if not examples:
        raise DataError(f"{path} holds no HellaSwag examples")
    return examples


def render(example: dict, enc) -> tuple[list[list[int]], list[int], int]:
    """(4 token rows: context + ending, the number of context tokens of each row, label), as llm.c renders it."""
    ctx = enc.encode_ordinary(example["ctx"])
    rows = [ctx + enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    return rows, [len(ctx)] * 4, example["label"]


@torch.no_grad()
def ending_losses(model, rows: list[list[int]], n_context: list[int], block_size: int, device,
                  autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, mean) of the cross-entropy of each row's ending tokens. A row longer than the context window keeps its
    last block_size tokens (the ending is never cut; HellaSwag rows are ~100 GPT-2 tokens)."""
    cut = [max(0, len(r) - block_size) for r in rows]
    rows = [r[c:] for r, c in zip(rows, cut)]
    starts = [max(1, n - c) for n, c in zip(n_context, cut)]  # first ending position (predicted from the one before)
    width = max(map(len, rows))
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, start:len(row)] = True
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast:
        logits, _ = model(tokens, full_logits=True)
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                             reduction="none").view(len(rows), -1)
    m = mask[:, 1:].float()
    total = (losses * m).sum(1)
    return total, total / m.sum(1)


def evaluate(model, examples: list[dict], block_size: int, device, autocast, rank: int = 0, world_size: int = 1,
             enc=None) -> dict:
    """{"hellaswag_acc", "hellaswag_acc_norm", "hellaswag_n"} over `examples`; each rank scores every world_size-th
    example and the counts are summed over ranks (call it on every rank)."""
    import torch.distributed as dist

    from data.tokenizer import get_gpt2_encoding

    enc = enc or get_gpt2_encoding()
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct, correct_norm, n
    for example in examples[rank::world_size]:
        rows, n_context, label = render(example, enc)
        total, mean = ending_losses(model, rows, n_context, block_size, device, autocast)
        counts += torch.tensor([int(total.argmin()) == label, int(mean.argmin()) == label, 1],
                               dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    correct, correct_norm, n = counts.tolist()
    return dict(hellaswag_acc=correct / n, hellaswag_acc_norm=correct_norm / n, hellaswag_n=int(n))
