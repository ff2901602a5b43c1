"""Sample text from a trained checkpoint.

    python sample.py --ckpt out/tiny_cpu --prompt "ROMEO:" --num_samples 2 --max_new_tokens 100 --seed 1
    python sample.py --out_dir=out/tiny_cpu          # nanoGPT's flag: the same as --ckpt

--ckpt (alias --out_dir) takes a run directory (its newest usable checkpoint, as train.py would resume from) or a
ckpt_*.pt file (checked against its .sha256 marker when the marker is next to it; a lone copied .pt is still read
with weights_only=True). Without --prompt a sample starts a new document: the model is fed <|endoftext|>, which is
not printed. Samples are separated by a line of dashes.
The output is a deterministic function of the checkpoint, the arguments and --seed (sampling uses its own
torch.Generator, and one CPU thread unless OMP_NUM_THREADS says otherwise). Bad input (bad arguments, no
checkpoint, a damaged or foreign file, an empty or too-long prompt) is reported as one `error:` line with exit
code 2.
"""

import argparse
import math
import os
import sys

import torch

import checkpoint as ckpt
from data.tokenizer import get_gpt2_encoding
from errors import CheckpointError, ConfigError, main_guard
from model import GPT, GPTConfig

EOT = 50256  # GPT-2's <|endoftext|>: the prompt when none is given


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, missing --ckpt, a value that is not a number) as one `error:` line
    with exit code 2 (main_guard), not a usage message."""

    def error(self, message):
        raise ConfigError(f"{message}; see python sample.py --help")


def load_model(path: str, device: str) -> tuple[GPT, dict]:
    if os.path.isdir(path):  # a run dir: its newest usable checkpoint, exactly as train.py would resume from it
        if not ckpt.list_checkpoints(path):
            raise CheckpointError(f"{path} holds no checkpoint (ckpt_*.pt); train first or pass another run dir")
        state, _ = ckpt.load_latest(path)
    else:
        state = ckpt.load_checkpoint(path, verify=os.path.exists(ckpt.marker_path(path)))
    if "model_config" not in state:
        raise CheckpointError(f"{path} has no model_config entry; it was not written by train.py")
    try:
        mcfg = GPTConfig(**state["model_config"])
        model = GPT(mcfg)
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not match this version's model ({str(e).splitlines()[0][:160]}); "
                              f"sample with the nanoptim version that trained it") from None
    return model.to(device).eval(), state


def main(argv=None):
    p = ArgumentParser(description="Sample text from a nanoptim checkpoint.")
    p.add_argument("--ckpt", "--out_dir", dest="ckpt", required=True,
                   help="run directory or ckpt_*.pt file (--out_dir: nanoGPT's name for it)")
    p.add_argument("--prompt", default=None, help="text to continue (default: start of a document)")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200, help="0 = no top-k filtering")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise ConfigError("--num_samples and --max_new_tokens must be >= 1")
    if not math.isfinite(args.temperature):
        raise ConfigError(f"--temperature {args.temperature} must be a finite number > 0")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature {args.temperature} must be > 0 (use a small value like 0.1 for near-greedy)")
    if args.top_k < 0:
        raise ConfigError(f"--top_k {args.top_k} must be >= 0 (0 disables top-k filtering)")

    if not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed {args.seed} must be in [0, 2**63 - 1]")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ConfigError(f"--device {args.device!r} is not a device; use cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA GPU is visible; use --device cpu")
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("--prompt is empty; pass some text, or omit --prompt to start a new document")

    if "OMP_NUM_THREADS" not in os.environ:
        # One thread: generating a token is a chain of small ops (one row at a time through a 7M model), which a
        # second thread slows down, much more when the cores are shared (measured in benchmarks/RESULTS.md, the
        # default run's section). Set OMP_NUM_THREADS to choose yourself.
        torch.set_num_threads(1)
    model, _ = load_model(args.ckpt, args.device)
    enc = get_gpt2_encoding()
    ids = [EOT] if args.prompt is None else enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
    if len(ids) >= model.config.block_size:
        raise ConfigError(f"--prompt is {len(ids)} tokens, but the model's context is {model.config.block_size}; "
                          f"shorten the prompt")
    if max(ids) >= model.config.vocab_size:
        raise CheckpointError(f"{args.ckpt} has vocab_size {model.config.vocab_size}, too small for GPT-2 tokens "
                              f"(the prompt holds id {max(ids)}); sample from a model trained on GPT-2 tokens")
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    vocab = min(enc.n_vocab, model.config.vocab_size)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature,
                         top_k=min(args.top_k, vocab) or None, generator=gen,  # top_k beyond the vocab = no filter
                         valid_vocab=vocab)
    texts = []
    for row in out.tolist():
        text = enc.decode(row[1:] if args.prompt is None else row)  # not the <|endoftext|> fed as the start
        texts.append(text)
        print(text)
        print("---------------")
    return texts


if __name__ == "__main__":
    main_guard(main)
    sys.exit(0)
