"""data.prepare's hub sources without network: one `error:` line at once (no retries, no traceback), and a local copy
of the dataset (--dataset DIR) prepared with the real `datasets` library and no network at all."""

import os
import subprocess
import sys
import time

import pytest

import data.prepare as P
from errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
datasets = pytest.importorskip("datasets")


def prepare_cli(*args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return subprocess.run([sys.executable, "-m", "data.prepare", *args], cwd=REPO, capture_output=True, text=True,
                          check=False, env=dict(clean, **env))


def test_unreachable_hub_is_one_line_at_once(tmp_path):
    # A Hub endpoint that refuses connections: the same failure as no network, whether or not this machine has one.
    t0 = time.time()
    p = prepare_cli("fineweb", "--out", str(tmp_path / "fw"), HF_ENDPOINT="http://127.0.0.1:9")
    took = time.time() - t0
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: cannot reach the Hugging Face Hub"), p.stderr
    assert "--dataset DIR" in p.stderr and "hf download HuggingFaceFW/fineweb" in p.stderr
    assert took < 30  # datasets' own 5 retries alone sleep 23 s, on top of the imports
    assert not (tmp_path / "fw").exists()


def test_connection_errors_of_the_loader_and_the_probe(tmp_path, monkeypatch):
    calls = []

    def offline_load(path, **kwargs):
        calls.append(path)
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline_load)
    # Offline mode: no probe; the loader's ConnectionError becomes the one-line error.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face Hub to stream HuggingFaceFW/fineweb "
                                        r"\(ConnectionError: Couldn't reach"):
        P.prepare("fineweb", str(tmp_path / "a"), workers=1, progress=False)
    assert calls == ["HuggingFaceFW/fineweb"]

    # Online mode: the probe's network error stops it before the loader (and its retries) is called.
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub

    class ConnectError(Exception):  # what httpx raises; recognised by name
        pass

    def no_network(self, *a, **k):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", no_network)
    with pytest.raises(DataError, match="ConnectError: .*name resolution.*--dataset DIR"):
        P.prepare("openwebtext", str(tmp_path / "b"), workers=1, progress=False)
    assert calls == ["HuggingFaceFW/fineweb"]

    # Any answer of the Hub (here: no such repository) means it is reachable: the loader is asked.
    def not_found(self, *a, **k):
        raise ValueError("404 Repository Not Found")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", not_found)
    with pytest.raises(DataError, match="cannot reach"):  # the (offline) loader's error, after it was called
        P.prepare("fineweb", str(tmp_path / "c"), dataset="someone/fineweb-copy", workers=1, progress=False)
    assert calls[-1] == "someone/fineweb-copy"


def write_parquet(path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"text": texts, "id": [str(i) for i in range(len(texts))]}), path)


@pytest.mark.parametrize("with_readme", [False, True])
def test_local_copy_of_a_hub_dataset(tmp_path, monkeypatch, with_readme):
    # What `hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/10BT/*' --local-dir DIR` leaves
    # (with_readme: a full download, whose README.md declares the hub's configs, sample-10BT among them).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the local copy needs no network at all
    local = tmp_path / "fineweb"
    texts = [f"Document number {i} says hello to the world." for i in range(200)]
    write_parquet(str(local / "sample" / "10BT" / "000_00000.parquet"), texts)
    write_parquet(str(local / "sample" / "100BT" / "000_00000.parquet"), ["other sample"] * 5)
    if with_readme:
        (local / "README.md").write_text("---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n"
                                         "    path: sample/10BT/*\n- config_name: sample-100BT\n  data_files:\n"
                                         "  - split: train\n    path: sample/100BT/*\n---\n")
    meta = P.prepare("fineweb", str(tmp_path / "out"), dataset=str(local), workers=1, val_fraction=0.1,
                     progress=False)
    docs = sum(s["documents"] for s in meta["splits"].values())
    # only the sample-10BT config: the README's files, or without it the config's folder sample/10BT
    assert docs == 200
    assert meta["inputs"] == str(local) + (" (config sample-10BT)" if with_readme else "/sample/10BT")
    # a folder that is only some data files (no config folder, no README): all of them are the data
    flat = P.prepare("fineweb", str(tmp_path / "flat"), dataset=str(local / "sample"), workers=1, val_fraction=0.1,
                     progress=False)
    assert sum(s["documents"] for s in flat["splits"].values()) == 205 and flat["inputs"] == str(local / "sample")
    if not with_readme:
        with pytest.raises(DataError, match="has no config sample-350BT .*no folder sample/350BT"):
            P.prepare("fineweb", str(tmp_path / "o350"), dataset=str(local), name="sample-350BT", workers=1,
                      progress=False)
        meta = P.prepare("fineweb", str(tmp_path / "o100"), dataset=str(local), name="sample-100BT", workers=1,
                         val_fraction=0.1, progress=False)
        assert meta["inputs"] == str(local / "sample" / "100BT")

    with pytest.raises(DataError, match="is not a directory"):
        P.prepare("fineweb", str(tmp_path / "out2"), dataset=str(tmp_path / "nope"), workers=1, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        P.prepare("fineweb", str(tmp_path / "out3"), dataset=str(tmp_path / "empty"), workers=1, progress=False)
