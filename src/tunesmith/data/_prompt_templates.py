"""Prompt templates: text added around messages before tokenization (torchtune's names).

A template maps each role to ``(prepend, append)`` strings. It is applied by a model
tokenizer's ``tokenize_messages`` before the model's own chat format, so a
template holds task formatting (``"Question: "``) or a model's plain-text format
(``[INST]`` for Llama 2 and Mistral). A tokenizer's ``prompt_template`` may be
given in a config as a dotted path (``torchtune.models.llama2.Llama2ChatTemplate``)
or as a mapping ``{role: [prepend, append]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Protocol, runtime_checkable

from tunesmith.data._messages import Message

__all__ = [
    "PromptTemplateInterface",
    "PromptTemplate",
    "ChatMLTemplate",
    "AlpacaInstructTemplate",
    "GrammarErrorCorrectionTemplate",
    "SummarizeTemplate",
    "QuestionAnswerTemplate",
    "GemmaChatTemplate",
    "get_prompt_template",
]


@runtime_checkable
class PromptTemplateInterface(Protocol):
    """Anything with ``template`` and ``__call__(messages, inference=False) -> messages``."""

    template: dict[str, tuple[str, str]]

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]: ...


def _wrap(message: Message, prepend: str, append: str) -> Message:
    content = list(message.content)
    if prepend:
        content = [{"type": "text", "content": prepend}, *content]
    if append:
        content = [*content, {"type": "text", "content": append}]
    return Message(
        role=message.role,
        content=content,
        masked=message.masked,
        ipython=message.ipython,
        eot=message.eot,
        tool_calls=message.tool_calls,  # a template wraps text; tool fields stay as they are
        tool_call_id=message.tool_call_id,
        name=message.name,
        reasoning=message.reasoning,
        mask_reasoning=message.mask_reasoning,
    )


class PromptTemplate:
    """A custom template: ``{role: (prepend, append)}``; roles not listed are unchanged.

    Example (config)::

        prompt_template:
          user: ["Question: ", "\\n\\nAnswer: "]
          assistant: ["", ""]
    """

    def __init__(self, template: Mapping[str, Sequence[str] | None]):
        checked: dict[str, tuple[str, str]] = {}
        for role, tags in template.items():
            if tags is None:
                continue
            tags = tuple(tags)
            if len(tags) != 2 or not all(isinstance(t, str) for t in tags):
                raise ValueError(
                    f"prompt_template[{role!r}] must be a pair of strings (prepend, append), "
                    f"got {tags!r}"
                )
            checked[str(role)] = (tags[0], tags[1])
        self.template = checked

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]:
        out = []
        for message in messages:
            tags = self.template.get(message.role)
            out.append(_wrap(message, *tags) if tags else message)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.template!r})"


class ChatMLTemplate(PromptTemplate):
    """ChatML as plain text: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

    An empty final assistant message gets only the opening tag, so a model
    continues from ``<|im_start|>assistant\\n`` at inference. Use it with
    tokenizers whose own chat format is not ChatML.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                role: (f"<|im_start|>{role}\n", "<|im_end|>\n")
                for role in ("system", "user", "assistant")
            }
        )

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]:
        out = []
        for i, message in enumerate(messages):
            prepend, append = self.template.get(message.role, ("", ""))  # tool roles: as is
            is_open = (
                message.role == "assistant" and i == len(messages) - 1 and not message.text_content
            )
            out.append(_wrap(message, prepend, "" if is_open else append))
        return out


class AlpacaInstructTemplate(PromptTemplate):
    """Alpaca's instruction prompt around the user message (no-input variant).

    For rows with an ``input`` column use :class:`~tunesmith.data.AlpacaToMessages`,
    which picks the with-input or no-input prompt per row.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "user": (
                    "Below is an instruction that describes a task. Write a response that "
                    "appropriately completes the request.\n\n### Instruction:\n",
                    "\n\n### Response:\n",
                ),
                "assistant": ("", ""),
            }
        )


GrammarErrorCorrectionTemplate = partial(
    PromptTemplate,
    template={
        "user": ("Correct this to standard English: ", "\n---\nCorrected: "),
        "assistant": ("", ""),
    },
)
GrammarErrorCorrectionTemplate.__doc__ = "Grammar correction prompt (torchtune's)."

SummarizeTemplate = partial(
    PromptTemplate,
    template={"user": ("Summarize this dialogue:\n", "\n---\nSummary:\n"), "assistant": ("", "")},
)
SummarizeTemplate.__doc__ = "Dialogue summarisation prompt (torchtune's)."

QuestionAnswerTemplate = partial(
    PromptTemplate,
    template={"user": ("Question: ", "\n\nAnswer: "), "assistant": ("", "")},
)
QuestionAnswerTemplate.__doc__ = "Question answering prompt (torchtune's)."


class GemmaChatTemplate(PromptTemplate):
    """Gemma's turn format as plain text, for tokenizers other than Gemma's own.

    ``<start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...``;
    a system message is folded into the first user turn (Gemma has no system role).
    The Gemma tokenizer applies this format itself; do not combine the two.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
                "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
            }
        )

    def __call__(self, messages: list[Message], inference: bool = False) -> list[Message]:
        system = ""
        out = []
        for i, message in enumerate(messages):
            if message.role == "system":
                system = message.text_content.strip() + "\n\n"
                continue
            prepend, append = self.template.get(message.role, ("", ""))
            if message.role == "user" and system:
                prepend, system = prepend + system, ""
            is_open = (
                message.role == "assistant" and i == len(messages) - 1 and not message.text_content
            )
            out.append(_wrap(message, prepend, "" if is_open else append))
        return out


def get_prompt_template(prompt_template: Any) -> PromptTemplateInterface | None:
    """Turn a config value into a template: ``None``, an instance, a dotted path, or a mapping.

    A dotted path may name a class (instantiated without arguments), a ``partial`` or
    an instance; ``torchtune.*`` paths resolve to ``tunesmith.*``.
    """
    if prompt_template is None:
        return None
    if isinstance(prompt_template, type | partial):
        return prompt_template()
    if isinstance(prompt_template, PromptTemplateInterface):
        return prompt_template
    if isinstance(prompt_template, str):
        from tunesmith.config import resolve_component

        obj = resolve_component(prompt_template, key="prompt_template")
        if isinstance(obj, type | partial):
            obj = obj()
        if not callable(obj):
            raise ValueError(f"prompt_template={prompt_template!r} does not name a prompt template")
        return obj
    if isinstance(prompt_template, Mapping):
        return PromptTemplate(prompt_template)
    if callable(prompt_template):
        return prompt_template
    raise ValueError(
        "Prompt template must be a dotpath string or dictionary with custom template "
        "(prompt_template: a dotted path such as tunesmith.data.QuestionAnswerTemplate, a "
        f"mapping {{role: [prepend, append]}} or a template object); got {prompt_template!r}"
    )
