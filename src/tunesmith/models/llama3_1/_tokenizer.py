"""Tokenizer builders for this family (filled by the tokenizer work)."""

__all__: list[str] = []
