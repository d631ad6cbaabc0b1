"""Gemma 2 uses the Gemma tokenizer."""

from tunesmith.models.gemma._tokenizer import GemmaTokenizer, gemma_tokenizer

__all__ = ["GemmaTokenizer", "gemma_tokenizer"]
