"""FSDP2 (train.parallel = "fsdp", parallel.py, optimizers/sharded_ns.py) on CPU with gloo: 2 and 4 sharded ranks
train like 1 process without sharding (losses, final weights and optimizer state within fp32 rounding), for the
elementwise and the Newton–Schulz optimizers; the checkpoints are the full state dicts of an unsharded run, so
they move between world sizes and between ddp and fsdp; and each rank holds ~1/N of the parameter and optimizer
bytes.

One spawn per world size runs every case (tiny model: 2 layers × 64 wide); the test functions check its results.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_subprocess, train_args, train_losses

from model import GPT, model_config
from optimizers import build_optimizer

STEPS, SAVE_AT, ACCUM = 6, 3, 2
CASES = {  # large lrs, so that 6 steps move the model visibly; NS in fp32 (bf16 would hide fp32-level agreement)
    "adamw": ("adamw", dict(lr=3e-3)),
    "lion": ("lion", dict(lr=1e-3)),
    "muon": ("muon", dict(lr=0.05, adamw_lr=3e-3, ns_dtype="float32")),
    "lionmuon": ("lionmuon", dict(lr=5e-3, lion_lr=1e-3, period=2.0, ns_dtype="float32")),
    # the standard iteration: with Gram NS (fp32 "auto") OLion's low-rank sign-momentum amplifies the runs'
    # fp32-level gradient differences to ~1.2e-5 in the loss, past this test's 1e-5 (Gram NS is ~10x more
    # sensitive in the tiny singular values it squares, docs/optimizers.md §5.7); muon, lionmuon and normuon run it
    "olion": ("olion", dict(lr=3e-3, ns_dtype="float32", ns_method="standard")),
    "leo": ("leo", dict(lr=3e-3)),
    "normuon": ("normuon", dict(lr=0.05, adamw_lr=3e-3, ns_dtype="float32")),
    # bf16 NS (as on CUDA): its buffers cross gloo as fp16 bit patterns. The NS itself is bit-identical
    # (test_sharded_ns_is_bit_identical), but bf16 turns the runs' fp32-level gradient differences into bf16-level
    # ones: the weights then differ by about as much as bf16 NS differs from fp32 NS (~3% of the distance moved)
    "muon_bf16": ("muon", dict(lr=0.05, adamw_lr=3e-3, ns_dtype="bfloat16")),
}
LOOSE = {"muon_bf16"}
CASES_AT = {2: list(CASES), 4: ["adamw", "lion", "muon", "lionmuon", "olion", "leo"]}
FACTORS = [0.3, 1.0, 0.9, 0.8, 0.6, 0.4]  # the schedule: group["lr"] = base_lr * factor
VOCAB, SEQ, BATCH = 96, 16, 8


def make_model():
    torch.manual_seed(0)
    return GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=64, block_size=SEQ, vocab_size=VOCAB))


def global_batch():
    # the same 8 sequences every step, so that the loss visibly falls (random tokens are unlearnable)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1000))
    return x, torch.roll(x, -1, dims=1)


def train(model, opt, steps, rank=0, world_size=1):
    """Each step: the global batch, this rank's BATCH/world_size sequences as ACCUM micro-batches (FSDP syncs the
    gradients on the last one); the loss is the mean over the global batch."""
    import parallel

    losses = []
    x, y = global_batch()
    share = BATCH // world_size
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    micro = share // ACCUM
    for step in steps:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * FACTORS[step]
        total = torch.zeros(())
        for m in range(ACCUM):
            with parallel.grad_sync(model, m == ACCUM - 1):
                _, loss = model(x[m * micro:(m + 1) * micro], y[m * micro:(m + 1) * micro])
            (loss / ACCUM).backward()
            total += loss.detach() / ACCUM
        if world_size > 1:
            dist.all_reduce(total)
        losses.append(total.item() / world_size)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def sharded(cfg, world_size):
    import parallel

    model = make_model()
    parallel.shard_model(model, torch.device("cpu"), world_size)
    return model, parallel.shard_optimizer(build_optimizer(model, *cfg))


def _worker(rank, world_size, tmp, cases=tuple(CASES)):
    import parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    results = {"ns_exact": ns_exact(rank, world_size)}
    for case in cases:
        cfg = CASES[case]
        model, opt = sharded(cfg, world_size)
        losses = train(model, opt, range(SAVE_AT), rank, world_size)
        msd, osd = parallel.full_state_dicts(model, opt)
        if rank == 0:
            torch.save({"model": msd, "opt": osd}, f"{tmp}/{case}_fsdp{world_size}.pt")
        losses += train(model, opt, range(SAVE_AT, STEPS), rank, world_size)
        memory = parallel.shard_bytes(model, opt)
        final_model, final_opt = parallel.full_state_dicts(model, opt)
        # resume from the 1-process (unsharded) checkpoint the parent wrote
        ck = torch.load(f"{tmp}/{case}_ws1.pt")
        model2, opt2 = sharded(cfg, world_size)
        parallel.load_full_state(model2, opt2, ck["model"], ck["opt"])
        resumed = train(model2, opt2, range(SAVE_AT, STEPS), rank, world_size)
        results[case] = dict(losses=losses, resumed_from_ws1=resumed, memory=memory, final_model=final_model,
                             final_opt=final_opt)
    torch.save(results, f"{tmp}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def ns_exact(rank, world_size):
    """max |sharded_orthogonalize − orthogonalize| on this rank's rows, per NS dtype (wide, tall, square, uneven)."""
    from optimizers.newton_schulz import orthogonalize
    from optimizers.sharded_ns import shard_rows, sharded_orthogonalize

    torch.manual_seed(0)
    shapes = [(192, 64), (64, 64), (256, 64), (64, 256), (10, 7)]
    mats = [torch.randn(s) for s in shapes]
    starts = [sum(shard_rows(r, world_size)[:rank]) for r, _ in shapes]
    shards = [m[s:s + shard_rows(m.size(0), world_size)[rank]] for m, s in zip(mats, starts)]
    errors, outs = {}, {}
    for dtype, method in (("float32", "auto"), ("bfloat16", "auto"), ("float32", "standard")):
        ref = orthogonalize(mats, 5, "kellerjordan", dtype, distributed=False, ns_method=method)
        out = outs[dtype, method] = sharded_orthogonalize(shards, shapes, 5, "kellerjordan", dtype, ns_method=method)
        errors[dtype if method == "auto" else f"{dtype}, {method}"] = max(
            (o.double() - f[s:s + len(o)].double()).abs().max().item() if len(o) else 0.0
            for o, f, s in zip(out, ref, starts))
        assert out[0].dtype == getattr(torch, dtype)
    # fp32 "auto" ran Gram NS on the rectangular matrices: other bits than the standard iteration
    assert not torch.equal(outs["float32", "auto"][0], outs["float32", "standard"][0])
    return errors


def single_process(cfg, steps, checkpoint=None):
    model = make_model()
    opt = build_optimizer(model, *cfg)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["opt"])
    return model, opt, train(model, opt, steps)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process: the straight run, its checkpoint at SAVE_AT, its final state."""
    import parallel

    tmp = tmp_path_factory.mktemp("fsdp_ref")
    out = {}
    for case, cfg in CASES.items():
        model, opt, first = single_process(cfg, range(SAVE_AT))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{tmp}/{case}_ws1.pt")
        rest = train(model, opt, range(SAVE_AT, STEPS))
        out[case] = dict(losses=first + rest, model=model.state_dict(), opt=opt.state_dict(),
                         memory=parallel.shard_bytes(model, opt),
                         scalar_state=sum(v.element_size() for st in opt.state.values() for v in st.values()
                                          if torch.is_tensor(v) and v.ndim == 0),
                         planned={(n, r): parallel.planned_shard_bytes(model, opt, n, r) for n in (2, 4)
                                  for r in range(n)})
    return tmp, out


@pytest.fixture(scope="module")
def spawned(reference):
    tmp, _ = reference
    runs = {}
    for world_size in (2, 4):
        os.environ.pop("RANK", None)
        mp.spawn(_worker, args=(world_size, str(tmp), CASES_AT[world_size]), nprocs=world_size, join=True)
        runs[world_size] = [torch.load(f"{tmp}/rank{r}.pt") for r in range(world_size)]
        if os.path.exists(f"{tmp}/rendezvous"):
            os.remove(f"{tmp}/rendezvous")
    return runs


def close(a, b, rel=1e-4, origin=None):
    """‖a − b‖ ≤ rel·‖b − origin‖ (+ a tiny floor), or all but 0.1% of the entries equal to 1e-4: a few entries may
    legitimately differ by more than rounding (AdamW amplifies rounding where v ≈ 0; a sign method flips sign(u)
    where u ≈ 0, by 2·lr)."""
    a, b = a.double(), b.double()
    scale = (b - (origin.double() if origin is not None else 0)).norm()
    few = ((a - b).abs() > 1e-7 + 1e-4 * b.abs()).double().mean() <= 1e-3
    return bool((a - b).norm() <= rel * scale + 1e-9 or few)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_equals_one_process(spawned, reference, case, world_size):
    """Losses over 6 steps, and the gathered weights and optimizer state at the end, = 1 process without FSDP."""
    _, ref = reference
    if case not in CASES_AT[world_size]:
        pytest.skip(f"{case} runs on 2 ranks only (test time)")
    init = make_model().state_dict()
    got = spawned[world_size][0][case]
    tol = 30 if case in LOOSE else 1
    assert got["losses"] == pytest.approx(ref[case]["losses"], rel=1e-5 * tol, abs=1e-6 * tol)
    assert ref[case]["losses"][-1] < ref[case]["losses"][0] - 0.1  # the model did move
    assert list(got["final_model"]) == list(ref[case]["model"])
    for name, t in ref[case]["model"].items():
        assert close(got["final_model"][name], t, 0.1 if case in LOOSE else 1e-3, init[name]), (case, name)
    sd, rsd = got["final_opt"], ref[case]["opt"]
    assert sd["param_groups"] == rsd["param_groups"]
    assert sorted(sd["state"]) == sorted(rsd["state"])
    for i, entry in rsd["state"].items():
        assert sorted(sd["state"][i]) == sorted(entry)
        for key, v in entry.items():
            w = sd["state"][i][key]
            if torch.is_tensor(v):
                assert w.shape == v.shape and close(w, v, 0.1 if case in LOOSE else 1e-3), (case, i, key)
            else:
                assert w == v
    # the other ranks see the same losses
    assert all(r[case]["losses"] == got["losses"] for r in spawned[world_size])


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_ns_is_bit_identical(spawned, world_size):
    """Owner-placed NS from row shards (2 all_to_alls) = NS of the whole matrices in one process, bit for bit, with
    either ns_method."""
    for r in spawned[world_size]:
        assert r["ns_exact"] == {"float32": 0.0, "bfloat16": 0.0, "float32, standard": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_checkpoints_move_between_world_sizes(spawned, reference, world_size):
    """An unsharded 1-process checkpoint resumes on N sharded ranks, and an N-rank FSDP checkpoint resumes on one
    unsharded process, each with the straight run's next losses."""
    tmp, ref = reference
    for case in CASES_AT[world_size]:
        cfg = CASES[case]
        straight = ref[case]["losses"][SAVE_AT:]
        tol = 30 if case in LOOSE else 1
        got = spawned[world_size][0][case]["resumed_from_ws1"]
        assert got == pytest.approx(straight, rel=1e-5 * tol, abs=1e-6 * tol), case
        ck = torch.load(f"{tmp}/{case}_fsdp{world_size}.pt")
        _, _, resumed = single_process(cfg, range(SAVE_AT, STEPS), ck)
        assert resumed == pytest.approx(straight, rel=1e-5 * tol, abs=1e-6 * tol), case


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_per_rank_memory_is_a_shard(spawned, reference, world_size):
    """Parameters + optimizer state per rank (local numel × element size) ≈ 1/N of the unsharded figure, and the
    ranks' shards add up to it."""
    _, ref = reference
    for case in CASES_AT[world_size]:
        full = ref[case]["memory"]
        per_rank = [r[case]["memory"] for r in spawned[world_size]]
        for key in ("params", "optimizer_state"):
            whole = ref[case]["scalar_state"] if key == "optimizer_state" else 0  # 0-d counters: on every rank
            assert sum(m[key] for m in per_rank) == full[key] + (world_size - 1) * whole, (case, key)
            assert max(m[key] for m in per_rank) <= full[key] / world_size * 1.1, (case, key)
        # parallel.planned_shard_bytes (docs/fsdp.md's table) predicts each rank's shards exactly
        assert per_rank == [ref[case]["planned"][world_size, r] for r in range(world_size)], case


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    import parallel

    x, y = global_batch()
    grads = []
    for recompute in (False, True):
        model = make_model()
        if recompute:
            parallel.checkpoint_activations(model)
        _, loss = model(x, y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == grads[1][0]
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_soap_is_refused_under_fsdp():
    from config import load_config
    from errors import ConfigError

    with pytest.raises(ConfigError, match="soap"):
        load_config(None, ["--optimizer.name=soap", "--train.parallel=fsdp"])
    with pytest.raises(ConfigError, match="train.parallel"):
        load_config(None, ["--train.parallel=zero3"])


def test_shard_rows_and_ns_bytes():
    from optimizers.sharded_ns import ns_bytes_per_step, shard_rows

    assert shard_rows(10, 4) == [3, 3, 3, 1] and shard_rows(5, 4) == [2, 2, 1, 0] and shard_rows(8, 2) == [4, 4]
    # two 8×4 matrices on 2 ranks: each has one owner; the other rank's 4 rows go there and back
    assert ns_bytes_per_step([(8, 4), (8, 4)], 2, 4) == 2 * 2 * (4 * 4) * 4


@pytest.mark.slow
def test_train_py_fsdp_matches_one_process_and_resumes_across_ddp_and_fsdp(text_data_dir, tmp_path):
    """train.py under torchrun with --train.parallel=fsdp (2 gloo ranks, 4 micro-steps each; activation
    checkpointing in one of the runs): the losses of one unsharded process; a run stopped under FSDP resumes in
    one process, and one stopped in one process resumes under FSDP, with the straight run's next losses."""
    import sys

    from train import main as train_main

    extra = ["--train.max_steps=4", "--train.micro_batch=2", "--optimizer.name=muon", "--optimizer.ns_dtype=float32",
             "--train.grad_clip_value=0.5"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    one, a, b = (str(tmp_path / name) for name in ("one", "fsdp_then_one", "one_then_fsdp"))
    train_main(train_args(text_data_dir, one, *extra))
    run_subprocess([*torchrun, *train_args(text_data_dir, a, *extra, "--train.parallel=fsdp", "--train.stop_after=2",
                                           "--train.activation_checkpointing=true")])
    train_main(train_args(text_data_dir, a, *extra))  # one process, ddp (the default): the FSDP checkpoint resumes
    # a subprocess: a live process's record in RUN_DIR/.lock (resume.lock_run_dir) would refuse the torchrun after it
    run_subprocess(["train.py", *train_args(text_data_dir, b, *extra, "--train.stop_after=2")])
    run_subprocess([*torchrun, *train_args(text_data_dir, b, *extra, "--train.parallel=fsdp")])
    ref = train_losses(one)
    assert sorted(ref) == list(range(4))
    for run in (a, b):
        got = train_losses(run)
        assert sorted(got) == list(range(4)), run
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-5), (run, step)
    final = {run: torch.load(os.path.join(run, "ckpt_00000004.pt"), weights_only=True) for run in (one, a, b)}
    torch.manual_seed(1337)  # train.py's initial model (train.seed of configs/tiny_cpu.toml)
    init = GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=64, block_size=64)).state_dict()
    for name, t in final[one]["model"].items():
        assert close(final[a]["model"][name], t, 1e-3, init[name]), name
        assert close(final[b]["model"][name], t, 1e-3, init[name]), name
