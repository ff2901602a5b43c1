"""Data: token shards (shards.py), the GPT-2 tokenizer (tokenizer.py), corpus preparation (prepare.py,
`python -m data.prepare <source> --out DIR`) and the deterministic batch loader (loader.py).

Nothing is imported here, so `python -m data.prepare` does not pay for torch and the loader does not pay for
tiktoken; import the submodules directly, e.g. `from data.loader import TokenDataset, train_batch, val_batches`.
"""
