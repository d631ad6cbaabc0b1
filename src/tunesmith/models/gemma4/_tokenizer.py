"""Gemma 4 tokenizer: ``tokenizer.json`` + the checkpoint's chat template.

The published checkpoints ship both (``tokenizer.json``, ``chat_template.jinja`` /
``tokenizer_config.json``). Without them, ``tunesmith.models.gguf.gguf_tokenizer_files`` of a
Gemma 4 GGUF file writes an equal ``tokenizer.json`` (SentencePiece-style BPE with byte
fallback; checked against llama.cpp's reference tokenizations).
"""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

gemma4_tokenizer = hf_chat_tokenizer_builder("gemma4_tokenizer", "Gemma 4", __name__)

__all__ = ["gemma4_tokenizer"]
