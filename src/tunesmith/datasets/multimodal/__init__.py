"""Multimodal (image + text) dataset builders with torchtune's names."""

from tunesmith.datasets.multimodal._builders import *  # noqa: F401,F403
from tunesmith.datasets.multimodal._packed import *  # noqa: F401,F403
from tunesmith.datasets.multimodal._preference import *  # noqa: F401,F403
from tunesmith.datasets.multimodal._the_cauldron import *  # noqa: F401,F403
