"""Evaluation beyond val loss: bits per byte, HellaSwag (llm.c's completion-style acc / acc_norm), eval.py.

The HellaSwag tests use small fixtures in the official JSONL format, written here, with answers known by hand: a
model with uniform logits (every ending costs ln V per token, so acc_norm picks ending 0 and acc the shortest
ending), and a model that is certain of the right ending."""

import contextlib
import json
import math
import os

import pytest
import torch
from conftest import train_args

from data.tokenizer import EOT, get_gpt2_encoding
from errors import DataError
from evals import hellaswag
from evals.bpb import token_byte_lengths
from evaluation import validation_loss

V = 50304
NULL = contextlib.nullcontext()

EXAMPLES = [
    {"ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."]},
    {"ctx": "The cat sat", "label": 0, "endings": ["on the mat.", "quietly by the warm fire all night long.",
                                                   "up.", "down on the floor near the door."]},
    {"ctx": "She opened the book and", "label": 1, "endings": ["cried loudly for an hour or so.", "read.",
                                                               "closed it again at once.", "slept."]},
]


def write_fixture(path, examples=EXAMPLES):
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    return str(path)


class Uniform(torch.nn.Module):
    """Logits that are all zero: every token costs ln V."""

    def forward(self, idx, targets=None, full_logits=False):
        return torch.zeros(*idx.shape, V), None


class Oracle(torch.nn.Module):
    """Certain of the right endings (their token rows are known): logit 30 on the next token of a right row."""

    def __init__(self, right_rows):
        super().__init__()
        self.right = {tuple(r) for r in right_rows}

    def forward(self, idx, targets=None, full_logits=False):
        logits = torch.zeros(*idx.shape, V)
        for i, row in enumerate(idx.tolist()):
            if any(tuple(row[:len(r)]) == r for r in self.right):
                for t in range(idx.shape[1] - 1):
                    logits[i, t, row[t + 1]] = 30.0
        return logits, None


def test_token_byte_lengths_and_bits_per_byte_by_hand():
    """bpb = Σ nats of the text tokens / (ln 2 · their bytes); <|endoftext|> is 0 bytes and its loss left out."""
    enc = get_gpt2_encoding()
    lengths = token_byte_lengths(V)
    text = " the quick brown fox, naïve café"
    ids = enc.encode_ordinary(text)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # every byte once
    assert lengths[EOT] == 0 and lengths[50257:].sum() == 0
    y = torch.tensor([ids[1:] + [EOT]])  # one EOT target
    x = torch.tensor([ids])
    loss, bpb = validation_loss(Uniform(), [(x, y)], "cpu", NULL, False, V)
    assert loss == pytest.approx(math.log(V))  # mean over every target, the EOT included
    n_text, n_bytes = len(ids) - 1, len(text.encode("utf-8")) - len(enc.decode_single_token_bytes(ids[0]))
    assert bpb == pytest.approx(n_text * math.log(V) / (math.log(2) * n_bytes))


def test_hellaswag_uniform_model_scores_as_computed_by_hand(tmp_path):
    """All-zero logits: each ending's mean loss is ln V, so acc_norm's argmin is ending 0 (label 0: 1 of 3); its
    summed loss is ln V · (its tokens), so acc picks the ending with the fewest tokens."""
    enc = get_gpt2_encoding()
    examples = hellaswag.load_examples(write_fixture(tmp_path / "hs.jsonl"))
    shortest = [min(range(4), key=lambda i: (len(enc.encode_ordinary(" " + ex["endings"][i])), i)) for ex in examples]
    expected_acc = sum(s == ex["label"] for s, ex in zip(shortest, examples)) / 3
    r = hellaswag.evaluate(Uniform(), examples, 1024, "cpu", NULL)
    assert r == dict(hellaswag_acc=pytest.approx(expected_acc), hellaswag_acc_norm=pytest.approx(1 / 3),
                     hellaswag_n=3)
    # ending tokens: [11, 6, 8, 9] (label 3), [4, 9, 2, 8] (label 0), [8, 2, 6, 2] (label 1: "read.", tied with
    # "slept." and first): only the third example's shortest ending is the right one
    assert shortest == [1, 2, 1] and expected_acc == pytest.approx(1 / 3)


def test_hellaswag_certain_model_gets_everything_right(tmp_path):
    enc = get_gpt2_encoding()
    examples = hellaswag.load_examples(write_fixture(tmp_path / "hs.jsonl"))
    right = [hellaswag.render(ex, enc)[0][ex["label"]] for ex in examples]
    assert hellaswag.evaluate(Oracle(right), examples, 1024, "cpu", NULL) == dict(
        hellaswag_acc=1.0, hellaswag_acc_norm=1.0, hellaswag_n=3)
    # a row longer than the window keeps its last block_size tokens: every ending token is still scored once
    rows, n_context, _ = hellaswag.render(examples[0], enc)  # endings of 11, 6, 8, 9 tokens
    total, mean = hellaswag.ending_losses(Uniform(), rows, n_context, 12, "cpu", NULL)
    assert total.tolist() == pytest.approx([n * math.log(V) for n in (11, 6, 8, 9)])


def test_hellaswag_file_checks(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1 is not a HellaSwag example"):
        hellaswag.load_examples(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        hellaswag.locate(str(tmp_path / "none.jsonl"))
    # the cached copy is checked against the sha256 recorded at download
    monkeypatch.setenv("NANOPTIM_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    cached.parent.mkdir(parents=True)
    write_fixture(cached)
    (cached.parent / "hellaswag_val.jsonl.sha256").write_text(f"{hellaswag.sha256(str(cached))}  x\n")
    assert hellaswag.locate("") == str(cached)
    with open(cached, "a") as f:
        f.write("\n")
    with pytest.raises(DataError, match="changed since it was downloaded"):
        hellaswag.locate("")


def test_hellaswag_download_error_is_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.setenv("NANOPTIM_CACHE", str(tmp_path / "cache"))

    def refuse(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="cannot download HellaSwag .* pass --eval.hellaswag_path=FILE"):
        hellaswag.locate("", log=lambda *a: None)


@pytest.mark.slow
def test_a_run_logs_bpb_and_hellaswag_and_eval_py_reproduces_them(text_data_dir, tmp_path, capsys):
    """eval.hellaswag on the fixture: val_bpb and HellaSwag in the eval records and final.json; eval.py on the
    finished run gives the same numbers as the run's last evaluation; stats.py and plot.py tables show them."""
    from eval import main as eval_main
    from metrics import read_records
    from train import main as train_main

    fixture = write_fixture(tmp_path / "hs.jsonl")
    run = str(tmp_path / "run")
    summary = train_main(train_args(text_data_dir, run, "--train.max_steps=4", "--eval.hellaswag=true",
                                    f"--eval.hellaswag_path={fixture}", "--eval.hellaswag_interval=4"))
    evals = [r for r in read_records(os.path.join(run, "metrics.jsonl")) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4] and all(r["val_bpb"] > 0 for r in evals)
    assert evals[0]["hellaswag_n"] == evals[1]["hellaswag_n"] == 3  # every 4 steps (step 0 too) and the end
    assert summary["val_bpb"] == evals[1]["val_bpb"] and summary["hellaswag_acc_norm"] == evals[1]["hellaswag_acc_norm"]
    out = str(tmp_path / "eval.json")
    again = eval_main(["--ckpt", run, "--hellaswag", "--hellaswag_path", fixture, "--batch", "4", "--out", out])
    assert again["step"] == 4 and again["val_loss"] == pytest.approx(summary["final_val_loss"], abs=1e-6)
    assert again["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-6)
    assert again["hellaswag_acc_norm"] == summary["hellaswag_acc_norm"]
    assert json.load(open(out)) == again
    import plot
    import stats

    table = plot.markdown_table(plot.load_runs([run]))
    assert "val bpb" in table and "hellaswag acc_norm" in table and f"{summary['val_bpb']:.4f}" in table
    report = stats.report(stats.load_groups([run], 3.28))
    assert "hellaswag acc_norm" in report and "final val bpb" in report
