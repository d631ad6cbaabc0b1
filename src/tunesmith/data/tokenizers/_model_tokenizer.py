"""``ChatModelTokenizer``: a plain-text tokenizer + special tokens + a chat format.

Every family tokenizer (Llama 3, Qwen, Gemma, Phi, ...) is one of these with its own
defaults, so they share one interface (docs/architecture.md):
``encode``/``decode``, ``bos_id``/``eos_id``/``pad_id``/``stop_tokens``, ``max_seq_len``,
``tokenize_messages(messages, add_end_tokens=True) -> (tokens, mask)`` and
``__call__(sample)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunesmith.data._messages import Message
from tunesmith.data._prompt_templates import PromptTemplateInterface, get_prompt_template
from tunesmith.data.tokenizers._bpe import HuggingFaceBaseTokenizer
from tunesmith.data.tokenizers._chat_formats import ChatFormat, Chunk, get_chat_format
from tunesmith.data.tokenizers._chat_tools import (
    common_prefix_len,
    mask_by_prefixes,
    reasoning_token_spans,
    refuse_tool_shapes,
)
from tunesmith.data.tokenizers._utils import (
    SpecialTokenSplitter,
    tokenize_sample,
    truncate_messages_tokens,
)

__all__ = ["ChatModelTokenizer"]


class ChatModelTokenizer:
    """Model tokenizer: formats messages with ``chat_format`` and encodes them.

    Args:
        base: plain-text tokenizer with ``encode(text, add_bos, add_eos)`` and ``decode(ids)``
            (tiktoken, SentencePiece or ``tokenizers`` based).
        special_tokens: ``{token string: id}``; these strings are split out of any text
            (as Hugging Face tokenizers do) and skipped by ``decode`` by default.
        chat_format: how a conversation is laid out (see ``_chat_formats``).
        bos_id, eos_id, pad_id: ids; ``stop_tokens`` defaults to ``[eos_id]``.
        max_seq_len: truncate ``tokenize_messages`` output to this many tokens.
        prompt_template: applied to messages before the chat format; a template object,
            a dotted path or a ``{role: [prepend, append]}`` mapping.
        truncation_type: ``right`` (keep the start) or ``left`` (keep the end).
    """

    def __init__(
        self,
        base: Any,
        special_tokens: Mapping[str, int],
        chat_format: ChatFormat,
        *,
        bos_id: int | None,
        eos_id: int,
        pad_id: int | None = None,
        stop_tokens: list[int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        if truncation_type not in ("left", "right"):
            raise ValueError(f"truncation_type must be 'left' or 'right', got {truncation_type!r}")
        if max_seq_len is not None and max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be a positive integer or null, got {max_seq_len}")
        self.base = base
        for name in ("path", "merges_file"):  # the files, for cache keys and repr
            if isinstance(getattr(base, name, None), str):
                setattr(self, name, getattr(base, name))
        self.special_tokens = dict(special_tokens)
        self._id_to_special = {v: k for k, v in self.special_tokens.items()}
        self._splitter = SpecialTokenSplitter(self.special_tokens)
        self.chat_format = chat_format
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else 0
        self.stop_tokens = list(stop_tokens) if stop_tokens is not None else [eos_id]
        self.max_seq_len = max_seq_len
        self.prompt_template: PromptTemplateInterface | None = get_prompt_template(prompt_template)
        self.truncation_type = truncation_type

    @classmethod
    def from_tokenizer_object(
        cls,
        tokenizer: Any,
        *,
        chat_format: str | ChatFormat,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
        stop_tokens: list[str] | None = None,
        special_tokens: Mapping[str, int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ) -> ChatModelTokenizer:
        """Build from an in-memory ``tokenizers.Tokenizer`` (e.g. made from a GGUF vocabulary).

        Args:
            tokenizer: a ``tokenizers.Tokenizer``.
            chat_format: a format object or a name: ``llama3``, ``chatml``, ``qwen3``,
                ``gemma``, ``phi3``, ``phi4``, ``inst``.
            eos_token, bos_token, pad_token: token strings (must be in the vocabulary).
            stop_tokens: token strings that end generation (default: ``[eos_token]``).
            special_tokens: ``{string: id}``; default: the tokenizer's added tokens plus
                bos/eos/pad.
        """
        base = HuggingFaceBaseTokenizer.from_tokenizer_object(
            tokenizer, bos_token=bos_token, eos_token=eos_token
        )
        specials = dict(special_tokens) if special_tokens is not None else base.added_tokens()
        for token in (bos_token, eos_token, pad_token, *(stop_tokens or [])):
            if token is not None and token not in specials:
                idx = tokenizer.token_to_id(token)
                if idx is None:
                    raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
                specials[token] = idx
        fmt = get_chat_format(chat_format) if isinstance(chat_format, str) else chat_format
        return cls(
            base,
            specials,
            fmt,
            bos_id=base.bos_id,
            eos_id=specials[eos_token],
            pad_id=specials[pad_token] if pad_token is not None else None,
            stop_tokens=[specials[t] for t in stop_tokens] if stop_tokens else None,
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )

    @property
    def vocab_size(self) -> int:
        return max(self.base.vocab_size, max(self.special_tokens.values(), default=-1) + 1)

    def token_id(self, token: str) -> int:
        """The id of a special token string."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token of this tokenizer") from None

    def encode_text(self, text: str, continuation: bool = False) -> list[int]:
        """Encode text in which special-token strings become their ids (no BOS/EOS added).

        ``continuation`` (SentencePiece) encodes the leading text without the dummy-prefix
        space, as the continuation of preceding text.
        """
        ids: list[int] = []
        for i, piece in enumerate(self._splitter.split(text)):
            if isinstance(piece, int):
                ids.append(piece)
            elif continuation and i == 0:
                ids.extend(
                    self.base.encode(
                        piece, add_bos=False, add_eos=False, trim_leading_whitespace=True
                    )
                )
            else:
                ids.extend(self.base.encode(piece, add_bos=False, add_eos=False))
        return ids

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Encode plain text; special-token strings in it are encoded as special tokens."""
        ids = self.encode_text(text)
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Decode ids; special tokens are dropped, or written as their strings."""
        out: list[str] = []
        run: list[int] = []
        for idx in token_ids:
            idx = int(idx)
            special = self._id_to_special.get(idx)
            if special is None:
                run.append(idx)
                continue
            if run:
                out.append(self.base.decode(run))
                run = []
            if not skip_special_tokens:
                out.append(special)
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def tokenize_messages(
        self,
        messages: list[Message],
        add_end_tokens: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[list[int], list[bool]]:
        """Format and encode a conversation (and the row's tool schemas ``tools``).

        Formats whose official template renders tools (Llama 3.x, Qwen2.5, Qwen3) render
        ``tools``, ``tool_calls`` and ``tool`` results as that template does; the others
        raise a one-line ``ValueError`` for them. A message with ``mask_reasoning`` has the
        tokens of its reasoning text (where the format renders it) masked.

        Returns:
            ``(tokens, mask)``, two lists of equal length ``s``; ``mask[i]`` is True where
            token ``i`` is not trained on (a masked message, BOS, a final EOS).
        """
        fmt = self.chat_format
        renders_tools = getattr(fmt, "renders_tools", False)
        if not renders_tools:
            refuse_tool_shapes(getattr(fmt, "family", type(fmt).__name__), messages, tools)
        if self.prompt_template is not None:
            messages = self.prompt_template(messages)
        chunks = (
            fmt.render(messages, add_end_tokens, tools=tools)  # type: ignore[call-arg]
            if renders_tools
            else fmt.render(messages, add_end_tokens)
        )
        if getattr(fmt, "rewrites_history", False):
            tokens, mask = self._mask_by_prefixes(messages, chunks, tools)
        else:
            tokens, mask = [], []
            for chunk in chunks:
                ids, chunk_mask = self._encode_chunk(chunk)
                tokens.extend(ids)
                mask.extend(chunk_mask)
        return truncate_messages_tokens(
            tokens, mask, self.max_seq_len, self.eos_id, add_end_tokens, self.truncation_type
        )

    def _encode_chunk(self, chunk: Chunk) -> tuple[list[int], list[bool]]:
        """A chunk's ids and mask; the reasoning text of ``chunk.source`` (when it has
        ``mask_reasoning``) is masked where the chunk renders it."""
        m = chunk.source
        if m is None or not m.mask_reasoning or chunk.masked:
            ids = self.encode_text(chunk.text, continuation=chunk.continuation)
            return ids, [chunk.masked] * len(ids)
        ids, offsets = self._encode_with_offsets(chunk.text, chunk.continuation)
        mask = [False] * len(ids)
        for a, b in reasoning_token_spans(m, chunk.text, offsets, 0, len(ids)):
            mask[a:b] = [True] * (b - a)
        return ids, mask

    def _mask_by_prefixes(
        self, messages: list[Message], chunks: list[Chunk], tools: Any
    ) -> tuple[list[int], list[bool]]:
        """Tokens and mask of a format that rewrites earlier turns once more follow
        (Qwen3): masks by prefix renderings, the rule of ``HuggingFaceModelTokenizer``."""
        tokens: list[int] = []
        offsets: list[tuple[int, int]] = []  # only needed to find masked reasoning
        with_offsets = any(m.mask_reasoning and not m.masked for m in messages)
        text = ""
        starts = []  # token index where each chunk starts
        for chunk in chunks:
            starts.append(len(tokens))
            if with_offsets:
                ids, spans = self._encode_with_offsets(chunk.text, chunk.continuation)
                offsets.extend((len(text) + a, len(text) + b) for a, b in spans)
            else:
                ids = self.encode_text(chunk.text, continuation=chunk.continuation)
            tokens.extend(ids)
            text += chunk.text

        def prefix_end(k: int) -> int:
            if k == 0:
                return 0
            if k == len(messages):  # the last message owns the rest (open or closed)
                return len(tokens)
            fmt: Any = self.chat_format
            prefix = fmt.render(messages[:k], True, tools=tools)
            # chunks end at special tokens: the chunks equal to the full rendering's encode
            # to the same ids, so only the prefix's rendering from the first change is encoded
            j = next(
                (j for j, c in enumerate(prefix) if j >= len(chunks) or c.text != chunks[j].text),
                len(prefix),
            )
            at = starts[j] if j < len(starts) else len(tokens)
            ids = [t for c in prefix[j:] for t in self.encode_text(c.text, c.continuation)]
            return at + common_prefix_len(ids, tokens[at:])

        return tokens, mask_by_prefixes(messages, len(tokens), prefix_end, text, offsets)[0]

    def _encode_with_offsets(
        self, text: str, continuation: bool
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode_text`` plus each token's ``(start, end)`` characters in ``text``."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        for i, piece in enumerate(self._splitter.split(text)):
            if isinstance(piece, int):
                size = len(self._id_to_special[piece])
                ids.append(piece)
                offsets.append((pos, pos + size))
                pos += size
                continue
            piece_ids = self.encode_text(piece, continuation=continuation and i == 0)
            offsets.extend((pos + a, pos + b) for a, b in self._piece_offsets(piece, piece_ids))
            ids.extend(piece_ids)
            pos += len(piece)
        return ids, offsets

    def _piece_offsets(self, piece: str, ids: list[int]) -> list[tuple[int, int]]:
        """Character spans of ``ids``, the encoding of ``piece`` (no special tokens in it)."""
        hf = getattr(self.base, "tokenizer", None)
        if hf is not None and hasattr(hf, "encode"):  # ``tokenizers``: its own offsets
            encoding = hf.encode(piece, add_special_tokens=False)
            if list(encoding.ids) == ids:
                return list(encoding.offsets)
        tt = getattr(self.base, "tt_model", None)
        if tt is not None:  # tiktoken: token starts, each span ending at the next start
            starts = tt.decode_with_offsets(ids)[1]
            return list(zip(starts, [*starts[1:], len(piece)]))
        spans, prev = [], 0  # any base: from the lengths of the decoded prefixes
        for j in range(len(ids)):
            end = max(prev, min(len(piece), len(self.base.decode(ids[: j + 1]))))
            spans.append((prev, end))
            prev = end
        return spans

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        """Replace ``sample["messages"]`` with ``sample["tokens"]`` and ``sample["mask"]``."""
        return tokenize_sample(self, sample, inference)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, max_seq_len={self.max_seq_len})"
        )
