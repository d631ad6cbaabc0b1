"""olmo2 family: public model builders (torchtune-style names)."""

from tunesmith.models.olmo2._model_builders import *  # noqa: F401,F403
