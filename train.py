"""Train a GPT-2 (or LLaMA-style) model on token shards, on one process or many (DDP via torchrun).

    python train.py configs/tiny_cpu.toml --optimizer.name=lion           # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.toml
    bash run.sh configs/gpt2_124m.toml                               # picks the number of GPUs for you

What one step does: the global batch (train.batch_tokens, independent of the number of processes) is split
into micro-batches; each process runs forward/backward on its share with gradient accumulation (DDP syncs
gradients only on the last micro-step), then the gradient norm is clipped, the learning rate schedule sets
every param group's lr, and the optimizer steps. The batch of a (seed, step, micro-step, rank) is a pure
function of those numbers (data/loader.py), so a resumed run sees exactly the data it would have seen.

The run directory holds config.toml (the resolved config), metrics.jsonl, checkpoints and, at the end,
final.json. Rerunning the same command continues from the last good checkpoint, bit-exactly on CPU.

Faults (docs/reliability.md has each one with the test that proves it): checkpoints are committed atomically with
a SHA-256 completed-marker (checkpoint.py), so a crash at any point loses at most the steps since the last one and
never leaves a half-written file that gets loaded; a non-finite loss or gradient stops the run at the last good
checkpoint (train.nonfinite = "stop") or skips that update ("skip"); a full disk or unwritable run directory is
reported in one line; and bad input (config, data, checkpoint, run directory) is reported as one `error:` line
(exit code 2) before anything in the run directory is written.
"""

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint as ckpt
from config import differences, load_config, to_dict, to_toml
from data.loader import TokenDataset, train_batch, val_batches
from errors import CheckpointError, ConfigError, DataError, NanoptimError, main_guard
from flops import FlopsCounter, model_flops_per_token, peak_flops
from metrics import MetricsLogger
from model import GPT, model_config
from optimizers import build_optimizer


class NonFiniteError(NanoptimError):
    """The loss, a gradient or the weights became inf/NaN and the run cannot (or may not) skip past it."""


class RunDirError(NanoptimError):
    """The run directory cannot be written: disk full, quota, read-only filesystem, permissions."""


ERRORS = {cls.__name__: cls for cls in (NanoptimError, ConfigError, DataError, CheckpointError, NonFiniteError,
                                        RunDirError)}
# train.nonfinite = "skip" gives up after this many skipped steps in a row: a run that cannot take a single good
# step any more (e.g. fp overflow on every batch) should stop at its last good checkpoint, not spin to max_steps.
MAX_SKIPS_IN_A_ROW = 10
# Set by run.sh under torchrun: where a worker records a user error, so that torchrun's restart (meant for crashes)
# fails at once instead of re-running a deterministic failure --max-restarts times.
FATAL_FILE_ENV = "NANOPTIM_FATAL_FILE"


def lr_factor(step: int, s, max_steps: int) -> float:
    """The schedule's multiplier of every group's base lr at `step` (0-based).

    warmup (torch LinearLR semantics): start + (1 - start)·step/warmup for step < warmup;
    cosine: min + (1 - min)·½(1 + cos(π·progress)); wsd: 1 until the last decay_fraction of steps, then linear
    to min; constant: 1. progress runs from 0 right after warmup to 1 at max_steps.
    """
    if step < s.warmup_steps:
        return s.warmup_start_factor + (1.0 - s.warmup_start_factor) * step / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    if s.kind == "cosine":
        progress = (step - s.warmup_steps) / max(1, max_steps - s.warmup_steps)
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    decay_steps = max(1, round(s.decay_fraction * max_steps))  # wsd
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - s.min_lr_ratio) * min(1.0, (step - decay_start + 1) / decay_steps)


def setup_distributed(device_choice: str):
    """(ddp, rank, local_rank, world_size, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use --train.device=cpu or auto")
    if not ddp:
        return False, 0, 0, 1, torch.device("cuda" if use_cuda else "cpu")
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    # torchrun's restarts (--max-restarts) reuse its TCP store, and the process group's keys (each rank's address)
    # are not namespaced per attempt: a restarted rank could read a dead rank's address from the previous attempt
    # and fail to connect, or hang. So the store is namespaced by the attempt number here.
    store, _, _ = next(dist.rendezvous("env://", rank, world_size))
    store = dist.PrefixStore(f"nanoptim/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world_size,
                            device_id=device if use_cuda else None)
    return True, rank, local_rank, world_size, device


def _agree(ddp: bool, fn):
    """fn() on every rank. If it raises a NanoptimError on any rank, every rank raises it: no rank is left waiting in
    a collective for a peer that has already exited, and every rank reports the same one-line error."""
    error, result = None, None
    try:
        result = fn()
    except NanoptimError as e:
        error = e
    if ddp:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, None if error is None else (type(error).__name__, str(error)))
        first = next((e for e in errors if e is not None), None)
        if first is not None and error is None:
            error = ERRORS.get(first[0], NanoptimError)(first[1])
    if error is not None:
        raise error
    return result


def _from_master(ddp: bool, master: bool, fn):
    """fn() on rank 0 only; its (small, picklable) result, or its NanoptimError, reaches every rank."""
    box = [None]
    if master:
        try:
            box = [("ok", fn())]
        except NanoptimError as e:
            box = [("error", type(e).__name__, str(e))]
    if ddp:
        dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise ERRORS.get(box[0][1], NanoptimError)(box[0][2])
    return box[0][1]


def _last_good(path: str | None) -> str:
    return f"the last good checkpoint {path} is intact" if path else "no checkpoint had been written yet"


def _params_finite(params) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in params]).all())


def check_checkpoint_fits(state: dict, path: str, mcfg, cfg) -> None:
    """Refuse a checkpoint written for another model shape or another optimizer, naming the difference."""
    saved = state.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no model_config entry, so it was not written by train.py; "
                              f"use another --logging.run_dir")
    ours = vars(mcfg)
    changed = [f"{k} {saved.get(k)!r} -> {ours[k]!r}" for k in ours if k != "dropout" and saved.get(k) != ours[k]]
    if changed:
        raise CheckpointError(f"{path} was written for a different model ({', '.join(changed)}); resume with the "
                              f"same model settings, or use another --logging.run_dir")
    saved_opt = ((state.get("config") or {}).get("optimizer") or {}).get("name")
    if saved_opt != cfg.optimizer.name:
        raise CheckpointError(f"{path} holds {saved_opt!r} optimizer state, but optimizer.name = "
                              f"{cfg.optimizer.name!r}; resume with --optimizer.name={saved_opt}, or use another "
                              f"--logging.run_dir")


def check_run_dir(run_dir: str, cfg, log) -> None:
    """Refuse to mix two different runs in one directory (unless checkpoint.allow_config_change)."""
    saved = os.path.join(run_dir, "config.toml")
    if not os.path.exists(saved):
        return
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise ConfigError(f"{run_dir} holds a config.toml that no longer loads ({e}); "
                          f"use another logging.run_dir") from None
    changed = differences(old, cfg)
    if not changed:
        return
    if cfg.checkpoint.allow_config_change:
        log(f"note: resuming {run_dir} with a changed config: {'; '.join(changed)}")
        return
    more = " ..." if len(changed) > 3 else ""
    raise ConfigError(f"{run_dir} holds a different run ({'; '.join(changed[:3])}{more}); "
                      f"use another --logging.run_dir, or pass --checkpoint.allow_config_change=true to continue it")


def train(cfg, log=print) -> dict:
    ddp, rank, local_rank, world_size, device = setup_distributed(cfg.train.device)
    master = rank == 0
    if not master:
        log = lambda *a, **k: None  # noqa: E731 - only rank 0 talks
    try:
        return _train(cfg, ddp, rank, world_size, device, master, log)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg, ddp, rank, world_size, device, master, log) -> dict:
    t_start = time.time()
    device_type = device.type
    mcfg = model_config(cfg.model.arch, cfg.model.size, n_layer=cfg.model.n_layer, n_head=cfg.model.n_head,
                        n_embd=cfg.model.n_embd, block_size=cfg.model.block_size, vocab_size=cfg.model.vocab_size,
                        bias=cfg.model.bias, dropout=cfg.model.dropout)
    seq_len = mcfg.block_size

    # Global batch → micro-batches. The global batch is fixed by the config, whatever the world size.
    tc = cfg.train
    if tc.batch_tokens % seq_len:
        raise ConfigError(f"train.batch_tokens = {tc.batch_tokens} is not a multiple of the sequence length "
                          f"{seq_len}; use a multiple, e.g. {max(1, tc.batch_tokens // seq_len) * seq_len}")
    global_seqs = tc.batch_tokens // seq_len
    # micro_batch 0 = auto: each process takes its whole share at once (no gradient accumulation)
    micro_batch = tc.micro_batch or max(1, global_seqs // world_size)
    per_step = micro_batch * world_size
    if global_seqs % per_step:
        raise ConfigError(f"train.batch_tokens = {tc.batch_tokens} ({global_seqs} sequences of {seq_len}) is not "
                          f"divisible by train.micro_batch × processes = {micro_batch} × {world_size}; change "
                          f"micro_batch or batch_tokens")
    accum = global_seqs // per_step

    # Setup reads and checks everything (data, run dir, checkpoint) before writing anything, so bad input leaves the
    # run directory exactly as it was. Under DDP every rank raises the same error (_agree / _from_master).
    run_dir = cfg.logging.run_dir
    train_ds, val_ds = _agree(ddp, lambda: (TokenDataset(cfg.data.dir, "train", seq_len, mcfg.vocab_size),
                                            TokenDataset(cfg.data.dir, "val", seq_len, mcfg.vocab_size)))
    val_set = val_batches(val_ds, cfg.data.val_tokens, micro_batch, rank, world_size)

    # Precision: bf16 autocast on GPU (weights and optimizer stay fp32), plain fp32 on CPU.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = tc.dtype if tc.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    autocast = (torch.autocast(device_type=device_type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    torch.manual_seed(tc.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = GPT(mcfg).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, device_type)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])

    # Rank 0 decides what to resume from (the run dir may be on a filesystem only it writes); the others load the
    # same file. state stays on rank 0; only the path and the list of bad newer checkpoints are broadcast.
    state = None

    def choose_checkpoint():
        nonlocal state
        if not os.path.isdir(run_dir):
            return None, []
        check_run_dir(run_dir, cfg, log)
        if ckpt.list_checkpoints(run_dir) and cfg.checkpoint.resume == "never":
            raise ConfigError(f"{run_dir} already holds checkpoints and checkpoint.resume = 'never'; "
                              f"use another --logging.run_dir or --checkpoint.resume=auto")
        state, bad = ckpt.load_latest(run_dir, map_location="cpu")
        if state is not None and state["unverified"]:
            log(f"warning: {state['path']} has no .sha256 completion marker (written by an older nanoptim, or "
                f"copied without it); it reads as a complete checkpoint, so the run resumes from it")
        return (state["path"] if state else None), bad

    resume_path, bad_checkpoints = _from_master(ddp, master, choose_checkpoint)

    def apply_checkpoint():
        nonlocal state
        if resume_path is None:
            return
        if state is None:  # not rank 0
            if not os.path.isfile(resume_path):
                raise CheckpointError(f"rank {rank} cannot see {resume_path}, which rank 0 resumes from; put "
                                      f"logging.run_dir on a filesystem that every node shares")
            state = ckpt.load_checkpoint(resume_path, map_location="cpu", verify=False)  # rank 0 verified it
        check_checkpoint_fits(state, resume_path, mcfg, cfg)
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{resume_path} does not fit this model/optimizer "
                                  f"({str(e).splitlines()[0][:160]}); use another --logging.run_dir") from None
        # load_state_dict also restores the saved hyperparameters; the config's own win (they are equal unless
        # checkpoint.allow_config_change let them change). Counters the optimizer keeps in its groups stay.
        for group, new in zip(optimizer.param_groups, fresh):
            group.update({k: v for k, v in new.items() if k not in ("step", "lr")})

    _agree(ddp, apply_checkpoint)

    counters = FlopsCounter(model_flops_per_token(mcfg))
    elapsed_s = 0.0  # training compute time (evaluation and checkpointing excluded), summed over resumes
    start_step, best_val, skipped = 0, float("inf"), 0
    last_ckpt = resume_path  # the newest good checkpoint, named in the non-finite error
    if state is not None:
        start_step, best_val = state["step"], state["best_val_loss"]
        counters.load_state_dict(state["counters"])
        elapsed_s, skipped = state["elapsed_s"], state["skipped_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        if device_type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])])
        log(f"resumed from step {start_step} in {run_dir}")
        state = None  # free the CPU copy of the weights and optimizer state

    # From here on the run directory is written.
    if master:
        os.makedirs(run_dir, exist_ok=True)
        for path, problem in bad_checkpoints:
            ckpt.set_aside(path, problem, log)
        ckpt.clean_incomplete(run_dir)  # leftovers of a write that a crash interrupted
        ckpt.atomic_write_bytes(os.path.join(run_dir, "config.toml"), lambda f: f.write(to_toml(cfg).encode()))

    raw_model = model
    if tc.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[device.index] if device_type == "cuda" else None)

    logger = MetricsLogger(run_dir, to_dict(cfg), wandb_mode=cfg.logging.wandb, project=cfg.logging.wandb_project,
                           run_name=cfg.logging.run_name or os.path.basename(os.path.normpath(run_dir)),
                           group=cfg.logging.group, enabled=master,
                           resume_step=start_step - 1 if resume_path is not None else None)
    flops_per_token = counters.model_flops_per_token
    peak = peak_flops(torch.cuda.get_device_name(device)) if device_type == "cuda" else None
    n_params = raw_model.param_counts()
    log(f"model {cfg.model.arch}/{cfg.model.size}: {n_params['total'] / 1e6:.2f}M parameters | "
        f"{world_size} process(es) × micro_batch {micro_batch} × accum {accum} × {seq_len} tokens = "
        f"{tc.batch_tokens} tokens/step | optimizer {cfg.optimizer.name} | device {device} {dtype}")

    def evaluate() -> float:
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses × n, n)
        with torch.no_grad():
            for x, y in val_set:
                x, y = x.to(device), y.to(device)
                with autocast:
                    _, loss = model(x, y)
                total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(total)
        model.train()
        return (total[0] / total[1]).item()

    def save(step: int) -> None:
        nonlocal last_ckpt
        # Never let a checkpoint with inf/NaN weights become "the last good checkpoint" (every rank checks, so
        # every rank stops together; the weights are identical on all ranks).
        if not _params_finite(params):
            raise NonFiniteError(f"the weights became non-finite by step {step}, so no checkpoint was written "
                                 f"({_last_good(last_ckpt)}); lower optimizer.lr and resume from it with "
                                 f"--checkpoint.allow_config_change=true")
        last_ckpt = ckpt.checkpoint_path(run_dir, step)
        if not master:
            return
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else None}
        path = ckpt.save_checkpoint(run_dir, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "best_val_loss": best_val, "counters": counters.state_dict(), "elapsed_s": elapsed_s,
            "skipped_steps": skipped, "rng": rng, "config": to_dict(cfg), "model_config": vars(mcfg).copy(),
        }, cfg.checkpoint.keep_last)
        log(f"saved {path}")

    params = [p for p in raw_model.parameters() if p.requires_grad]
    max_steps, last_val = tc.max_steps, None
    skips_in_a_row = 0
    window_s, window_tokens = 0.0, 0  # compute time and tokens since the last log line (for tokens/s)
    for step in range(start_step, max_steps):
        factor = lr_factor(step, cfg.schedule, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

        if step % tc.eval_interval == 0:
            last_val = evaluate()
            best_val = min(best_val, last_val)
            logger.log_eval(dict(step=step, val_loss=last_val, **counters.as_dict(), elapsed_s=elapsed_s))
            log(f"step {step}: val loss {last_val:.4f}")

        t0 = time.time()
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(accum):
            x, y = train_batch(train_ds, tc.seed, step, micro_step, rank, world_size, micro_batch, accum)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = not ddp or micro_step == accum - 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        train_loss = loss_sum.item() / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"),
                                                   foreach=True).item()
        if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
            # Every rank sees the same all-reduced loss and gradient norm, so every rank takes the same branch.
            optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(train_loss) else "gradient"
            if tc.nonfinite == "stop":
                raise NonFiniteError(f"non-finite {what} at step {step} ({_last_good(last_ckpt)}); lower the "
                                     f"learning rate, or set --train.nonfinite=skip to skip such steps")
            if not _params_finite(params):
                raise NonFiniteError(f"non-finite {what} at step {step} because the weights are non-finite, which "
                                     f"skipping cannot repair ({_last_good(last_ckpt)}); lower optimizer.lr and "
                                     f"resume from it with --checkpoint.allow_config_change=true")
            skipped, skips_in_a_row = skipped + 1, skips_in_a_row + 1
            if skips_in_a_row > MAX_SKIPS_IN_A_ROW:
                raise NonFiniteError(f"non-finite {what} at {skips_in_a_row} steps in a row, up to step {step} "
                                     f"({_last_good(last_ckpt)}); lower the learning rate and resume from it with "
                                     f"--checkpoint.allow_config_change=true")
            log(f"step {step}: non-finite {what}, update skipped (train.nonfinite = skip; {skipped} skipped so far)")
        else:
            skips_in_a_row = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counters.add_step(tc.batch_tokens, optimizer.last_step_flops())
        dt = time.time() - t0  # the .item() calls above waited for the GPU, so this is the step's real time
        elapsed_s += dt
        window_s, window_tokens = window_s + dt, window_tokens + tc.batch_tokens

        if step % tc.log_interval == 0 or step == max_steps - 1:
            tok_s = window_tokens / max(window_s, 1e-9)
            rec = dict(step=step, loss=train_loss, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                       **counters.as_dict(), elapsed_s=elapsed_s, tokens_per_s=tok_s, skipped=skipped)
            if peak:
                rec["mfu"] = flops_per_token * tok_s / (peak * world_size)
            logger.log_train(rec)
            log(f"step {step}/{max_steps} | loss {train_loss:.4f} | lr {rec['lr']:.3e} | gnorm {grad_norm:.3f} | "
                f"{tok_s / 1e3:.1f}k tok/s" + (f" | mfu {rec['mfu'] * 100:.1f}%" if peak else "") +
                f" | {elapsed_s:.1f}s")
            window_s, window_tokens = 0.0, 0

        done = step + 1
        if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done < max_steps:
            save(done)
        if tc.stop_after and done - start_step >= tc.stop_after and done < max_steps:
            if not (cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0):
                save(done)
            log(f"stopping after {tc.stop_after} steps in this invocation (train.stop_after); rerun to continue")
            logger.finish(None)
            return dict(steps=done, stopped_early=True)

    if start_step < max_steps or last_val is None:
        last_val = evaluate()
        best_val = min(best_val, last_val)
        logger.log_eval(dict(step=max_steps, val_loss=last_val, **counters.as_dict(), elapsed_s=elapsed_s))
        log(f"step {max_steps}: val loss {last_val:.4f}")
        save(max_steps)
    summary = dict(steps=max_steps, best_val_loss=best_val, final_val_loss=last_val, **counters.as_dict(),
                   elapsed_s=elapsed_s, skipped_steps=skipped, wall_s=time.time() - t_start)
    if master:
        ckpt.atomic_write_bytes(os.path.join(run_dir, "final.json"),
                                lambda f: f.write(json.dumps(summary, indent=2).encode()))
    logger.finish(summary)
    return summary


def _check_earlier_fatal_error() -> None:
    """Under run.sh's torchrun, a restarted worker group whose previous attempt stopped on a user error (bad input,
    non-finite loss, disk full) fails at once: restarting cannot fix it, only re-run it --max-restarts times."""
    path = os.environ.get(FATAL_FILE_ENV)
    if path and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            kind, _, message = f.read().strip().partition(" ")
        raise ERRORS.get(kind, NanoptimError)(f"{message} (an earlier attempt stopped on this; not retried)")


def _record_fatal_error(e: NanoptimError) -> None:
    path = os.environ.get(FATAL_FILE_ENV)
    if not path:
        return
    try:  # every rank may get here: a private tmp name per process, then an atomic rename
        ckpt.atomic_write_bytes(path, lambda f: f.write(f"{type(e).__name__} {e}\n".encode()),
                                tmp=f"{path}.{os.getpid()}.tmp")
    except OSError:
        pass  # best effort: without it torchrun merely retries


def _run_dir_error(e: OSError, run_dir: str) -> RunDirError | None:
    """A one-line RunDirError for an OSError that means "the run directory cannot be written", else None."""
    disk = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    where = os.path.abspath(e.filename) if isinstance(e.filename, str) else None
    inside = where is not None and where.startswith(os.path.abspath(run_dir) + os.sep)
    if not (disk or (inside and e.errno in (errno.EACCES, errno.EPERM))):
        return None
    return RunDirError(f"could not write {where or 'to ' + run_dir} ({e.strerror or e}); the last good checkpoint "
                       f"is intact; free disk space or fix permissions of {run_dir}, then rerun the same command to "
                       f"resume")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Overrides: --section.key=value, "
                                     "e.g. --optimizer.name=lion --train.max_steps=100")
    parser.add_argument("config", nargs="?", default=None, help="TOML config (default: configs/tiny_cpu.toml)")
    args, overrides = parser.parse_known_args(argv)
    _check_earlier_fatal_error()
    try:
        cfg = load_config(args.config, overrides)
        if int(os.environ.get("RANK", 0)) == 0:
            print(to_toml(cfg))
        try:
            return train(cfg)
        except OSError as e:
            err = _run_dir_error(e, cfg.logging.run_dir)
            if err is None:
                raise
            raise err from None
    except NanoptimError as e:
        _record_fatal_error(e)
        raise


if __name__ == "__main__":
    main_guard(main)
    sys.exit(0)
