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
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import launch
import parallel
import resume
from atomic import atomic_write
from config import changed_keys_text, load_config, to_dict
from data.loader import TokenDataset, device_batch, val_batches
from errors import ConfigError, Interrupted, NanoptimError, NonFiniteError, main_guard
from evaluation import Evaluator
from flops import FlopsCounter, mfu, model_flops_per_token
from metrics import MetricsLogger, code_version
from model import GPT, model_config
from optimizers import build_optimizer
from schedule import lr_factor

# train.nonfinite = "skip" gives up after this many skipped steps in a row: a run that cannot take a single good
# step any more (e.g. fp overflow on every batch) should stop at its last good checkpoint, not spin to max_steps.
MAX_SKIPS_IN_A_ROW = 10

def batch_layout(tc, seq_len: int, world_size: int) -> tuple[int, int]:
    """(micro_batch, accum): the global batch (train.batch_tokens, fixed whatever the world size) as
    world_size × micro_batch sequences per micro-step × accum micro-steps."""
    if tc.batch_tokens % seq_len:
        raise ConfigError(f"train.batch_tokens = {tc.batch_tokens} is not a multiple of the sequence length "
                          f"{seq_len}; use a multiple, e.g. {max(1, tc.batch_tokens // seq_len) * seq_len}")
    global_seqs = tc.batch_tokens // seq_len
    if global_seqs % world_size:
        raise ConfigError(f"train.batch_tokens = {tc.batch_tokens} ({global_seqs} sequences of {seq_len}) cannot be "
                          f"split evenly over {world_size} processes; use a multiple of {world_size * seq_len} tokens")
    share = global_seqs // world_size
    # micro_batch is an upper bound (memory): the largest divisor of this process's share that fits, so one config
    # runs on 1, 2 or 4 processes with the same global batch. 0 = the whole share at once (no accumulation).
    micro_batch = max(d for d in range(1, share + 1) if share % d == 0 and d <= (tc.micro_batch or share))
    return micro_batch, share // micro_batch


def precision(dtype: str, device_type: str):
    """(dtype name, autocast context): bf16 autocast on GPU (weights and optimizer stay fp32), plain fp32 on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = dtype if dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    autocast = (torch.autocast(device_type=device_type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    return dtype, autocast


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(rec: dict, max_steps: int, eta_s: float) -> str:
    """The log line of a train record: compute = time in training steps, wall = since the run started (all
    invocations), eta = the remaining steps at this invocation's pace so far (evaluations and checkpoints included)."""
    return (f"step {rec['step']}/{max_steps} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e}" +
            (f" adamw_lr {rec['adamw_lr']:.2e}" if "adamw_lr" in rec else "") + f" | gnorm {rec['grad_norm']:.3f} | "
            f"{rec['tokens_per_s'] / 1e3:.1f}k tok/s" + (f" | mfu {rec['mfu'] * 100:.1f}%" if rec.get("mfu") else "") +
            (f" | clamped {rec['clamped_fraction']:.2%}" if rec.get("clamped_fraction") else "") +
            f" | compute {duration(rec['elapsed_s'])} | wall {duration(rec['wall_s'])} | eta {duration(eta_s)}")


def summary_line(summary: dict) -> str:
    """The last line of a run (train.py and run.sh print it)."""
    return ("final val loss {final_val_loss:.4f} (best {best_val_loss:.4f}) after {steps} steps, {tokens:,} tokens, "
            "{total_flops:.3e} FLOPs, wall {wall}".format(**summary, wall=duration(summary.get("wall_s", 0.0))))


def group_lrs(optimizer) -> dict:
    """The current lr of each kind of param group: "lr" (the optimizer's own rule), "adamw_lr" (its backup AdamW)."""
    out = {}
    for group in optimizer.param_groups:
        out.setdefault("adamw_lr" if group.get("backup_adamw") else "lr", group["lr"])
    out.setdefault("lr", out.get("adamw_lr"))  # routing left the optimizer's own rule no parameter
    return out


def build_and_resume(cfg, mcfg, device, ddp: bool, rank: int, master: bool, log):
    """(model, raw_model, optimizer, TrainingState): the seeded model and its optimizer, resumed from the run
    directory's newest good checkpoint if it has one; model is raw_model compiled and/or DDP-wrapped as configured.
    Rank 0 chooses the checkpoint (the run dir may be on a filesystem only it writes), every rank loads it; only
    then does rank 0 write into the run directory for the first time."""
    torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    raw_model = GPT(mcfg).to(device)
    # train.parallel = "fsdp" (parallel.py): parameters, gradients and optimizer state sharded over the ranks
    fsdp = ddp and cfg.train.parallel == "fsdp"
    if cfg.train.parallel == "fsdp" and not ddp:
        log("note: train.parallel = 'fsdp' with one process (no torchrun): nothing to shard, the model is unwrapped")
    if cfg.train.activation_checkpointing:
        parallel.checkpoint_activations(raw_model)
    if fsdp:
        parallel.shard_model(raw_model, device, dist.get_world_size())
    optimizer = build_optimizer(raw_model, cfg.optimizer.method, cfg.optimizer.settings)
    if fsdp:
        optimizer = parallel.shard_optimizer(optimizer)
    state = None

    def choose():
        nonlocal state
        state, bad = resume.choose_checkpoint(cfg, log)
        return (state["path"] if state else None), bad

    resume_path, bad_checkpoints = resume.from_master(ddp, master, choose)
    counters = FlopsCounter(model_flops_per_token(mcfg))
    run = resume.agree(ddp, lambda: resume.apply_checkpoint(state, resume_path, raw_model, optimizer, mcfg, cfg,
                                                            counters, rank, device.type))
    run.code = code_version() if master else None
    if run.resumed:
        log(f"resumed from step {run.start_step} in {cfg.logging.run_dir}")
    def prepare():  # rank 0's first writes; a failure reaches every rank as one error (no rank left waiting)
        try:
            resume.prepare_run_dir(cfg, bad_checkpoints, log, run.code, run.branched_from)
        except OSError as e:
            raise (launch.run_dir_error(e, cfg.logging.run_dir) or e) from None

    resume.from_master(ddp, master, prepare)
    model = torch.compile(raw_model) if cfg.train.compile else raw_model
    if ddp and not fsdp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, raw_model, optimizer, run


def clip_gradients(params, clip_value: float, clip_norm: float) -> tuple[float, float | None]:
    """(gradient norm before the norm clip, fraction of gradient entries clamped or None): first clamp every entry to
    [-clip_value, clip_value] (train.grad_clip_value, as braintools' Lion; 0 = off), then scale the whole gradient to
    norm ≤ clip_norm (train.grad_clip; 0 = no clipping, the norm is still measured)."""
    clamped = None
    if clip_value > 0:
        grads = [p.grad for p in params if p.grad is not None]
        clamped = sum(int((g.abs() > clip_value).sum()) for g in grads) / max(1, sum(g.numel() for g in grads))
        torch.nn.utils.clip_grad_value_(params, clip_value, foreach=True)
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else float("inf"), foreach=True)
    return norm.item(), clamped


def forward_backward(model, train_ds, tc, step: int, rank: int, world_size: int, micro_batch: int, accum: int,
                     device, autocast, ddp: bool) -> float:
    """Forward and backward over this step's global batch (gradients accumulated over `accum` micro-steps; DDP syncs
    them on the last one only, FSDP reduce-scatters them then); returns the mean training loss over all ranks."""
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(accum):
        x, y = device_batch(train_ds, tc.seed, step, micro_step, rank, world_size, micro_batch, accum, device)
        sync = not ddp or micro_step == accum - 1
        with parallel.grad_sync(model, sync), autocast:  # DDP's no_sync / FSDP2's set_requires_gradient_sync
            _, loss = model(x, y)
        (loss / accum).backward()
        loss_sum += loss.detach()
    if ddp:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    return loss_sum.item() / accum


def train(cfg, log=print) -> dict:
    ddp, rank, local_rank, world_size, device = launch.setup_distributed(cfg.train.device)
    master = rank == 0
    if not master:
        log = lambda *a, **k: None
    stop = launch.StopRequest()
    previous = {s: signal.signal(s, stop) for s in launch.STOP_SIGNALS}
    try:
        return _train(cfg, ddp, rank, world_size, device, master, log, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        resume.unlock_run_dir(cfg.logging.run_dir)
        if ddp:
            dist.destroy_process_group()


def _train(cfg, ddp, rank, world_size, device, master, log, stop) -> dict:
    t_start = time.time()
    tc, run_dir, device_type = cfg.train, cfg.logging.run_dir, device.type
    m = cfg.model
    mcfg = model_config(m.arch, m.size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                        vocab_size=m.vocab_size, bias=m.bias, dropout=m.dropout)
    seq_len = mcfg.block_size
    micro_batch, accum = batch_layout(tc, seq_len, world_size)
    if tc.micro_batch and micro_batch != tc.micro_batch:
        log(f"note: micro_batch {micro_batch} (train.micro_batch = {tc.micro_batch} is an upper bound; "
            f"{tc.batch_tokens // seq_len // world_size} sequences per process)")

    # ---- data. Setup reads and checks everything (data, run dir, checkpoint) before writing anything, so bad input
    # leaves the run directory exactly as it was; under DDP every rank raises the same error (resume.agree).
    train_ds, val_ds = resume.agree(ddp, lambda: tuple(
        TokenDataset(cfg.data.dir, split, seq_len, mcfg.vocab_size, cfg.data.format, cfg.data.source)
        for split in ("train", "val")))
    for note in dict.fromkeys(train_ds.notes + val_ds.notes):
        log(f"note: {note}")
    val_set = val_batches(val_ds, cfg.data.val_tokens, micro_batch, rank, world_size)
    log(f"data {cfg.data.dir}: train {train_ds.n_tokens:,} tokens ({len(train_ds.paths)} shard(s); this run reads "
        f"{tc.max_steps * tc.batch_tokens:,} = {tc.max_steps * tc.batch_tokens / train_ds.n_tokens:.2f} epochs), "
        f"val {val_ds.n_tokens:,} tokens (evaluates on the first "
        f"{min(cfg.data.val_tokens // seq_len, val_ds.n_sequences) * seq_len:,})")

    dtype, autocast = precision(tc.dtype, device_type)

    model, raw_model, optimizer, run = build_and_resume(cfg, mcfg, device, ddp, rank, master, log)
    counters = run.counters
    if (done := resume.finished_summary(run, cfg, ddp, master)) is not None:  # a rerun of a finished run
        longer = launch.command_with(f"--train.max_steps={2 * tc.max_steps}", f"--logging.run_dir={run_dir}",
                                     "--checkpoint.allow_config_change=true")
        log(f"{run_dir} holds a finished run ({tc.max_steps} steps, final.json): nothing to do; to train it on: "
            f"`{longer}` (the schedule is recomputed for the new length)")
        return done
    logger = MetricsLogger(run_dir, to_dict(cfg), wandb_mode=cfg.logging.wandb, project=cfg.logging.wandb_project,
                           run_name=cfg.logging.run_name or os.path.basename(os.path.normpath(run_dir)),
                           group=cfg.logging.group, enabled=master,
                           resume_step=run.start_step - 1 if run.resumed else None, code=run.code)
    evaluate = Evaluator(cfg, model, val_set, device, autocast, ddp, rank, world_size, mcfg, logger, log)
    gpu_name = torch.cuda.get_device_name(device) if device_type == "cuda" else None
    log(f"model {cfg.model.arch}/{cfg.model.size} ({mcfg.n_layer} layers × {mcfg.n_head} heads × {mcfg.n_embd} wide, "
        f"context {mcfg.block_size}): {raw_model.param_counts()['total'] / 1e6:.2f}M parameters | "
        f"{world_size} process(es) × micro_batch {micro_batch} × accum {accum} × {seq_len} tokens = "
        f"{tc.batch_tokens} tokens/step | optimizer {cfg.optimizer.name} ({cfg.optimizer.method}) | "
        f"device {device} {dtype}")

    wall_before = run.wall_s  # wall time of the earlier invocations

    def save(step):
        run.wall_s = wall_before + time.time() - t_start
        resume.save_checkpoint(run, step, raw_model, optimizer, cfg, mcfg, master, device_type, log)

    # ---- the training loop
    params = [p for p in raw_model.parameters() if p.requires_grad]
    max_steps, last_val, skips_in_a_row = tc.max_steps, None, 0
    window_s, window_tokens = 0.0, 0  # compute time and tokens since the last log line (for tokens/s)
    t_loop = time.time()
    for step in range(run.start_step, max_steps):
        factor = lr_factor(step, cfg.schedule, max_steps, run.cooldown_start)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

        if step % tc.eval_interval == 0:
            last_val = evaluate(step, run)
            if tc.stop_at_target and run.target_reached:
                break  # train.stop_at_target: the run ends here, at the first evaluation below the target

        t0 = time.time()
        train_loss = forward_backward(model, train_ds, tc, step, rank, world_size, micro_batch, accum, device,
                                      autocast, ddp)
        grad_norm, clamped = clip_gradients(params, tc.grad_clip_value, tc.grad_clip)
        if math.isfinite(train_loss) and math.isfinite(grad_norm):
            skips_in_a_row = 0
            if run.steps_since_skip is not None:
                run.steps_since_skip += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counters.add_step(tc.batch_tokens, optimizer.last_step_flops())
        else:
            optimizer.zero_grad(set_to_none=True)
            skips_in_a_row += 1
            handle_nonfinite(run, step, train_loss, params, tc.nonfinite, skips_in_a_row, log)
        dt = time.time() - t0  # the .item() calls above waited for the GPU, so this is the step's real time
        run.elapsed_s += dt
        window_s, window_tokens = window_s + dt, window_tokens + tc.batch_tokens

        if step % tc.log_interval == 0 or step == max_steps - 1:
            tok_s = window_tokens / max(window_s, 1e-9)
            rec = dict(step=step, loss=train_loss, **group_lrs(optimizer), grad_norm=grad_norm, **counters.as_dict(),
                       elapsed_s=run.elapsed_s, wall_s=wall_before + time.time() - t_start, tokens_per_s=tok_s,
                       skipped=run.skipped, clamped_fraction=clamped,
                       mfu=mfu(counters.model_flops_per_token * tok_s, gpu_name, world_size))
            logger.log_train({k: v for k, v in rec.items() if v is not None})  # mfu only on a known GPU, ...
            eta = (time.time() - t_loop) / (step + 1 - run.start_step) * (max_steps - step - 1)
            log(progress_line(rec, max_steps, eta))
            window_s, window_tokens = 0.0, 0

        done = step + 1
        checkpoint_due = cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0
        signum = stop.agreed(ddp, device)  # SIGINT / SIGTERM since the last step
        if checkpoint_due and done < max_steps:
            save(done)
        if (signum or tc.stop_after and done - run.start_step >= tc.stop_after) and done < max_steps:
            if not checkpoint_due:
                save(done)
            logger.finish(None)
            if signum:
                raise Interrupted(f"{signal.Signals(signum).name} after step {done}: checkpoint "
                                  f"{os.path.join(run_dir, f'ckpt_{done:08d}.pt')} written; rerun the same command "
                                  f"to resume", signum)
            log(f"stopping after {tc.stop_after} steps in this invocation (train.stop_after); rerun to continue")
            return dict(steps=done, stopped_early=True)

    # ---- the end: a final evaluation and checkpoint, and final.json (the run's completion marker)
    at_target = bool(tc.stop_at_target and run.target_reached and run.target_reached["step"] < max_steps)
    end = run.target_reached["step"] if at_target else max_steps
    if at_target:
        save(end)
    elif run.start_step < max_steps or last_val is None:
        last_val = evaluate(max_steps, run, final=True)
        save(max_steps)
    summary = dict(steps=end, best_val_loss=run.best_val, final_val_loss=last_val, **counters.as_dict(),
                   elapsed_s=run.elapsed_s, skipped_steps=run.skipped,
                   wall_s=wall_before + time.time() - t_start,  # summed over every invocation of the run
                   target_val_loss=tc.target_val_loss or None, target_reached=run.target_reached,
                   stopped_at_target=at_target, **evaluate.last, code=run.code)
    if master:
        atomic_write(os.path.join(run_dir, "final.json"), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    logger.finish(summary)
    return summary


def handle_nonfinite(run, step: int, train_loss: float, params, policy: str, skips_in_a_row: int, log) -> None:
    """A step with a non-finite loss or gradient norm (its update was not applied): raise NonFiniteError, or count it
    as skipped (train.nonfinite = "skip"). Every rank sees the same all-reduced loss and gradient norm, so every
    rank takes the same branch."""
    what = "loss" if not math.isfinite(train_loss) else "gradient"
    if policy == "stop":
        raise NonFiniteError(f"non-finite {what} at step {step} ({run.last_good_text()}); {run.resume_hint()}, "
                             f"or set --train.nonfinite=skip to skip such steps")
    if not parallel.all_finite(params):  # per shard under FSDP, then all-reduced
        raise NonFiniteError(f"non-finite {what} at step {step} because the weights are non-finite, which "
                             f"skipping cannot repair ({run.last_good_text()}); {run.resume_hint()}")
    run.skipped += 1
    run.steps_since_skip = 0  # recovering: checkpoints are not good until resume.RECOVERY_STEPS updates in a row
    if skips_in_a_row > MAX_SKIPS_IN_A_ROW:
        raise NonFiniteError(f"non-finite {what} at {skips_in_a_row} steps in a row, up to step {step} "
                             f"({run.last_good_text()}); {run.resume_hint()}")
    log(f"step {step}: non-finite {what}, update skipped (train.nonfinite = skip; {run.skipped} skipped so far)")


def print_plan(cfg, plan_args: list[str]) -> list[str]:
    """`--plan`: the cost of the run (plan.py), without data or a GPU."""
    import plan

    m = cfg.model
    mcfg = model_config(m.arch, m.size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                        vocab_size=m.vocab_size, bias=m.bias, dropout=m.dropout)
    lines = plan.plan(cfg, mcfg, plan.parse_plan_options(plan_args), batch_layout)
    print("\n".join(lines))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Overrides: --section.key=value, "
                                     "e.g. --optimizer.name=lion --train.max_steps=100")
    parser.add_argument("config", nargs="?", default=None, help="TOML config (default: configs/tiny_cpu.toml)")
    parser.add_argument("--plan", action="store_true", help="print what the run will cost (plan.py) and exit; "
                        "--plan.gpu=h100 --plan.gpus=8 --plan.mfu=0.4")
    args, overrides = parser.parse_known_args(argv)
    plan_args = [a for a in overrides if a.startswith("--plan.")]
    overrides = [a for a in overrides if not a.startswith("--plan.")]
    launch.ARGV = list(sys.argv[1:] if argv is None else argv)
    launch.check_earlier_fatal_error()
    if args.plan or plan_args:
        return print_plan(load_config(args.config, overrides), plan_args)
    try:
        cfg = load_config(args.config, overrides)
        if int(os.environ.get("RANK", 0)) == 0:  # the full config goes to RUN_DIR/config.toml
            print(f"config {args.config or 'configs/tiny_cpu.toml'} (the keys that differ from the defaults; all of "
                  f"them go to {os.path.join(cfg.logging.run_dir, 'config.toml')}):\n{changed_keys_text(cfg)}")
        try:
            summary = train(cfg)
            if int(os.environ.get("RANK", 0)) == 0 and "final_val_loss" in summary:
                print(summary_line(summary))
            return summary
        except OSError as e:
            err = launch.run_dir_error(e, cfg.logging.run_dir)
            if err is None:
                raise
            raise err from None
    except NanoptimError as e:
        launch.record_fatal_error(e)
        raise


if __name__ == "__main__":
    launch.run_process(lambda: main_guard(main))  # a torchrun worker ends inside (os._exit: see run_process)
    sys.exit(0)
