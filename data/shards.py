"""Token shard files: write llm.c shards, read llm.c shards and nanoGPT's headerless .bin files.

Two on-disk formats hold a flat stream of GPT-2 token ids as little-endian uint16:

1. llm.c / modded-nanogpt shards (what `data/prepare.py` writes), as in llm.c's `dev/data/data_common.py`:
   a 256 x int32 header (1024 bytes) = [magic 20240520, version 1, token count, 0 ...], then the tokens.
2. nanoGPT's `train.bin` / `val.bin` (`data/openwebtext/prepare.py`): the tokens only, no header.

A file that starts with the magic is an llm.c shard (its version and size are checked). Otherwise it is read as
headerless only when named exactly `train.bin` or `val.bin` (nanoGPT's names); every other `.bin` file must carry
the header. That keeps a corrupt llm.c shard from being silently read as a stream of garbage tokens.
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


def shard_layout(path: str) -> tuple[int, int]:
    """Validate the file at `path` and return (byte offset of the first token, number of tokens)."""
    if not os.path.isfile(path):
        raise DataError(f"token file {path} does not exist; run `python -m data.prepare` to create it")
    size = os.path.getsize(path)
    header = None
    if size >= HEADER_BYTES:
        header = np.fromfile(path, dtype="<i4", count=3)
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
    if os.path.basename(path) in NANOGPT_NAMES:
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
    return 0, size // 2


def read_tokens(path: str, vocab_size: int | None = None) -> np.memmap:
    """Memory-map the tokens of an llm.c shard or a nanoGPT .bin file as a read-only uint16 array.

    With `vocab_size`, also check that every token id is < vocab_size (a chunked scan for the maximum, so a
    multi-GB shard costs one sequential read and no extra memory).
    """
    offset, n = shard_layout(path)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(n,))
    if vocab_size is not None:
        check_vocab(tokens, vocab_size, path)
    return tokens


def max_token(tokens: np.ndarray) -> int:
    """The largest id in `tokens`, scanned in chunks so a memmap is never copied whole into RAM."""
    return max(int(tokens[i:i + _SCAN_CHUNK].max()) for i in range(0, len(tokens), _SCAN_CHUNK))


def check_vocab(tokens: np.ndarray, vocab_size: int, path: str) -> None:
    """Raise DataError if some id in `tokens` (read from `path`) is >= vocab_size."""
    top = max_token(tokens)
    if top >= vocab_size:
        raise DataError(f"{path} holds token id {top}, but the model's vocab_size is {vocab_size}; the data was "
                        f"made with another tokenizer, or raise model.vocab_size to at least {top + 1}")
