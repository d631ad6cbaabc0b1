"""gpt-oss tokenizer: the checkpoint's ``tokenizer.json`` (o200k_harmony) + its harmony chat
template.

The template renders an assistant message's ``reasoning_content`` (``thinking``) into the
``analysis`` channel, its tool calls into ``commentary`` (``to=functions.<name>``) and its
answer into ``final``. What is trained follows the template's rendering of each assistant
message (``tests/models/test_gpt_oss_tokenizer.py``): the final turn is
``<|start|>assistant<|channel|>analysis<|message|>...<|end|>`` (when it has reasoning) then
``<|start|>assistant<|channel|>final<|message|>...<|return|>``, ending in ``<|return|>``, the
stop token. The template writes earlier assistant turns differently once a later message
follows (reasoning dropped, ``<|end|>`` instead of ``<|return|>``), so an earlier turn is
trained only as far as both renderings agree: its final-channel text when it had no
reasoning, only its ``<|start|>assistant<|channel|>`` header when it had. For gpt-oss,
``masking_strategy="train_on_last"`` (exactly the final turn) is the clean choice.
``template_kwargs={"reasoning_effort": "high"}`` sets the system prompt's reasoning level
(the template's default: medium).
"""

from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

gpt_oss_tokenizer = hf_chat_tokenizer_builder("gpt_oss_tokenizer", "gpt-oss", __name__)

__all__ = ["gpt_oss_tokenizer"]
