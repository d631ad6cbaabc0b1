"""Code Llama 2 uses the Llama 2 tokenizer."""

from tunesmith.models.llama2._tokenizer import Llama2Tokenizer, llama2_tokenizer

__all__ = ["Llama2Tokenizer", "llama2_tokenizer"]
