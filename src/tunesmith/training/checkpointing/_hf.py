"""Hugging Face format checkpointer (safetensors or .bin, single or sharded)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.models._convert_mistral3 import (
    is_mistral3,
    mistral3_layout,
    mistral3_text_keys,
    mistral3_towers,
)
from tunesmith.training.checkpointing._base import CheckpointerBase
from tunesmith.training.checkpointing._config_check import (
    check_config_matches_weights,
    config_mismatch,
)
from tunesmith.training.checkpointing._files import (
    SAFETENSORS_INDEX_FNAME,
    copy_support_files,
    read_json,
    save_sharded,
)
from tunesmith.training.checkpointing._serving import write_serving_files
from tunesmith.utils._atomic import atomic_write_json
from tunesmith.utils._integrity import CheckpointNotFoundError

__all__ = ["FullModelHFCheckpointer"]


def _hf_weight_files(folder: Path) -> list[Path]:
    """Weight files of an HF folder written by us: the index's shards or the single file."""
    index = folder / SAFETENSORS_INDEX_FNAME
    if index.is_file():
        names = sorted(set(read_json(index)["weight_map"].values()))
        return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    shards = sorted(folder.glob("model-*-of-*.safetensors")) or sorted(
        folder.glob("pytorch_model-*-of-*.bin")
    )
    if not shards:
        raise FileNotFoundError(f"no model weights found in checkpoint folder {folder}")
    return shards


class HuggingFaceKeys:
    """Key conversion for checkpointers whose files use Hugging Face names (``_hf_config``)."""

    _model_type: str
    _hf_config: dict[str, Any]

    @property
    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` of the model (a dict)."""
        return self._hf_config

    def _to_native(self, hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from tunesmith.models.convert_weights import hf_to_native

        if self._model_type == "GEMMA4":  # its vision / audio towers: kept, written back as read
            from tunesmith.models._convert_gemma4 import gemma4_towers

            self._untrained = gemma4_towers(hf_sd)
        if is_mistral3(self._hf_config):  # its vision tower and projector: the same
            self._untrained = mistral3_towers(hf_sd)
        return hf_to_native(hf_sd, self._model_type, self._hf_config)

    def _from_native(self, native_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from tunesmith.models.convert_weights import native_to_hf

        out = native_to_hf(native_sd, self._model_type, self._hf_config)
        towers = getattr(self, "_untrained", {})
        if is_mistral3(self._hf_config):  # the text keys in the layout the towers were read in
            out = mistral3_layout(mistral3_text_keys(out), towers)
        return {**out, **towers}


class FullModelHFCheckpointer(HuggingFaceKeys, CheckpointerBase):
    """Reads and writes Hugging Face checkpoints; the model sees native keys.

    Args:
        checkpoint_dir: folder with ``config.json`` and the weight files.
        checkpoint_files: list of weight file names, or ``{filename_format, max_filename}``.
        model_type: torchtune model type string (``LLAMA3``, ``QWEN2``, ...).
        output_dir: where ``epoch_{e}`` / ``step_{n}`` folders are written.
        adapter_checkpoint: PEFT adapter (folder or ``adapter_model.safetensors``) to load.
        recipe_checkpoint: ``recipe_state.pt`` to resume from when output_dir holds none.
        resume_from_checkpoint: resume from the newest complete folder in ``output_dir``.
        safe_serialization: write ``.safetensors`` (True) or ``.bin`` (False).
        keep_last_n_checkpoints: keep only the newest n complete folders.
        should_load_recipe_state: torchtune's older alias of ``resume_from_checkpoint``.

    Saved weights keep the input's sharding (same number of shards, same keys per shard,
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``) and each
    tensor's stored dtype, so HF -> native -> HF is bit-identical.
    """

    format_name = "hf"

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        checkpoint_files: Sequence[str] | Mapping[str, Any],
        model_type: str,
        output_dir: str | os.PathLike[str],
        adapter_checkpoint: str | None = None,
        recipe_checkpoint: str | None = None,
        resume_from_checkpoint: bool = False,
        safe_serialization: bool = True,
        keep_last_n_checkpoints: int | None = None,
        should_load_recipe_state: bool = False,
    ) -> None:
        super().__init__(
            checkpoint_dir,
            checkpoint_files,
            model_type,
            output_dir,
            adapter_checkpoint=adapter_checkpoint,
            recipe_checkpoint=recipe_checkpoint,
            resume_from_checkpoint=resume_from_checkpoint,
            keep_last_n_checkpoints=keep_last_n_checkpoints,
            should_load_recipe_state=should_load_recipe_state,
        )
        self._safe_serialization = bool(safe_serialization)
        config_path = self._checkpoint_dir / "config.json"
        self._hf_config: dict[str, Any] = read_json(config_path) if config_path.is_file() else {}
        if not self._hf_config:
            raise CheckpointNotFoundError(
                f"config.json is missing beside the weights (checkpointer.checkpoint_dir="
                f"{self._checkpoint_dir}): FullModelHFCheckpointer needs the model's Hugging "
                "Face config; copy it from the model's source or download the model again",
                key="checkpointer.checkpoint_dir",
            )

    def _to_native(self, hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # a config.json that does not describe the weights is refused here, before training
        shapes = {k: tuple(v.shape) for k, v in hf_sd.items()}
        check_config_matches_weights(self._hf_config, shapes, self._checkpoint_dir / "config.json")
        return super()._to_native(hf_sd)

    def _load_weights_from(self, folder: Path) -> dict[str, torch.Tensor]:
        self._key_to_file = {}
        return self._read(_hf_weight_files(folder))

    def _write_model(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        hf_sd = self._to_stored_dtypes(self._from_native(state_dict))
        hit = config_mismatch(self._hf_config, {k: tuple(v.shape) for k, v in hf_sd.items()})
        if hit is not None:  # the model is not the one config.json describes: write nothing
            key, value, name, shape = hit
            raise ValueError(
                f"save_checkpoint: the weights do not fit the config.json that would be written "
                f"beside them ({key}={value}, {name} has shape {list(shape)}); the model is not "
                f"the one {self._checkpoint_dir / 'config.json'} describes"
            )
        dtypes = {v.dtype for v in hf_sd.values() if v.is_floating_point()}
        self._written_dtype = (folder, dtypes.pop()) if len(dtypes) == 1 else None
        score = hf_sd.get("score.weight")
        self._num_labels = None if score is None else int(score.shape[0])
        single = None
        if len(set(self._key_to_file.values())) <= 1:
            single = "model.safetensors" if self._safe_serialization else "pytorch_model.bin"
        save_sharded(
            hf_sd,
            folder,
            key_to_file=self._key_to_file,
            safe_serialization=self._safe_serialization,
            single_file_name=single,
        )

    serving: dict[str, Any] | None = None
    """The training tokenizer's template and stop tokens (``_serving.serving_info``), set by
    the recipe; every save writes them beside the weights (``write_serving_files``)."""

    def _copy_support_files(self, folder: Path) -> None:
        copy_support_files(self._checkpoint_dir, folder)
        write_serving_files(folder, self.serving)
        written = getattr(self, "_written_dtype", None)
        config_path = folder / "config.json"
        if written is None or written[0] != folder or not config_path.is_file():
            return  # no weights written into this folder (an adapter-only save)
        # the copied config names the dtype the weights were written in
        config = read_json(config_path)
        name = str(written[1]).removeprefix("torch.")
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        updated = {**config, **dict.fromkeys(keys, name)}
        num_labels = getattr(self, "_num_labels", None)
        if self._model_type == "REWARD" and num_labels is not None:
            updated = sequence_classification_config(updated, num_labels)
        if updated != config:
            atomic_write_json(config_path, updated)


def sequence_classification_config(config: Mapping[str, Any], num_labels: int) -> dict[str, Any]:
    """``config`` as a ``<Family>ForSequenceClassification`` of ``num_labels`` (what
    transformers' ``AutoModelForSequenceClassification`` needs): ``architectures``,
    ``num_labels`` with matching ``id2label``/``label2id``, and a ``pad_token_id`` (the EOS id
    when the config has none) so batched rows pool at their last real token."""
    out = dict(config)
    archs = list(out.get("architectures") or [])
    family = archs[0] if archs else "LlamaForCausalLM"
    for suffix in ("ForCausalLM", "ForSequenceClassification", "Model"):
        if family.endswith(suffix):
            family = family[: -len(suffix)]
            break
    out["architectures"] = [f"{family}ForSequenceClassification"]
    old = {int(k): v for k, v in (out.get("id2label") or {}).items()}
    labels = {i: old.get(i, f"LABEL_{i}") for i in range(num_labels)}
    out["id2label"] = {str(i): v for i, v in labels.items()}
    out["label2id"] = {v: i for i, v in labels.items()}
    out["num_labels"] = num_labels
    if out.get("pad_token_id") is None:
        eos = out.get("eos_token_id")
        out["pad_token_id"] = eos[0] if isinstance(eos, list) and eos else eos
    return out
