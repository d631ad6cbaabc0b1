"""tunesmith.data: messages, message transforms, prompt templates, tokenizers, collate, packing."""

from tunesmith.data._collate import *  # noqa: F401,F403
from tunesmith.data._content import format_content_with_images  # noqa: F401
from tunesmith.data._errors import *  # noqa: F401,F403
from tunesmith.data._message_transforms import *  # noqa: F401,F403
from tunesmith.data._messages import *  # noqa: F401,F403
from tunesmith.data._packing import *  # noqa: F401,F403
from tunesmith.data._prompt import *  # noqa: F401,F403
from tunesmith.data._prompt_templates import *  # noqa: F401,F403
from tunesmith.data._samplers import *  # noqa: F401,F403
from tunesmith.data._vision_collate import *  # noqa: F401,F403
from tunesmith.data.tokenizers._utils import truncate  # noqa: F401
