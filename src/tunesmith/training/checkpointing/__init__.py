"""tunesmith.training.checkpointing: checkpointers (HF, Meta, torchtune-native, GGUF, DCP),
recipe state for exact resume, crash-safe writes and graceful shutdown.

What a recipe calls (single device, or rank 0 with a gathered full state dict)::

    ckpt = instantiate(cfg.checkpointer, resume_from_checkpoint=cfg.resume_from_checkpoint)
    state = ckpt.load_checkpoint()
    #   state["model"]    native weights (base weights for LoRA)   -> model.load_state_dict
    #   state["adapter"]  native LoRA/DoRA weights (resume / adapter_checkpoint) -> strict=False
    #   on resume also: "optimizer", "lr_scheduler", "sampler", "epochs_run", "steps_run",
    #   "seed", "total_epochs", "max_steps_per_epoch", "rng", "dataloader" (what was saved)
    if resume:
        epochs_run, steps_run = restore_recipe_state(
            state, optimizer=opt, lr_scheduler=sched, sampler=sampler,
            generators={"dataloader": loader.generator})      # right before the loop

    with GracefulShutdown() as shutdown:
        for ...:                                                # training steps
            ...
            if shutdown.requested_any_rank() or step % save_every == 0:
                ckpt.save_checkpoint(
                    {"model": model.state_dict(),              # LoRA keys merged for HF out
                     "adapter_config": {"r": rank, "lora_alpha": alpha},   # LoRA only
                     **build_recipe_state(epochs_run=epoch, steps_run=step, optimizer=opt,
                                          lr_scheduler=sched, sampler=sampler, seed=seed,
                                          generators={"dataloader": loader.generator})},
                    epoch=epoch, intermediate_checkpoint=True, step=step,
                    adapter_only=save_adapter_weights_only)
                if shutdown.requested:
                    shutdown.exit(0)
    ckpt.save_checkpoint({"model": ..., "adapter_config": ...}, epoch=last_epoch)  # final

Each save is one folder ``output_dir/step_{n}`` (or ``epoch_{e}``): weights in the input's
format (HF: same shards, names, dtypes; ``config.json`` and tokenizer files copied), a PEFT
adapter (top level for adapter-only saves, ``adapter/`` beside merged weights),
``recipe_state.pt`` for intermediate saves, and a ``.complete`` marker. It is written in a
staging folder and renamed when whole; ``resume_from_checkpoint=True`` loads the newest
complete folder; ``keep_last_n_checkpoints`` prunes older ones. Multi-GPU sharded state:
:class:`DistributedCheckpointer` + :func:`consolidate_dcp_to_hf`.
"""

from tunesmith.training.checkpointing._atomic import *  # noqa: F401,F403
from tunesmith.training.checkpointing._atomic import __all__ as _atomic_all
from tunesmith.training.checkpointing._base import *  # noqa: F401,F403
from tunesmith.training.checkpointing._base import __all__ as _base_all
from tunesmith.training.checkpointing._distributed import *  # noqa: F401,F403
from tunesmith.training.checkpointing._distributed import __all__ as _distributed_all
from tunesmith.training.checkpointing._files import *  # noqa: F401,F403
from tunesmith.training.checkpointing._files import __all__ as _files_all
from tunesmith.training.checkpointing._gguf import *  # noqa: F401,F403
from tunesmith.training.checkpointing._gguf import __all__ as _gguf_all
from tunesmith.training.checkpointing._hf import *  # noqa: F401,F403
from tunesmith.training.checkpointing._hf import __all__ as _hf_all
from tunesmith.training.checkpointing._integrity import *  # noqa: F401,F403
from tunesmith.training.checkpointing._integrity import __all__ as _integrity_all
from tunesmith.training.checkpointing._meta import *  # noqa: F401,F403
from tunesmith.training.checkpointing._meta import __all__ as _meta_all
from tunesmith.training.checkpointing._preflight import *  # noqa: F401,F403
from tunesmith.training.checkpointing._preflight import __all__ as _preflight_all
from tunesmith.training.checkpointing._recipe_state import *  # noqa: F401,F403
from tunesmith.training.checkpointing._recipe_state import __all__ as _recipe_all
from tunesmith.training.checkpointing._signals import *  # noqa: F401,F403
from tunesmith.training.checkpointing._signals import __all__ as _signals_all
from tunesmith.training.checkpointing.keys import *  # noqa: F401,F403
from tunesmith.training.checkpointing.keys import __all__ as _keys_all
from tunesmith.training.checkpointing.torchtune_utils import *  # noqa: F401,F403
from tunesmith.training.checkpointing.torchtune_utils import __all__ as _torchtune_utils_all
from tunesmith.utils._integrity import CheckpointError, CheckpointNotFoundError

__all__ = [
    *_atomic_all,
    *_base_all,
    *_distributed_all,
    *_files_all,
    *_gguf_all,
    *_hf_all,
    *_meta_all,
    *_recipe_all,
    *_signals_all,
    *_integrity_all,
    *_preflight_all,
    *_keys_all,
    *_torchtune_utils_all,
    "CheckpointError",
    "CheckpointNotFoundError",
]
