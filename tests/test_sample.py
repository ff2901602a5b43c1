"""Tests for sample.py: the printed samples (no leading <|endoftext|>), --out_dir as an alias of --ckpt, determinism
for a checkpoint/arguments/seed, one CPU thread by default, and every bad argument as one `error:` line."""

import dataclasses
import os

import pytest
import torch
from conftest import run_subprocess

import checkpoint as ckpt
import sample
from errors import main_guard
from model import GPT, model_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with one checkpoint of a small random GPT over GPT-2's vocabulary (as train.py writes)."""
    torch.manual_seed(0)
    cfg = model_config("gpt2", "tiny", n_layer=1, n_head=2, n_embd=16, block_size=32)
    out = str(tmp_path_factory.mktemp("sample_run"))
    ckpt.save_checkpoint(out, dict(step=1, model=GPT(cfg).state_dict(), model_config=dataclasses.asdict(cfg)), 1)
    return out


@pytest.fixture(autouse=True)
def keep_thread_count(monkeypatch):
    """sample.main sets torch's thread count for the process; give the test process its own back."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv):
    texts = sample.main(list(argv))
    return texts, capsys.readouterr().out


def test_no_prompt_starts_a_document_without_printing_endoftext(run_dir, capsys):
    texts, out = run(capsys, "--ckpt", run_dir, "--num_samples", "2", "--max_new_tokens", "12", "--seed", "3")
    assert len(texts) == 2 and texts[0] != texts[1]
    assert out == "".join(f"{t}\n---------------\n" for t in texts)
    for t in texts:
        assert not t.startswith("<|endoftext|>") and t
    assert torch.get_num_threads() == 1  # the default without OMP_NUM_THREADS


def test_output_is_deterministic_and_out_dir_is_an_alias_of_ckpt(run_dir, capsys):
    args = ["--max_new_tokens", "10", "--seed", "7"]
    a = run(capsys, "--ckpt", run_dir, *args)
    b = run(capsys, f"--out_dir={run_dir}", *args)  # nanoGPT's spelling
    c = run(capsys, "--out_dir", run_dir, *args)
    assert a == b == c
    assert run(capsys, "--ckpt", run_dir, "--max_new_tokens", "10", "--seed", "8") != a
    ckpt_file = ckpt.list_checkpoints(run_dir)[0][1]
    assert run(capsys, "--ckpt", ckpt_file, *args) == a  # the run dir's newest checkpoint, or the file itself


def test_a_prompt_is_printed_with_its_continuation(run_dir, capsys):
    texts, _ = run(capsys, "--ckpt", run_dir, "--prompt", "ROMEO:", "--max_new_tokens", "5")
    assert texts[0].startswith("ROMEO:") and len(texts[0]) > len("ROMEO:")
    # a prompt that itself starts a document keeps its <|endoftext|>: only the implicit one is dropped
    texts, _ = run(capsys, "--ckpt", run_dir, "--prompt", "<|endoftext|>ROMEO:", "--max_new_tokens", "5")
    assert texts[0].startswith("<|endoftext|>ROMEO:")


def test_omp_num_threads_is_respected(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    run(capsys, "--ckpt", run_dir, "--max_new_tokens", "2")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("argv,words", [
    ([], ["--ckpt", "required"]),
    (["--ckpt"], ["--ckpt", "expected one argument"]),
    (["--ckpt", "RUN", "--max_new_tokens", "ten"], ["--max_new_tokens", "'ten'"]),
    (["--ckpt", "RUN", "--nonsense"], ["unrecognized arguments: --nonsense"]),
    (["--ckpt", "RUN", "--max_new_tokens", "0"], ["--max_new_tokens", ">= 1"]),
    (["--out_dir=NOPE"], ["does not exist"]),
])
def test_bad_arguments_are_one_error_line(run_dir, capsys, argv, words):
    argv = [a.replace("RUN", run_dir).replace("NOPE", os.path.join(run_dir, "nope.pt")) for a in argv]
    with pytest.raises(SystemExit) as e:
        main_guard(lambda: sample.main(argv))
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured.err
    for w in words:
        assert w in lines[0]


def test_the_command_line(run_dir):
    """The real entry point: a sample on stdout, a bad flag as one error line and exit code 2."""
    ok = run_subprocess(["sample.py", f"--out_dir={run_dir}", "--max_new_tokens", "5"], env_extra={})
    assert ok.stdout.endswith("---------------\n") and "<|endoftext|>" not in ok.stdout.split("\n")[0]
    bad = run_subprocess(["sample.py", "--ckpt", run_dir, "--top_k", "x"], check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
