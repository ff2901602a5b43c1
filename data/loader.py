"""Batches from token shards, as pure functions of their arguments (exact resume, any world size).

A split (train or val) is the sorted list of shards in a data directory: files named *train*.bin or *val*.bin
(data/prepare.py's `{source}_{split}_{index:06d}.bin`, llm.c's and modded-nanogpt's `fineweb_train_000001.bin`)
or nanoGPT's headerless train.bin / val.bin. Each shard is memory-mapped, never read whole.

A shard of n tokens holds (n - 1) // seq_len non-overlapping windows of seq_len + 1 tokens, window i =
tokens[i*seq_len : i*seq_len + seq_len + 1] (inputs are its first seq_len tokens, targets its last seq_len). Windows
never cross a shard boundary, and the split's windows are numbered shard after shard.

Training order (train_batch): global sample g (counted over all steps, ranks and micro-steps) is window
perm(seed, epoch)[g % n_sequences] with epoch = g // n_sequences, where perm is a fresh permutation per epoch from
NumPy's legacy RandomState([seed, epoch]) (its stream is frozen across NumPy versions). So each epoch visits every
window exactly once, and a batch depends only on (seed, step, position in the global batch): resuming at step k,
or running with another number of processes, sees the same global batches.
"""

import glob
import json
import os

import numpy as np
import torch

from data.shards import MAGIC, NANOGPT_NAMES, read_tokens
from errors import ConfigError, DataError

SPLITS = ("train", "val")


def find_shards(data_dir: str, split: str, source: str = "") -> list:
    """Sorted paths of the `split` shards in `data_dir` (*{split}*.bin, which includes nanoGPT's {split}.bin);
    `source` (data.source) names the data.prepare source that makes a missing directory."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir} is a file, not a directory; set data.dir to the directory "
                        f"that holds the shards")
    if not os.path.isdir(data_dir):
        from config import path_hint

        hint = path_hint(data_dir)
        make = f"python -m data.prepare {source or '<source>'} --out {data_dir}"
        raise DataError(f"data directory {data_dir} does not exist (from {os.getcwd()}){hint}"
                        f"{'' if hint else f'; create it with `{make}`, or fix data.dir'}"
                        f"{'' if source or hint else ' (sources: python -m data.prepare --help)'}")
    other = SPLITS[1 - SPLITS.index(split)]
    paths = sorted(glob.glob(os.path.join(glob.escape(data_dir), f"*{split}*.bin")))
    ambiguous = [p for p in paths if other in os.path.basename(p)]
    if ambiguous:
        raise DataError(f"shard {ambiguous[0]} names both 'train' and 'val', so its split is ambiguous; rename it")
    if not paths:
        raise DataError(f"no {split} shards (*{split}*.bin) in {data_dir}; prepare the data with "
                        f"`python -m data.prepare <source> --out {data_dir}`")
    return paths


def check_one_format(data_dir: str) -> None:
    """A directory must not mix llm.c shards with nanoGPT's headerless train.bin/val.bin (they would be read as one
    split, the nanoGPT file's tokens appended to the shards')."""
    shards, nanogpt = [], []
    for path in sorted(glob.glob(os.path.join(glob.escape(data_dir), "*.bin"))):
        if not os.path.isfile(path):
            continue  # read_tokens names it
        with open(path, "rb") as f:
            magic = np.frombuffer(f.read(4).ljust(4, b"\0"), dtype="<i4")[0]
        (shards if magic == MAGIC else nanogpt if os.path.basename(path) in NANOGPT_NAMES else []).append(path)
    if shards and nanogpt:
        raise DataError(f"{data_dir} mixes llm.c shards ({os.path.basename(shards[0])}) and nanoGPT's headerless "
                        f"{os.path.basename(nanogpt[0])}; keep one format per directory (move the other files out)")


def tokenizer_vocab(data_dir: str) -> tuple[int | None, str]:
    """(the tokenizer's vocabulary size recorded in data_dir/meta.json, how to name it), or (None, why not)."""
    try:
        with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as f:
            tok = json.load(f)["tokenizer"]
        return int(tok["n_vocab"]), f"its tokenizer ({tok.get('name', '?')}, {tok['n_vocab']} tokens, meta.json)"
    except FileNotFoundError:
        return None, "it has no meta.json"
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its meta.json names no tokenizer size"


def recorded_max_tokens(data_dir: str) -> dict:
    """{shard path: its largest token id} from meta.json's shard_checks (written by data.prepare), for the shards
    whose file size is still the recorded one; any other shard is scanned (data/shards.py read_tokens)."""
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            checks = json.load(f).get("shard_checks") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    out = {}
    for name, info in checks.items() if isinstance(checks, dict) else ():
        path = os.path.join(data_dir, name)
        try:
            if isinstance(info, dict) and os.path.getsize(path) == info.get("bytes"):
                out[path] = int(info["max_token"])
        except (OSError, TypeError, ValueError, KeyError):
            pass
    return out


class TokenDataset:
    """One split of a data directory, cut into windows of seq_len + 1 tokens (see the module docstring).

    Validates every shard on construction (format, header, size, every token id < vocab_size, and < the tokenizer's
    own size when meta.json records it) and raises DataError. `notes` lists the checks that could not be made.
    """

    def __init__(self, data_dir: str, split: str, seq_len: int, vocab_size: int, fmt: str = "auto", source: str = ""):
        if seq_len < 1:
            raise ConfigError(f"sequence length {seq_len} must be positive")
        self.data_dir, self.split, self.seq_len, self.vocab_size = data_dir, split, seq_len, vocab_size
        self.paths = find_shards(data_dir, split, source)
        if fmt == "auto":
            check_one_format(data_dir)
        n_vocab, source = tokenizer_vocab(data_dir)
        known = recorded_max_tokens(data_dir)
        self.notes = []
        if n_vocab is not None and n_vocab < vocab_size:  # GPT-2's 50257 below the padded 50304
            self.shards = [read_tokens(p, n_vocab, fmt, why=source, known_max=known.get(p)) for p in self.paths]
        else:
            self.shards = [read_tokens(p, vocab_size, fmt, known_max=known.get(p)) for p in self.paths]
            if n_vocab is None:
                self.notes.append(f"{data_dir}: {source}, so token ids were checked against model.vocab_size "
                                  f"{vocab_size} only, not against the tokenizer's own size")
        counts = np.array([(len(s) - 1) // seq_len for s in self.shards], dtype=np.int64)
        # starts[k] = index of shard k's first window in the split's numbering
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.n_sequences = int(self.starts[-1])
        self.n_tokens = int(sum(len(s) for s in self.shards))
        if self.n_sequences == 0:
            raise DataError(f"the {split} split of {data_dir} has {self.n_tokens} tokens (longest shard "
                            f"{max(len(s) for s in self.shards)}), fewer than one block of seq_len + 1 = "
                            f"{seq_len + 1}; use a shorter sequence length or more data")
        self._perms = {}  # (seed, epoch) -> permutation: the current and the previous epoch only
        self._prefetched = {}  # device_batch: the next micro-batch, already on its way to the device

    def window(self, i: int) -> np.ndarray:
        """Window i of the split: seq_len + 1 consecutive tokens of one shard."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        start = (i - int(self.starts[k])) * self.seq_len
        return self.shards[k][start:start + self.seq_len + 1]

    def batch(self, windows) -> tuple:
        """(x, y) int64 CPU tensors of shape (len(windows), seq_len) for the given window indices."""
        buf = np.empty((len(windows), self.seq_len + 1), dtype=np.int64)
        for row, i in enumerate(windows):
            buf[row] = self.window(int(i))
        t = torch.from_numpy(buf)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        """The order of the windows in `epoch` (cached: a batch straddles at most two epochs)."""
        key = (seed, epoch)
        if key not in self._perms:
            perm = np.random.RandomState([seed, epoch]).permutation(self.n_sequences)
            # uint32 halves the memory of the cache (10B tokens / 1024 = 10M windows = 40 MB)
            self._perms = {k: p for k, p in self._perms.items() if k == (seed, epoch - 1)}
            self._perms[key] = perm.astype(np.uint32) if self.n_sequences < 2**32 else perm
        return self._perms[key]


def train_batch(ds: TokenDataset, seed: int, step: int, micro_step: int, rank: int, world_size: int,
                micro_batch: int, accum: int) -> tuple:
    """(x, y) for one micro-step of one rank: int64 CPU tensors (micro_batch, seq_len), y = x shifted by one.

    The global batch of `step` is B = micro_batch * world_size * accum sequences; this call returns its samples
    j = (micro_step * world_size + rank) * micro_batch + i, i < micro_batch, i.e. global samples g = step * B + j,
    each the window perm(seed, g // n_sequences)[g % n_sequences].
    """
    if not (0 <= rank < world_size and 0 <= micro_step < accum and micro_batch >= 1 and step >= 0):
        raise ValueError(f"bad batch position: step {step}, micro_step {micro_step}/{accum}, rank "
                         f"{rank}/{world_size}, micro_batch {micro_batch}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed {seed} must be in [0, 2**32) for the data order; choose another train.seed")
    n = ds.n_sequences
    first = step * micro_batch * world_size * accum + (micro_step * world_size + rank) * micro_batch
    g = np.arange(first, first + micro_batch, dtype=np.int64)
    windows = np.empty(micro_batch, dtype=np.int64)
    for epoch in np.unique(g // n):
        sel = g // n == epoch
        windows[sel] = ds.permutation(seed, int(epoch))[g[sel] % n]
    return ds.batch(windows)


def device_batch(ds: TokenDataset, seed: int, step: int, micro_step: int, rank: int, world_size: int,
                 micro_batch: int, accum: int, device, prefetch: bool | None = None) -> tuple:
    """train_batch(...) on `device`. With prefetch (default: on CUDA) the batch was read into pinned memory and its
    non_blocking copy started during the previous micro-step, and this call starts the next micro-batch's copy, so
    the host-to-device transfer overlaps the forward/backward (as nanoGPT pins). The batch is always the one
    train_batch gives for these arguments: a prefetched one is used only when every argument matches."""
    device = torch.device(device)
    prefetch = device.type == "cuda" if prefetch is None else prefetch
    pin = device.type == "cuda"

    def load(st, ms):
        x, y = train_batch(ds, seed, st, ms, rank, world_size, micro_batch, accum)
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    key = (seed, step, micro_step, rank, world_size, micro_batch, accum, str(device))
    cached = ds._prefetched.pop(key, None) if prefetch else None
    batch = cached if cached is not None else load(step, micro_step)
    if prefetch:
        nxt = (step, micro_step + 1) if micro_step + 1 < accum else (step + 1, 0)
        ds._prefetched = {(seed, *nxt, rank, world_size, micro_batch, accum, str(device)): load(*nxt)}
    return batch


def val_batches(ds: TokenDataset, val_tokens: int, micro_batch: int, rank: int, world_size: int) -> list:
    """This rank's share of the fixed validation set, as a list of (x, y) batches of at most micro_batch rows.

    The validation set is the first val_tokens // seq_len windows of the split, in order (all of them if the split
    is shorter); rank r takes windows r, r + world_size, ... Ranks may get different numbers of batches when the
    window count is not a multiple of world_size * micro_batch: reduce (loss sum, count), not per-rank means.
    """
    if not 0 <= rank < world_size or micro_batch < 1:
        raise ValueError(f"bad rank {rank}/{world_size} or micro_batch {micro_batch}")
    n = val_tokens // ds.seq_len
    if n < 1:
        raise ConfigError(f"data.val_tokens = {val_tokens} is less than one sequence of {ds.seq_len} tokens; "
                          f"raise it to at least {ds.seq_len}")
    mine = np.arange(rank, min(n, ds.n_sequences), world_size)
    return [ds.batch(mine[i:i + micro_batch]) for i in range(0, len(mine), micro_batch)]
