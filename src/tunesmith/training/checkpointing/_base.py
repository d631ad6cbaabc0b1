"""Shared checkpointer machinery: output folders, resume discovery, recipe state, pruning.

State-dict contract between a recipe and every checkpointer::

    save_checkpoint(state_dict, epoch, intermediate_checkpoint=False, adapter_only=False, step=None)
      state_dict["model"]          native weights to write as the full model. LoRA/DoRA keys
                                   in it are split off as the adapter and merged into the base
                                   weights before writing (needs "adapter_config"), so the raw
                                   ``model.state_dict()`` of a LoRA model can be passed as is.
      state_dict["adapter"]        optional native adapter weights (``...lora_a.weight`` etc.)
      state_dict["adapter_config"] optional {"r", "lora_alpha", "target_modules", ...}
                                   (torchtune's names); needed to merge and to write PEFT;
                                   "fully_trained": keys merged as the model holds them
      every other key              recipe state (see ``build_recipe_state``), written to
                                   ``recipe_state.pt`` when ``intermediate_checkpoint=True``

    load_checkpoint() -> {"model": native sd, ["adapter": native adapter sd],
                          [recipe-state keys when resuming]}

Output layout: ``output_dir/epoch_{epoch}`` (or ``step_{step}``) holding the weights,
copied config/tokenizer files, ``recipe_state.pt`` (intermediate saves) and a
``.complete`` marker. A PEFT adapter (``adapter_model.safetensors`` +
``adapter_config.json``) sits at the top of the folder for ``adapter_only`` saves and in
its ``adapter/`` sub-folder when merged weights are written too (so
``AutoModelForCausalLM.from_pretrained(folder)`` loads the merged model, and
``PeftModel.from_pretrained(base, folder / "adapter")`` the adapter). Each folder is written in a staging folder and renamed into
place when finished, so loaders never see a partial checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.modules.peft import is_adapter_key
from tunesmith.training.checkpointing._atomic import (
    checkpoint_folder_name,
    prune_checkpoints,
    read_complete_marker,
    remove_partial_checkpoints,
    staged_checkpoint_dir,
)
from tunesmith.training.checkpointing._base_ref import base_model_reference
from tunesmith.training.checkpointing._files import (
    load_weight_file,
    load_weight_files,
    resolve_checkpoint_dir,
    resolve_checkpoint_files,
)
from tunesmith.training.checkpointing._integrity import (
    guarded_save,
    newest_intact_checkpoint,
    no_recipe_state_message,
    retire_previous_run,
    verify_input_files,
)
from tunesmith.training.checkpointing._merge import FileStamps, merge_adapter_into_base
from tunesmith.training.checkpointing._recipe_state import (
    RECIPE_STATE_FNAME,
    WEIGHT_KEYS,
    load_recipe_state,
    save_recipe_state,
)
from tunesmith.utils._integrity import CheckpointError, CheckpointNotFoundError

__all__ = ["CheckpointerBase", "is_adapter_key", "split_adapter_keys"]

logger = logging.getLogger(__name__)


def split_adapter_keys(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(base weights, adapter weights)`` of a native state dict."""
    base = {k: v for k, v in state_dict.items() if not is_adapter_key(k)}
    adapter = {k: v for k, v in state_dict.items() if is_adapter_key(k)}
    return base, adapter


class CheckpointerBase:
    """What the HF, Meta, torchtune-native and GGUF checkpointers share: argument handling,
    reading weight files (recording each key's shard and dtype so a save reproduces them),
    output folders, resume discovery, PEFT adapters and recipe state.

    Subclasses implement ``_to_native(sd)`` / ``_from_native(sd)`` (their key format),
    ``_load_weights_from(folder) -> native sd`` (a previous output folder) and
    ``_write_model(native_sd, folder)``; ``_load_base_weights`` reads ``checkpoint_files``.
    """

    format_name = "base"

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        checkpoint_files: Sequence[str] | Mapping[str, Any],
        model_type: str,
        output_dir: str | os.PathLike[str],
        adapter_checkpoint: str | None = None,
        recipe_checkpoint: str | None = None,
        resume_from_checkpoint: bool = False,
        keep_last_n_checkpoints: int | None = None,
        should_load_recipe_state: bool = False,
    ) -> None:
        self._checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
        self._files = resolve_checkpoint_files(checkpoint_dir, checkpoint_files)
        gguf = [f.name for f in self._files if f.suffix == ".gguf"]
        if gguf and self.format_name != "gguf":
            raise CheckpointError(
                f"{gguf[0]} is a GGUF file, which {type(self).__name__} cannot read "
                "(checkpointer.checkpoint_files): use _component_: "
                "tunesmith.training.GGUFCheckpointer for a .gguf model",
                key="checkpointer.checkpoint_files",
            )
        self._model_type = str(getattr(model_type, "name", model_type)).upper()
        self._output_dir = Path(output_dir)
        self._adapter_checkpoint = adapter_checkpoint
        self._recipe_checkpoint = recipe_checkpoint
        self._resume_from_checkpoint = bool(resume_from_checkpoint or should_load_recipe_state)
        if keep_last_n_checkpoints is not None and int(keep_last_n_checkpoints) < 1:
            raise ValueError(
                "checkpointer.keep_last_n_checkpoints must be a positive integer or null, got "
                f"{keep_last_n_checkpoints}"
            )
        self._keep_last_n = (
            None if keep_last_n_checkpoints is None else int(keep_last_n_checkpoints)
        )
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self.resumed_from: Path | None = None
        # overwrite=True: complete folders of a previous run, removed after the first save
        self.replaces: list[Path] = []
        # Filled by the first read; used on save to keep the input's sharding and dtypes.
        self._key_to_file: dict[str, str] = {}
        self._stored_dtypes: dict[str, torch.dtype] = {}
        # The base files as loaded (a LoRA merge re-reads them when unchanged).
        self._base_stamps: FileStamps | None = None

    # ---- paths --------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return self._output_dir

    def _path_in_ckpt_dir(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self._checkpoint_dir / p

    def _resume_source(self) -> Path | None:
        """The newest intact complete folder in output_dir, when resuming (else None).

        A damaged newer folder (a file missing, of the wrong size or checksum, per its
        marker) is skipped with a warning naming the file; when every folder is damaged
        the error lists them.
        """
        if not self._resume_from_checkpoint:
            return None
        return newest_intact_checkpoint(self._output_dir, logger)

    # ---- subclass hooks -----------------------------------------------------------------
    def _to_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _from_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_weights_from(self, folder: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _write_model(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        raise NotImplementedError

    # ---- weight files -------------------------------------------------------------------
    def _read(self, files: Sequence[Path]) -> dict[str, torch.Tensor]:
        """Native weights of ``files``; the first read records each key's file and dtype."""
        sd, origin = load_weight_files(files)
        if not self._key_to_file:
            self._key_to_file = origin
            self._stored_dtypes = {k: v.dtype for k, v in sd.items()}
        return self._to_native(sd)

    def _load_base_weights(self) -> dict[str, torch.Tensor]:
        verify_input_files(self._checkpoint_dir, self._files)
        return self._read_base_weights()

    def _read_base_weights(self) -> dict[str, torch.Tensor]:
        """The base checkpoint's native weights as stored (no verification)."""
        return self._read(self._files)

    def _base_files(self) -> list[Path]:
        """The files ``_load_base_weights`` reads (stamped at load, re-read to merge)."""
        return list(self._files)

    def _merge(
        self, model_sd: Mapping[str, torch.Tensor], adapter_config: Mapping[str, Any] | None
    ) -> dict[str, torch.Tensor]:
        """Merged weights = the base checkpoint as stored + the adapter (see ``_merge``)."""
        if (
            adapter_config is None
            or "r" not in adapter_config
            or "lora_alpha" not in adapter_config
        ):
            raise ValueError(
                "save_checkpoint: state_dict['model'] holds LoRA weights but state_dict"
                "['adapter_config'] with 'r' and 'lora_alpha' is missing, so they cannot be merged"
            )
        base_sd = None  # never loaded: the model's own copy is all there is
        if self._base_stamps is not None:
            changed = self._base_stamps.changed()
            if changed:
                logger.warning(
                    "%s changed since it was loaded; the merged weights use the model's own "
                    "copy of the base (rounded to the training dtype) instead of the base "
                    "checkpoint",
                    changed[0],
                )
            else:  # verified at load and unchanged since
                base_sd = self._read_base_weights()
        return merge_adapter_into_base(model_sd, base_sd, adapter_config)

    def _to_stored_dtypes(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cast floating tensors back to the dtype each key had in the input (in place)."""
        for key, tensor in sd.items():
            stored = self._stored_dtypes.get(key)
            if stored is not None and tensor.dtype != stored and tensor.is_floating_point():
                sd[key] = tensor.to(stored)
        return sd

    def _write_adapter(
        self,
        adapter: dict[str, torch.Tensor],
        adapter_config: Mapping[str, Any] | None,
        folder: Path,
    ) -> None:
        """PEFT ``adapter_model.safetensors`` + ``adapter_config.json`` (HF module names)."""
        if (
            adapter_config is None
            or "r" not in adapter_config
            or "lora_alpha" not in adapter_config
        ):
            raise ValueError(
                "save_checkpoint: writing a PEFT adapter needs state_dict['adapter_config'] with "
                "'r' and 'lora_alpha' (e.g. {'r': 8, 'lora_alpha': 16})"
            )
        from tunesmith.models.peft_format import save_peft_adapter

        base, revision = self._base_model_reference()
        save_peft_adapter(
            folder,
            adapter,
            model_type=self._model_type,
            rank=int(adapter_config["r"]),
            alpha=float(adapter_config["lora_alpha"]),
            dropout=float(adapter_config.get("lora_dropout", 0.0)),
            hf_config=getattr(self, "hf_config", None),
            base_model_name_or_path=base,
            revision=revision,
        )

    def _read_adapter(self, path: Path) -> dict[str, torch.Tensor]:
        """Native adapter weights from a PEFT folder (or its ``adapter_model.safetensors``)
        or from a native adapter file (torchtune's ``adapter_*.pt``)."""
        from tunesmith.models.peft_format import PEFT_PREFIX, load_peft_adapter

        path = Path(path)
        if path.suffix == ".gguf":
            raise CheckpointError(
                f"{path.name} is a GGUF file, not an adapter (checkpointer.adapter_checkpoint="
                f"{path}): point it at a PEFT folder (adapter_model.safetensors + "
                "adapter_config.json) or a native adapter .pt; a .gguf model is a base, for "
                "tunesmith.training.GGUFCheckpointer",
                key="checkpointer.adapter_checkpoint",
            )
        if path.is_dir() or path.name.startswith("adapter_model."):
            if not path.exists():
                raise CheckpointNotFoundError(
                    f"adapter checkpoint does not exist (checkpointer.adapter_checkpoint={path}): "
                    "point it at a PEFT folder (with adapter_model.safetensors)",
                    key="checkpointer.adapter_checkpoint",
                )
            folder = path if path.is_dir() else path.parent
            verify_input_files(folder, [folder / "adapter_model.safetensors"])
            native, _ = load_peft_adapter(path, self._model_type, getattr(self, "hf_config", None))
            return native
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"adapter checkpoint does not exist (checkpointer.adapter_checkpoint={path}): "
                "point it at a PEFT folder (with adapter_model.safetensors) or a native adapter "
                "file",
                key="checkpointer.adapter_checkpoint",
            )
        weights = load_weight_file(path)
        if any(k.startswith(PEFT_PREFIX) or ".lora_A." in k for k in weights):
            raise ValueError(
                f"checkpointer.adapter_checkpoint: {str(path)!r} holds PEFT-named weights; "
                "point it at the PEFT folder (with adapter_config.json) instead"
            )
        return weights

    def _base_model_reference(self) -> tuple[str, str | None]:
        """``adapter_config.json``'s ``base_model_name_or_path`` and ``revision``: a repo id
        or a folder ``from_pretrained`` loads (see ``_base_ref``)."""
        return base_model_reference(self._checkpoint_dir, getattr(self, "hf_config", None))

    def _copy_support_files(self, folder: Path) -> None:
        """Copy config/tokenizer files into a new checkpoint folder (format-specific)."""

    # ---- load ---------------------------------------------------------------------------
    def load_checkpoint(self) -> dict[str, Any]:
        """Native weights (+ adapter and recipe state when resuming); see the module doc."""
        source = self._resume_source()
        out: dict[str, Any] = {}
        if source is not None:
            marker = read_complete_marker(source) or {}
            self.resumed_from = source
            logger.info("resuming from the newest complete checkpoint %s", source)
            if marker.get("has_adapter"):
                # LoRA run: the frozen base comes from the original checkpoint.
                self._base_stamps = FileStamps(self._base_files())
                out["model"] = self._load_base_weights()
                out["adapter"] = self._read_adapter(source / marker.get("adapter_subdir", "."))
            elif marker.get("has_model"):
                out["model"] = self._load_weights_from(source)
            else:
                raise ValueError(f"checkpoint {source} holds neither model nor adapter weights")
            recipe_path = source / RECIPE_STATE_FNAME
            if not recipe_path.is_file():
                raise CheckpointNotFoundError(no_recipe_state_message(source, marker))
            out.update(load_recipe_state(str(recipe_path)))
            return out
        self._base_stamps = FileStamps(self._base_files())
        out["model"] = self._load_base_weights()
        if self._adapter_checkpoint:
            out["adapter"] = self._read_adapter(self._path_in_ckpt_dir(self._adapter_checkpoint))
        if self._resume_from_checkpoint:
            if not self._recipe_checkpoint:
                raise CheckpointNotFoundError(
                    "nothing to resume: no complete checkpoint in output_dir and no "
                    f"checkpointer.recipe_checkpoint ({self._output_dir}): point output_dir at "
                    "the earlier run, or set resume_from_checkpoint=False to start fresh",
                    key="resume_from_checkpoint",
                )
            out.update(load_recipe_state(str(self._path_in_ckpt_dir(self._recipe_checkpoint))))
        return out

    # ---- save ---------------------------------------------------------------------------
    def save_checkpoint(
        self,
        state_dict: Mapping[str, Any],
        epoch: int,
        intermediate_checkpoint: bool = False,
        adapter_only: bool = False,
        step: int | None = None,
    ) -> Path:
        """Write one complete checkpoint folder; returns its path (see the module doc).

        In a distributed run only rank 0 writes (pass it the gathered full state dict);
        other ranks return the same path without touching the disk.
        """
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_rank() != 0
        ):
            return self._output_dir / checkpoint_folder_name(epoch, step)
        if "model" not in state_dict and "adapter" not in state_dict:
            raise KeyError("save_checkpoint: state_dict needs a 'model' and/or an 'adapter' entry")
        adapter_config = state_dict.get("adapter_config")
        adapter = dict(state_dict.get("adapter") or {})
        model_sd: dict[str, torch.Tensor] | None = None
        if "model" in state_dict and not adapter_only:
            base, lora = split_adapter_keys(state_dict["model"])
            if lora:
                adapter = adapter or lora
                model_sd = self._merge(state_dict["model"], adapter_config)
            else:
                model_sd = base
        elif "model" in state_dict and not adapter:
            adapter = split_adapter_keys(state_dict["model"])[1]
        if adapter_only and not adapter:
            raise ValueError(
                "save_checkpoint(adapter_only=True) but the state dict holds no adapter weights"
            )
        recipe_state = {k: v for k, v in state_dict.items() if k not in WEIGHT_KEYS}
        name = checkpoint_folder_name(epoch, step)
        remove_partial_checkpoints(self._output_dir)
        info = {
            "epoch": int(epoch),
            "step": step,
            "format": self.format_name,
            "has_model": model_sd is not None,
            "has_adapter": bool(adapter),
            "has_recipe_state": bool(intermediate_checkpoint),
            # Beside merged weights the adapter goes to a sub-folder: transformers would
            # otherwise apply an adapter_config.json it finds on top of the merged weights.
            "adapter_subdir": "adapter" if model_sd is not None else ".",
        }
        with (
            guarded_save(self._output_dir, name, (model_sd, adapter, recipe_state)),
            staged_checkpoint_dir(self._output_dir, name, **info) as folder,
        ):
            if model_sd is not None:
                self._write_model(model_sd, folder)
            if adapter:
                adapter_folder = folder / info["adapter_subdir"]
                adapter_folder.mkdir(exist_ok=True)
                self._write_adapter(adapter, adapter_config, adapter_folder)
            self._copy_support_files(folder)
            if intermediate_checkpoint:
                save_recipe_state(recipe_state, str(folder / RECIPE_STATE_FNAME))
        final = self._output_dir / name
        if self.replaces:  # overwrite=True: the previous run's folders go once one is published
            retire_previous_run(self.replaces, keep=final)
            self.replaces = []
        removed = prune_checkpoints(self._output_dir, self._keep_last_n, protect=final)
        for r in removed:
            logger.info(
                "removed old checkpoint %s (keep_last_n_checkpoints=%s)", r, self._keep_last_n
            )
        logger.info("saved checkpoint to %s", final)
        return final
