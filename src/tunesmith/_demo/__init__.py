"""Data and config components for ``make demo`` (``python -m tunesmith.demo``)."""

from tunesmith._demo.components import pirate_chat_dataset, smollm2_gguf_tokenizer

__all__ = ["pirate_chat_dataset", "smollm2_gguf_tokenizer"]
