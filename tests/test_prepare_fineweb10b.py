"""data.prepare fineweb10b-gpt2 without network: a fake Hub (a local directory laid out like kjj0/fineweb10B-gpt2,
served through monkeypatched huggingface_hub calls), resumable downloads, checks, and one error line offline."""

import hashlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import data.prepare as P
from data.loader import TokenDataset
from data.shards import read_tokens, write_shard
from errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
hf = pytest.importorskip("huggingface_hub")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A directory with the repository's first files (small llm.c shards) and the two Hub calls served from it."""
    root = tmp_path / "hub"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in P.fineweb10b_files(4):
        write_shard(str(root / name), rng.integers(0, 50257, size=3000, dtype=np.uint16))
    downloads = []

    def dataset_info(self, repo_id, files_metadata=False, timeout=None, **kwargs):
        assert repo_id == "kjj0/fineweb10B-gpt2" and files_metadata
        siblings = [types.SimpleNamespace(rfilename=n, size=os.path.getsize(root / n),
                                          lfs=dict(sha256=hashlib.sha256((root / n).read_bytes()).hexdigest()))
                    for n in sorted(os.listdir(root))]
        return types.SimpleNamespace(siblings=siblings)

    def hf_hub_download(repo_id, filename, repo_type=None, local_dir=None, **kwargs):
        assert repo_type == "dataset"
        downloads.append(filename)
        dest = os.path.join(local_dir, filename)
        with open(root / filename, "rb") as src, open(dest, "wb") as dst:
            dst.write(src.read())
        return dest

    monkeypatch.setattr(hf.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(hf, "hf_hub_download", hf_hub_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return types.SimpleNamespace(root=root, downloads=downloads)


def test_download_checks_and_the_loader_reads_it(fake_hub, tmp_path):
    out = tmp_path / "fw"
    meta = P.prepare("fineweb10b-gpt2", str(out), shards=2, progress=False)
    assert fake_hub.downloads == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert meta["splits"]["train"]["tokens"] == 6000 and meta["splits"]["val"]["tokens"] == 3000
    assert json.loads((out / "meta.json").read_text())["shard_checks"]["fineweb_train_000002.bin"]["bytes"] == \
        os.path.getsize(out / "fineweb_train_000002.bin")
    for name in P.fineweb10b_files(2):  # data/shards.py's reader: the same tokens as the Hub's files
        np.testing.assert_array_equal(read_tokens(str(out / name), 50304), read_tokens(str(fake_hub.root / name)))
    train = TokenDataset(str(out), "train", 64, 50304, source="fineweb10b-gpt2")
    assert len(train.paths) == 2 and train.n_tokens == 6000

    # resumable: a rerun with more shards fetches only the new one
    fake_hub.downloads.clear()
    P.prepare("fineweb10b-gpt2", str(out), shards=3, progress=False)
    assert fake_hub.downloads == ["fineweb_train_000003.bin"]


def test_truncated_file_is_downloaded_again(fake_hub, tmp_path):
    out = tmp_path / "fw"
    P.prepare("fineweb10b-gpt2", str(out), shards=2, progress=False)
    path = out / "fineweb_train_000001.bin"
    path.write_bytes(path.read_bytes()[:-100])  # an interrupted download
    fake_hub.downloads.clear()
    P.prepare("fineweb10b-gpt2", str(out), shards=2, progress=False)
    assert fake_hub.downloads == ["fineweb_train_000001.bin"]
    assert path.read_bytes() == (fake_hub.root / "fineweb_train_000001.bin").read_bytes()


def test_corrupt_download_is_an_error_and_removed(fake_hub, tmp_path, monkeypatch):
    good = hf.hf_hub_download

    def corrupting(repo_id, filename, local_dir=None, **kwargs):
        dest = good(repo_id, filename, local_dir=local_dir, **kwargs)
        data = bytearray(open(dest, "rb").read())
        data[-1] ^= 0xFF  # same size, other bytes: only the sha256 notices
        open(dest, "wb").write(bytes(data))
        return dest

    monkeypatch.setattr(hf, "hf_hub_download", corrupting)
    with pytest.raises(DataError, match="sha256"):
        P.prepare("fineweb10b-gpt2", str(tmp_path / "fw"), shards=1, progress=False)
    assert not (tmp_path / "fw" / "fineweb_val_000000.bin").exists()


def test_complete_directory_needs_no_hub(tmp_path, monkeypatch):
    out = tmp_path / "fw"
    out.mkdir()
    for name in P.fineweb10b_files(1):
        write_shard(str(out / name), np.arange(500, dtype=np.uint16))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    meta = P.prepare("fineweb10b-gpt2", str(out), shards=1, progress=False)
    assert meta["splits"]["val"]["tokens"] == 500 and meta["shard_checks"]["fineweb_val_000000.bin"]["max_token"] == 499


def test_bad_arguments(tmp_path):
    with pytest.raises(Exception, match="--shards"):
        P.prepare("fineweb10b-gpt2", str(tmp_path / "x"), shards=0, progress=False)
    with pytest.raises(Exception, match="--shards"):
        P.prepare("shakespeare", str(tmp_path / "y"), shards=2, progress=False)
    (tmp_path / "z").mkdir()
    write_shard(str(tmp_path / "z" / "shakespeare_train_000000.bin"), np.arange(10, dtype=np.uint16))
    with pytest.raises(DataError, match="other shards"):
        P.prepare("fineweb10b-gpt2", str(tmp_path / "z"), shards=1, progress=False)


def test_unreachable_hub_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    p = subprocess.run([sys.executable, "-m", "data.prepare", "fineweb10b-gpt2", "--out", str(tmp_path / "fw"),
                        "--shards", "1"], cwd=REPO, capture_output=True, text=True, check=False,
                       env=dict(env, HF_ENDPOINT="http://127.0.0.1:9"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: cannot reach the Hugging Face Hub"), p.stderr
    assert "hf download kjj0/fineweb10B-gpt2" in p.stderr
