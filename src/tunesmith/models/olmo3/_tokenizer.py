"""OLMo 3 tokenizer: ``tokenizer.json`` + the checkpoint's chat template."""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

olmo3_tokenizer = hf_chat_tokenizer_builder("olmo3_tokenizer", "OLMo 3", __name__)

__all__ = ["olmo3_tokenizer"]
