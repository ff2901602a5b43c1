"""Bits per byte of the validation text: the val loss made comparable across tokenizers.

    val_bpb = Σ cross-entropy (nats) of the target tokens / (ln 2 · Σ UTF-8 bytes of those tokens)

as nanochat's evaluate_bpb: a special token (GPT-2's <|endoftext|>, and the padding ids ≥ 50257) counts 0 bytes and
its loss is left out, since it stands for no text. The byte length of every token id comes from the tokenizer
(tiktoken's decode_single_token_bytes), once per run.
"""

import functools
import math

import torch


@functools.lru_cache(maxsize=4)
def token_byte_lengths(vocab_size: int) -> torch.Tensor:
    """int64 tensor (vocab_size,): UTF-8 byte length of each GPT-2 token id; 0 for <|endoftext|> and padding ids."""
    from data.tokenizer import EOT, N_VOCAB, get_gpt2_encoding

    enc = get_gpt2_encoding()
    lengths = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(min(vocab_size, N_VOCAB)):
        if i != EOT:
            lengths[i] = len(enc.decode_single_token_bytes(i))
    return lengths


def bits_per_byte(loss_nats_sum: float, n_bytes: int) -> float:
    return loss_nats_sum / (math.log(2) * n_bytes) if n_bytes else float("nan")
