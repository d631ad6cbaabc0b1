"""Tokenizer bases (tiktoken, SentencePiece, byte-level BPE, tokenizer.json) and model tokenizers.

Plain-text bases: :class:`TikTokenBaseTokenizer`, :class:`SentencePieceBaseTokenizer`,
:class:`ByteLevelBPEBaseTokenizer` (vocab.json + merges.txt), :class:`HuggingFaceBaseTokenizer`
(tokenizer.json or a ``tokenizers.Tokenizer``). Model tokenizers: :class:`ChatModelTokenizer`
(a base + special tokens + a chat format; every family tokenizer is one) and
:class:`HuggingFaceModelTokenizer` (tokenizer.json + its Jinja chat template).
"""

from tunesmith.data.tokenizers._bpe import (
    GPT2_PATTERN,
    QWEN2_PATTERN,
    ByteLevelBPEBaseTokenizer,
    GPT2BaseTokenizer,
    HuggingFaceBaseTokenizer,
)
from tunesmith.data.tokenizers._chat_formats import (
    ChatFormat,
    ChatMLFormat,
    Chunk,
    GemmaChatFormat,
    InstChatFormat,
    Llama3ChatFormat,
    Llama4ChatFormat,
    Phi3ChatFormat,
    Phi4ChatFormat,
    Qwen3ChatFormat,
    get_chat_format,
    message_text,
)
from tunesmith.data.tokenizers._huggingface import HuggingFaceModelTokenizer, compile_chat_template
from tunesmith.data.tokenizers._model_tokenizer import ChatModelTokenizer
from tunesmith.data.tokenizers._sentencepiece import SentencePieceBaseTokenizer
from tunesmith.data.tokenizers._tiktoken import CL100K_PATTERN, TikTokenBaseTokenizer
from tunesmith.data.tokenizers._utils import (
    BaseTokenizer,
    ModelTokenizer,
    SpecialTokenSplitter,
    load_special_tokens,
    parse_hf_tokenizer_json,
    tokenize_messages_no_special_tokens,
    tokenize_sample,
    truncate,
    truncate_messages_tokens,
)

__all__ = [
    "BaseTokenizer",
    "ByteLevelBPEBaseTokenizer",
    "CL100K_PATTERN",
    "ChatFormat",
    "ChatMLFormat",
    "ChatModelTokenizer",
    "Chunk",
    "GPT2BaseTokenizer",
    "GPT2_PATTERN",
    "GemmaChatFormat",
    "HuggingFaceBaseTokenizer",
    "HuggingFaceModelTokenizer",
    "InstChatFormat",
    "Llama3ChatFormat",
    "Llama4ChatFormat",
    "ModelTokenizer",
    "Phi3ChatFormat",
    "Phi4ChatFormat",
    "QWEN2_PATTERN",
    "Qwen3ChatFormat",
    "SentencePieceBaseTokenizer",
    "SpecialTokenSplitter",
    "TikTokenBaseTokenizer",
    "compile_chat_template",
    "get_chat_format",
    "load_special_tokens",
    "message_text",
    "parse_hf_tokenizer_json",
    "tokenize_messages_no_special_tokens",
    "tokenize_sample",
    "truncate",
    "truncate_messages_tokens",
]
