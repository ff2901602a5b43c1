"""A run's evaluations at a step: the validation loss and bits per byte on the fixed validation set, and HellaSwag
when `eval.hellaswag` is on (every `eval.hellaswag_interval` steps and at the end). train.py and eval.py use them.

Results go to metrics.jsonl (the eval record of the step: val_loss, val_bpb, hellaswag_acc, hellaswag_acc_norm,
hellaswag_n), the log line, and the run's TrainingState (the best val loss, the step at which the target is first
reached). Under DDP every rank evaluates its share and the sums are all-reduced, so every rank gets the same numbers.
"""

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from evals import hellaswag
from evals.bpb import bits_per_byte, token_byte_lengths

LOGITS_BYTES = 64 << 20  # the logits of at most this many bytes at a time (the per-token losses need them)


@torch.no_grad()
def validation_loss(model, val_set, device, autocast, ddp: bool, vocab_size: int) -> tuple[float, float]:
    """(mean cross-entropy over every target token, bits per byte of the text tokens: evals/bpb.py) over the fixed
    validation set (each rank its share, all-reduced)."""
    byte_lengths = token_byte_lengths(vocab_size).to(device)
    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, tokens, loss sum of text tokens, bytes
    for x, y in val_set:
        x, y = x.to(device), y.to(device)
        rows = max(1, LOGITS_BYTES // (x.shape[1] * vocab_size * 4))
        for xs, ys in zip(x.split(rows), y.split(rows)):
            with autocast:
                logits, _ = model(xs, full_logits=True)
            losses = F.cross_entropy(logits.float().flatten(0, 1), ys.flatten(), reduction="none").double()
            nbytes = byte_lengths[ys.flatten()]
            total += torch.stack([losses.sum(), torch.tensor(losses.numel(), dtype=torch.float64, device=device),
                                  (losses * (nbytes > 0)).sum(), nbytes.sum().double()])
    if ddp:
        dist.all_reduce(total)
    model.train(was_training)
    loss_sum, n, text_loss_sum, n_bytes = total.tolist()
    return loss_sum / n, bits_per_byte(text_loss_sum, int(n_bytes))


class Evaluator:
    """Evaluate at a step (before that step's update) and log it; see the module docstring."""

    def __init__(self, cfg, model, val_set, device, autocast, ddp: bool, rank: int, world_size: int, mcfg,
                 logger, log):
        self.cfg, self.model, self.val_set, self.device, self.autocast = cfg, model, val_set, device, autocast
        self.ddp, self.rank, self.world_size, self.mcfg = ddp, rank, world_size, mcfg
        self.logger, self.log = logger, log
        self.examples = None
        self.last = {}  # the latest val_bpb and HellaSwag results, for final.json
        if cfg.eval.hellaswag:
            self.examples = hellaswag.load_examples(hellaswag.locate(cfg.eval.hellaswag_path, log),
                                                    cfg.eval.hellaswag_limit)
            log(f"hellaswag: {len(self.examples):,} examples, every "
                f"{cfg.eval.hellaswag_interval or cfg.train.max_steps} steps and at the end")

    def hellaswag_due(self, step: int, final: bool) -> bool:
        interval = self.cfg.eval.hellaswag_interval
        return self.examples is not None and (final or (interval > 0 and step % interval == 0))

    def __call__(self, step: int, run, final: bool = False) -> float:
        tc = self.cfg.train
        self.log(f"step {step}: evaluating ...")
        t0 = time.time()
        val, bpb = validation_loss(self.model, self.val_set, self.device, self.autocast, self.ddp,
                                   self.mcfg.vocab_size)
        extra = {"val_bpb": bpb}
        if self.hellaswag_due(step, final):
            extra.update(hellaswag.evaluate(self.model, self.examples, self.mcfg.block_size, self.device,
                                            self.autocast, self.rank, self.world_size))
        self.last.update(extra)
        run.best_val = min(run.best_val, val)
        reached = bool(tc.target_val_loss and val < tc.target_val_loss and run.target_reached is None)
        if reached:
            run.target_reached = dict(step=step, val_loss=val, **run.counters.as_dict())
        self.logger.log_eval(dict(step=step, val_loss=val, **extra, **run.counters.as_dict(), elapsed_s=run.elapsed_s,
                                  **({"reached_target": tc.target_val_loss} if reached else {})))
        self.log(f"step {step}: val loss {val:.4f} (best {run.best_val:.4f}), {bpb:.4f} bits/byte" +
                 (f", hellaswag acc_norm {extra['hellaswag_acc_norm']:.4f} ({extra['hellaswag_n']:,})"
                  if "hellaswag_acc_norm" in extra else "") + f"; {time.time() - t0:.1f}s" +
                 (f": below the target {tc.target_val_loss} for the first time, after {run.counters.tokens:,} "
                  f"tokens" if reached else ""))
        return val
