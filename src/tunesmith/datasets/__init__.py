"""tunesmith.datasets: dataset builders (instruct, chat, preference, text, packed, concat).

Every builder takes the model tokenizer first (``instantiate(cfg.dataset, tokenizer)``)
and loads rows through Hugging Face ``datasets`` (hub names, or local files with
``source: json`` + ``data_files: path``). Samples are ``{"tokens", "labels"}``.
"""

from tunesmith.datasets._chat import *  # noqa: F401,F403
from tunesmith.datasets._concat import *  # noqa: F401,F403
from tunesmith.datasets._instruct import *  # noqa: F401,F403
from tunesmith.datasets._mix import *  # noqa: F401,F403
from tunesmith.datasets._packed import *  # noqa: F401,F403
from tunesmith.datasets._preference import *  # noqa: F401,F403
from tunesmith.datasets._rl_prompts import *  # noqa: F401,F403
from tunesmith.datasets._sft import *  # noqa: F401,F403
from tunesmith.datasets._text_completion import *  # noqa: F401,F403
from tunesmith.datasets._unpaired import *  # noqa: F401,F403
