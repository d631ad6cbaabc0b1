"""SentencePiece-based tokenizer (Llama 2, Mistral, Gemma, Phi-3 ``tokenizer.model``)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.tokenizers._utils import check_file

__all__ = ["SentencePieceBaseTokenizer"]

_WHITESPACE_CHARS = [" ", "\n", "\t", "\r", "\v"]


class SentencePieceBaseTokenizer:
    """Plain-text SentencePiece tokenizer.

    SentencePiece models with ``add_dummy_prefix`` put a space before every encoded
    text, so ``encode(a) + encode(b) != encode(a + b)``. ``trim_leading_whitespace=True``
    encodes ``b`` as a continuation (as if it followed a newline), which is how
    messages inside one turn are joined.
    """

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        model_path = check_file(path, "SentencePiece model (tokenizer.model)")
        self.spm_model = spm.SentencePieceProcessor()
        try:
            self.spm_model.Load(str(model_path))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with little context
            raise ValueError(
                f"{model_path} is not a SentencePiece model; a tiktoken ranks file needs "
                "a tiktoken-based tokenizer (e.g. llama3_tokenizer)"
            ) from e
        self.path = str(model_path)
        self.vocab_size = self.spm_model.vocab_size()
        self.bos_id = self.spm_model.bos_id()
        self.eos_id = self.spm_model.eos_id()
        self.pad_id = self.spm_model.pad_id()
        self.encodes_whitespace = any(self.spm_model.encode(c) for c in _WHITESPACE_CHARS)
        self._prefix = "\n"
        self._encoded_prefix_len = len(self.spm_model.encode(self._prefix))

    def encode(
        self,
        text: str,
        add_bos: bool = True,
        add_eos: bool = True,
        trim_leading_whitespace: bool = False,
        prefix: str | None = None,
    ) -> list[int]:
        """Encode ``text``; see the class docstring for ``trim_leading_whitespace``.

        ``prefix`` (torchtune's argument): the text ``text`` is encoded after when trimming
        (default a newline; pass another where the vocabulary has no newline token).
        """
        if trim_leading_whitespace and self.encodes_whitespace:
            if prefix is None:
                prefix, skip = self._prefix, self._encoded_prefix_len
            else:
                skip = len(self.spm_model.encode(prefix))
            ids = self.spm_model.encode(prefix + text)[skip:]
        else:
            ids = self.spm_model.encode(text)
        if add_bos:
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, token_ids: list[int]) -> str:
        return self.spm_model.decode(list(token_ids))
