"""Token shard files: write llm.c shards, read llm.c shards and nanoGPT's headerless .bin files.

Two on-disk formats hold a flat stream of GPT-2 token ids as little-endian uint16:

1. llm.c / modded-nanogpt shards (what `data/prepare.py` writes), as in llm.c's `dev/data/data_common.py`:
   a 256 x int32 header (1024 bytes) = [magic 20240520, version 1, token count, 0 ...], then the tokens.
2. nanoGPT's `train.bin` / `val.bin` (`data/openwebtext/prepare.py`): the tokens only, no header.

`data.format` chooses: "llmc" (every file must carry the header), "nanogpt" (headerless, whatever the first bytes),
or "auto": a file that starts with the magic is an llm.c shard (its version and size are checked); otherwise it is
read as headerless only when named exactly `train.bin` or `val.bin` (nanoGPT's names), and every other `.bin` file
must carry the header. Auto-detection refuses what it cannot tell apart, naming the setting that decides: a
train.bin whose first 1024 bytes look like an llm.c header with a damaged magic (its ints 3-255 are zero), and a
file that looks like uint32 tokens (every second uint16 of its first million is 0). That keeps a corrupt llm.c
shard, or a uint32 file, from being silently read as a stream of garbage tokens.
"""

import os

import numpy as np

from atomic import atomic_write
from errors import DataError

MAGIC = 20240520  # llm.c's magic number for GPT-2 token shards
VERSION = 1  # version 1 = uint16 tokens (llm.c uses version 2 for uint32 LLaMA-3 tokens)
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
NANOGPT_NAMES = ("train.bin", "val.bin")
_SCAN_CHUNK = 1 << 24  # tokens per chunk when scanning for the largest id (32 MiB of uint16)


def write_shard(path: str, tokens) -> None:
    """Write `tokens` (ints in [0, 65535]) as one llm.c shard: the 1024-byte header, then uint16 tokens.

    The file appears atomically (written to `path + ".tmp"`, then renamed), so an interrupted write never leaves
    a truncated shard behind.
    """
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ValueError(f"write_shard expects a 1-D token array, got shape {toks.shape}")
    if toks.size and (toks.min() < 0 or toks.max() >= 2**16):
        raise DataError(f"token ids for {path} must lie in [0, 65535] to fit uint16; "
                        f"this shard format only holds vocabularies of up to 65536 tokens")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, toks.size
    atomic_write(path, lambda f: (f.write(header.tobytes()), f.write(toks.astype("<u2", copy=False).tobytes())))


FORMATS = ("auto", "llmc", "nanogpt")
_UINT32_PROBE = 1 << 20  # uint16 words read to tell uint32 tokens from uint16 ones


def shard_layout(path: str, fmt: str = "auto") -> tuple[int, int]:
    """Validate the file at `path` and return (byte offset of the first token, number of tokens)."""
    if os.path.isdir(path):
        raise DataError(f"token file {path} is a directory, not a file; point data.dir at the directory holding it")
    if not os.path.isfile(path):
        raise DataError(f"token file {path} does not exist; run `python -m data.prepare` to create it")
    size = os.path.getsize(path)
    if fmt == "nanogpt":
        return _headerless(path, size)
    header = None
    if size >= HEADER_BYTES:
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    # The magic decides: a nanoGPT file would have to start with the token pair (55432, 308) to look like a
    # header, so a file that carries the magic is an llm.c shard whatever its name, and is checked as one.
    if header is not None and header[0] == MAGIC:
        version, n = int(header[1]), int(header[2])
        if version != VERSION:
            raise DataError(f"{path} has shard version {version}, but only version {VERSION} (uint16 GPT-2 tokens) "
                            f"is supported; re-create it with `python -m data.prepare`")
        if size != HEADER_BYTES + 2 * n:
            raise DataError(f"{path} is {size} bytes but its header promises {n} tokens "
                            f"({HEADER_BYTES + 2 * n} bytes); the file is truncated or corrupt, re-create it "
                            f"with `python -m data.prepare`")
        if n == 0:
            raise DataError(f"{path} holds no tokens; delete it or re-create the data with `python -m data.prepare`")
        return HEADER_BYTES, n
    if fmt == "llmc":
        raise DataError(f"{path} is not an llm.c shard (it does not start with the magic {MAGIC}) but data.format = "
                        f"'llmc'; re-create it with `python -m data.prepare`, or set --data.format=nanogpt if it is "
                        f"a headerless nanoGPT file")
    if os.path.basename(path) in NANOGPT_NAMES:
        if header is not None and not header[3:].any() and header[1] == VERSION:
            raise DataError(f"{path} looks like an llm.c shard whose magic number is damaged (found {int(header[0])}, "
                            f"then version {int(header[1])} and a zero-filled header), not like nanoGPT tokens; "
                            f"re-create it with `python -m data.prepare`, or set --data.format=nanogpt if it is a "
                            f"nanoGPT file")
        return _headerless(path, size)
    raise DataError(f"{path} does not start with the llm.c shard magic {MAGIC} (found "
                    f"{'a file shorter than the 1024-byte header' if header is None else int(header[0])}); "
                    f"only nanoGPT's train.bin/val.bin may be headerless, re-create the shard with "
                    f"`python -m data.prepare`")


def _headerless(path: str, size: int) -> tuple[int, int]:
    if size % 2:
        raise DataError(f"{path} has an odd size ({size} bytes), so it is not a stream of uint16 tokens; "
                        f"re-create it with `python -m data.prepare`")
    if size == 0:
        raise DataError(f"{path} is empty; delete it or re-create the data with `python -m data.prepare`")
    probe = np.fromfile(path, dtype="<u2", count=min(size // 2, _UINT32_PROBE))
    if len(probe) >= 64 and not probe[1::2].any() and probe[0::2].any():
        raise DataError(f"{path} looks like uint32 tokens (every second uint16 is 0), but nanoGPT .bin files hold "
                        f"uint16; convert it (np.fromfile(p, np.uint32).astype(np.uint16).tofile(p)) or re-create "
                        f"it with `python -m data.prepare`")
    return 0, size // 2


def read_tokens(path: str, vocab_size: int | None = None, fmt: str = "auto", why: str | None = None,
                known_max: int | None = None) -> np.memmap:
    """Memory-map the tokens of an llm.c shard or a nanoGPT .bin file as a read-only uint16 array.

    With `vocab_size`, also check that every token id is < vocab_size (a chunked scan for the maximum, so a
    multi-GB shard costs one sequential read and no extra memory); `why` says where that bound comes from.
    known_max: the shard's largest id as data.prepare recorded it (meta.json shard_checks, for a file of the
    recorded size): checked instead of scanning, so a start does not read every shard of a 10B-token dataset.
    """
    offset, n = shard_layout(path, fmt)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(n,))
    if vocab_size is not None:
        if known_max is None:
            check_vocab(tokens, vocab_size, path, why)
        elif known_max >= vocab_size:
            check_vocab(tokens, vocab_size, path, why)  # the recorded id is too large: scan, for the message
    return tokens


def max_token(tokens: np.ndarray) -> int:
    """The largest id in `tokens`, scanned in chunks so a memmap is never copied whole into RAM."""
    return max(int(tokens[i:i + _SCAN_CHUNK].max()) for i in range(0, len(tokens), _SCAN_CHUNK))


def check_vocab(tokens: np.ndarray, vocab_size: int, path: str, why: str | None = None) -> None:
    """Raise DataError if some id in `tokens` (read from `path`) is >= vocab_size."""
    top = max_token(tokens)
    if top >= vocab_size:
        if why:
            raise DataError(f"{path} holds token id {top}, but {why} cannot produce ids >= {vocab_size}; the file is "
                            f"foreign or corrupt, re-create it with `python -m data.prepare`")
        raise DataError(f"{path} holds token id {top}, but the model's vocab_size is {vocab_size}; the data was "
                        f"made with another tokenizer, or raise model.vocab_size to at least {top + 1}")
