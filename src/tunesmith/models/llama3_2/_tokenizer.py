"""Llama 3.2 uses the Llama 3 tokenizer (same file, same special tokens)."""

from tunesmith.models.llama3._tokenizer import llama3_tokenizer
from tunesmith.models.llama3_1._tokenizer import llama3_1_system_preamble, llama3_1_tokenizer

__all__ = ["llama3_tokenizer", "llama3_1_tokenizer", "llama3_1_system_preamble"]
