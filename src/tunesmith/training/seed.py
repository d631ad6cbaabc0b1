"""``torchtune.training.seed``: :func:`tunesmith.utils.set_seed` under torchtune's module name."""

from tunesmith.utils._seed import set_seed

__all__ = ["set_seed"]
