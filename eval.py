"""Evaluate a checkpoint: validation loss, bits per byte and HellaSwag (evaluation.py), printed and as JSON.

    python eval.py --ckpt out/tiny_cpu_adamw                      # the run dir's newest checkpoint, its own val set
    python eval.py --ckpt out/tiny_cpu_adamw --hellaswag --hellaswag_path hellaswag_val.jsonl --out eval.json

The validation set is the run's own (data.dir and data.val_tokens of the config saved in the checkpoint) unless
--data / --val_tokens say otherwise, so the numbers are those train.py logged for the same step.
"""

import argparse
import contextlib
import json
import sys

import torch

from atomic import atomic_write
from data.loader import TokenDataset, val_batches
from errors import ConfigError, main_guard
from evals import hellaswag
from evaluation import validation_loss
from sample import load_model


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; see python eval.py --help")


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", "--out_dir", dest="ckpt", required=True,
                   help="a run dir (its newest checkpoint) or a ckpt_*.pt")
    p.add_argument("--data", default=None, help="data dir of the validation split (default: the run's data.dir)")
    p.add_argument("--val_tokens", type=int, default=0, help="validation tokens (default: the run's data.val_tokens)")
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--hellaswag", action="store_true",
                   help="also score HellaSwag (downloaded once unless --hellaswag_path)")
    p.add_argument("--hellaswag_path", default="", help="a local hellaswag_val.jsonl")
    p.add_argument("--hellaswag_limit", type=int, default=0, help="only the first N examples (0 = all 10,042)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    model, state = load_model(args.ckpt, str(device))
    mcfg, saved = model.config, state.get("config") or {}
    data = saved.get("data", {})
    data_dir, val_tokens = args.data or data.get("dir"), args.val_tokens or data.get("val_tokens", 65536)
    if not data_dir:
        raise ConfigError(f"{args.ckpt} does not record its data dir; pass --data DIR")
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    val_ds = TokenDataset(data_dir, "val", mcfg.block_size, mcfg.vocab_size, data.get("format", "auto"),
                          data.get("source", ""))
    val_loss, val_bpb = validation_loss(model, val_batches(val_ds, val_tokens, args.batch, 0, 1), device, autocast,
                                        False, mcfg.vocab_size)
    results = dict(step=state["step"], val_loss=val_loss, val_bpb=val_bpb, val_tokens=val_tokens, data=data_dir)
    if args.hellaswag:
        examples = hellaswag.load_examples(hellaswag.locate(args.hellaswag_path), args.hellaswag_limit)
        results.update(hellaswag.evaluate(model, examples, mcfg.block_size, device, autocast))
    print(f"{args.ckpt} (step {results['step']}): val loss {val_loss:.4f}, {val_bpb:.4f} bits/byte on "
          f"{val_tokens:,} tokens of {data_dir}" +
          (f"; hellaswag acc {results['hellaswag_acc']:.4f}, acc_norm {results['hellaswag_acc_norm']:.4f} "
           f"({results['hellaswag_n']:,} examples)" if args.hellaswag else ""))
    if args.out:
        atomic_write(args.out, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return results


if __name__ == "__main__":
    main_guard(main)
    sys.exit(0)
