"""OLMo 2 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

olmo2_tokenizer = hf_chat_tokenizer_builder("olmo2_tokenizer", "OLMo 2", __name__)

__all__ = ["olmo2_tokenizer"]
