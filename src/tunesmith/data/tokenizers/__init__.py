"""Tokenizer bases: tiktoken, SentencePiece, byte-level BPE, generic HF tokenizer.json."""
