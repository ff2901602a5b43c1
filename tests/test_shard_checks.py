"""Token-id checks at start without reading every shard: data.prepare records each shard's size and largest id in
meta.json (shard_checks); the loader trusts a record whose file size matches and scans any other shard."""

import json
import os

import numpy as np
import pytest

import data.shards as shards
from data.loader import TokenDataset
from data.prepare import prepare
from errors import DataError


@pytest.fixture()
def prepared(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely. " * 400, encoding="utf-8")
    out = str(tmp_path / "out")
    prepare("text", out, [str(text)], progress=False, val_fraction=0.5)
    return out


def test_prepare_records_each_shards_size_and_largest_id(prepared):
    meta = json.load(open(os.path.join(prepared, "meta.json")))
    for split in ("train", "val"):
        for name in meta["splits"][split]["shards"]:
            info = meta["shard_checks"][name]
            tokens = shards.read_tokens(os.path.join(prepared, name))
            assert info == dict(bytes=os.path.getsize(os.path.join(prepared, name)), max_token=int(tokens.max()))


def test_a_recorded_shard_is_not_scanned_and_a_changed_one_is(prepared, monkeypatch):
    scans = []
    real = shards.check_vocab

    def counting(tokens, *a, **k):
        scans.append(len(tokens))
        return real(tokens, *a, **k)

    monkeypatch.setattr(shards, "check_vocab", counting)
    TokenDataset(prepared, "train", 16, 50304)
    assert scans == []  # every shard's check came from meta.json
    name = json.load(open(os.path.join(prepared, "meta.json")))["splits"]["train"]["shards"][0]
    path = os.path.join(prepared, name)
    tokens = np.array(shards.read_tokens(path))
    tokens[5] = 50300  # a padding id GPT-2 never produces, in a shard of another size than recorded
    shards.write_shard(path, np.concatenate([tokens, tokens[:10]]))
    with pytest.raises(DataError, match="holds token id 50300"):
        TokenDataset(prepared, "train", 16, 50304)
    assert scans  # scanned, since its size no longer matches the record



def test_prefetched_batches_are_the_batches(prepared, monkeypatch):
    """device_batch with prefetch (on CUDA by default; forced here on the CPU) gives exactly train_batch's batches, in
    order, from any starting step (a resume), across micro-steps and step boundaries."""
    import torch

    from data.loader import device_batch, train_batch

    ds = TokenDataset(prepared, "train", 16, 50304)
    plain = [train_batch(ds, 3, s, m, 1, 2, 2, 3) for s in range(5, 9) for m in range(3)]
    import data.loader as loader

    reads = []
    real = loader.train_batch
    monkeypatch.setattr(loader, "train_batch", lambda *a: (reads.append(a[2:4]), real(*a))[1])
    got = [device_batch(ds, 3, s, m, 1, 2, 2, 3, "cpu", prefetch=True) for s in range(5, 9) for m in range(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, got))
    # each micro-batch was read once, one ahead of its use (the first call also reads its own)
    assert reads == [(5, 0)] + [(s, m) for s in range(5, 10) for m in range(3)][1:13]
    # a different position than the prefetched one (e.g. after an evaluation changed nothing, or a rerun) still
    # gets its own batch
    x, _ = device_batch(ds, 3, 2, 1, 1, 2, 2, 3, "cpu", prefetch=True)
    assert torch.equal(x, train_batch(ds, 3, 2, 1, 1, 2, 2, 3)[0])
