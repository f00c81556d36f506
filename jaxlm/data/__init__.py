"""Data: BPE tokenizer, token files with `batch_at`, and where the text comes from."""
