"""smollm3 family: public model builders (torchtune-style names)."""

from tunesmith.models.smollm3._model_builders import *  # noqa: F401,F403
