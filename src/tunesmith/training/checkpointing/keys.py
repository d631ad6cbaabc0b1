"""torchtune's checkpoint-dict key names (``torchtune.training.MODEL_KEY`` ...), for recipes
written against torchtune that build and read their own checkpoint dicts.

Values are torchtune 0.6.1's. tunesmith's own recipe state uses
:class:`~tunesmith.training.checkpointing.RecipeStateKeys` (the same strings, except the RNG
state: ``"rng"`` there, torchtune's ``"rng_state"`` here).
"""

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_KEY",
    "DATALOADER_KEY",
    "EPOCHS_KEY",
    "MAX_STEPS_KEY",
    "MODEL_KEY",
    "OPT_KEY",
    "RNG_KEY",
    "SEED_KEY",
    "STEPS_KEY",
    "TOTAL_EPOCHS_KEY",
]

ADAPTER_CONFIG = "adapter_config"
ADAPTER_KEY = "adapter"
EPOCHS_KEY = "epochs_run"
MAX_STEPS_KEY = "max_steps_per_epoch"
MODEL_KEY = "model"
OPT_KEY = "optimizer"
SEED_KEY = "seed"
TOTAL_EPOCHS_KEY = "total_epochs"
STEPS_KEY = "steps_run"
RNG_KEY = "rng_state"
DATALOADER_KEY = "dataloader"
