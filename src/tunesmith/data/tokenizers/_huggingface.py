"""``HuggingFaceModelTokenizer``: any model from tokenizer.json + its Jinja chat template.

For families without a dedicated tokenizer. The chat template (from
tokenizer_config.json's ``chat_template``, a ``chat_template.jinja`` beside the
tokenizer.json, or given directly) is rendered with jinja2 the way ``transformers``
renders it, then encoded. The loss mask is assigned per message from renderings of
the conversation's prefixes: message ``i`` owns the tokens between the longest common
prefixes of the full encoding with the encodings of ``messages[:i]`` and ``messages[:i+1]``.
(Templates that re-render earlier
turns differently once more turns follow, like Qwen3's dropped think blocks, give the
rewritten part of that earlier turn to the next message, so it is masked: such a turn is
only trained on where its final rendering agrees with its own.)

Tool use and reasoning: ``tools`` (function schemas) are passed to the template, and
messages as OpenAI dicts (``tool_calls``, ``tool_call_id``, ``name``, ``reasoning_content``,
also as ``thinking``), as ``transformers``' ``apply_chat_template(tools=...)`` does. A
message with ``mask_reasoning`` has the tokens of its reasoning (``reasoning`` or the
text of an inline ``<think>...</think>``, found in its rendering) masked. A template that refuses a conversation
(Gemma 2 and tools or a system prompt, ...) raises ``ValueError`` with its message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.data._messages import Message
from tunesmith.data._prompt_templates import get_prompt_template
from tunesmith.data.tokenizers._bpe import HuggingFaceBaseTokenizer
from tunesmith.data.tokenizers._chat_tools import common_prefix_len, mask_by_prefixes, tojson
from tunesmith.data.tokenizers._utils import (
    check_file,
    tokenize_sample,
    truncate_messages_tokens,
)

__all__ = ["HuggingFaceModelTokenizer", "compile_chat_template"]


def compile_chat_template(source: str) -> Any:
    """Compile a chat template in a sandbox with the globals ``transformers`` provides."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson  # the filter transformers gives templates
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = dict
    return env.from_string(source)


class HuggingFaceModelTokenizer:
    """Model tokenizer from a tokenizer.json and a Jinja chat template.

    Args:
        tokenizer_json_path: tokenizer.json.
        tokenizer_config_json_path: tokenizer_config.json (bos/eos/pad names, ``chat_template``).
        generation_config_path: generation_config.json (eos ids used as stop tokens).
        chat_template: the template source, overriding the config's.
        max_seq_len, truncation_type: as for every model tokenizer.
        template_kwargs: extra template variables (e.g. ``{"date_string": "26 Jul 2024"}``).
        prompt_template: applied to the messages before the chat template (dotted path,
            mapping or template object).
    """

    def __init__(
        self,
        tokenizer_json_path: str | Path,
        *,
        tokenizer_config_json_path: str | Path | None = None,
        generation_config_path: str | Path | None = None,
        chat_template: str | None = None,
        max_seq_len: int | None = None,
        truncation_type: str = "right",
        template_kwargs: Mapping[str, Any] | None = None,
        prompt_template: Any = None,
    ):
        base = HuggingFaceBaseTokenizer(
            tokenizer_json_path,
            tokenizer_config_json_path=tokenizer_config_json_path,
            generation_config_path=generation_config_path,
        )
        if chat_template is None:
            chat_template = self._find_template(base.config, Path(tokenizer_json_path))
        stop = []
        if generation_config_path is not None:
            gen = json.loads(
                check_file(generation_config_path, "generation_config.json").read_text()
            )
            eos = gen.get("eos_token_id")
            stop = [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
        self._setup(base, chat_template, max_seq_len, truncation_type, template_kwargs, stop)
        self.prompt_template = get_prompt_template(prompt_template)

    @classmethod
    def from_tokenizer_object(
        cls,
        tokenizer: Any,
        chat_template: str,
        *,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
        max_seq_len: int | None = None,
        truncation_type: str = "right",
        template_kwargs: Mapping[str, Any] | None = None,
        prompt_template: Any = None,
    ) -> HuggingFaceModelTokenizer:
        """Build from an in-memory ``tokenizers.Tokenizer`` and a template (e.g. from a GGUF)."""
        base = HuggingFaceBaseTokenizer.from_tokenizer_object(
            tokenizer, bos_token=bos_token, eos_token=eos_token
        )
        base.config["pad_token"] = pad_token
        self = cls.__new__(cls)
        self._setup(base, chat_template, max_seq_len, truncation_type, template_kwargs, [])
        self.prompt_template = get_prompt_template(prompt_template)
        return self

    @staticmethod
    def _find_template(config: Mapping[str, Any], tokenizer_json: Path) -> str:
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            by_name = {t.get("name"): t.get("template") for t in template}
            template = by_name.get("default")
        if isinstance(template, str):
            return template
        beside = tokenizer_json.parent / "chat_template.jinja"
        if beside.is_file():
            return beside.read_text(encoding="utf-8")
        raise ValueError(
            f"no chat template for {tokenizer_json}: none in tokenizer_config.json and no "
            "chat_template.jinja beside it; pass chat_template=..."
        )

    def _setup(
        self,
        base: HuggingFaceBaseTokenizer,
        chat_template: str,
        max_seq_len: int | None,
        truncation_type: str,
        template_kwargs: Mapping[str, Any] | None,
        stop: list[int],
    ) -> None:
        if truncation_type not in ("left", "right"):
            raise ValueError(f"truncation_type must be 'left' or 'right', got {truncation_type!r}")
        self.base = base
        self.chat_template = chat_template
        self._template = compile_chat_template(chat_template)
        self.special_tokens = base.added_tokens()
        self.bos_id = base.bos_id
        self.eos_id = base.eos_id
        pad = base.config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, Mapping) else pad
        pad_id = base.tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = pad_id if pad_id is not None else 0
        self.stop_tokens = sorted({self.eos_id, *stop})
        self.max_seq_len = max_seq_len
        self.truncation_type = truncation_type
        self.prompt_template = None
        names = {
            k: base.config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self._variables = {
            k: (v.get("content") if isinstance(v, Mapping) else v) or "" for k, v in names.items()
        }
        self._variables.update(template_kwargs or {})

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return self.base.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.base.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def render(
        self,
        messages: list[Message],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt string the chat template makes of ``messages`` (and ``tools``)."""
        import jinja2

        dicts = [m.template_dict() for m in messages]
        try:
            return self._template.render(
                messages=dicts,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self._variables,
            )
        except (jinja2.exceptions.TemplateError, TypeError, KeyError, IndexError) as e:
            # the template's own raise_exception, or a shape it cannot handle
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"the chat template refuses this conversation: {reason}") from None

    def _prefix_end(self, messages: list[Message], full: list[int], tools: Any) -> int:
        """Length of the common token prefix of ``full`` and the rendering of ``messages``."""
        try:
            prefix = self.render(messages, tools=tools) if messages else ""
        except ValueError:  # a template that refuses a partial conversation
            return 0
        return common_prefix_len(self.base.encode(prefix, False, False), full)

    def tokenize_messages(
        self,
        messages: list[Message],
        add_end_tokens: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[list[int], list[bool]]:
        """Render and encode; with ``add_end_tokens=False`` and an empty final assistant
        message, the template's generation prompt is used instead of that message.

        Returns:
            ``(tokens, mask)``, lists of length ``s``; ``mask[i]`` True = not trained on.
        """
        if self.prompt_template is not None:
            messages = self.prompt_template(messages)
        open_last = (
            not add_end_tokens
            and bool(messages)
            and messages[-1].role == "assistant"
            and not messages[-1].text_content
            and not messages[-1].has_tool_fields
        )
        closed = messages[:-1] if open_last else messages
        text = self.render(closed, add_generation_prompt=open_last, tools=tools)
        encoding = self.base.tokenizer.encode(text, add_special_tokens=False)
        tokens = list(encoding.ids)
        mask, start = mask_by_prefixes(
            closed,
            len(tokens),
            lambda k: self._prefix_end(closed[:k], tokens, tools),
            text,
            encoding.offsets,
        )
        if open_last:
            mask[start:] = [messages[-1].masked] * (len(tokens) - start)
        return truncate_messages_tokens(
            tokens, mask, self.max_seq_len, self.eos_id, add_end_tokens, self.truncation_type
        )

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        """Replace ``sample["messages"]`` (and ``sample["tools"]``) with ``sample["tokens"]``
        and ``sample["mask"]``."""
        return tokenize_sample(self, sample, inference)
