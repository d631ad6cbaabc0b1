"""Meta (``consolidated.00.pth`` + ``params.json``) and torchtune-native checkpointers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.training.checkpointing._base import CheckpointerBase
from tunesmith.training.checkpointing._files import (
    copy_support_files,
    read_json,
    save_sharded,
)

__all__ = ["FullModelMetaCheckpointer", "FullModelTorchTuneCheckpointer"]


class _SingleFormatCheckpointer(CheckpointerBase):
    """Shared load/save for formats whose keys differ from native by a pure function."""

    def _output_name(self) -> str:
        raise NotImplementedError

    def _load_weights_from(self, folder: Path) -> dict[str, torch.Tensor]:
        self._key_to_file = {}
        files = [folder / self._output_name()]
        if not files[0].is_file():
            files = sorted(
                p
                for p in folder.glob("*model-*-of-*.*")
                if p.suffix in (".pt", ".bin", ".safetensors")
            )
        if not files:
            raise FileNotFoundError(f"no model weights found in checkpoint folder {folder}")
        return self._read(files)

    def _write_model(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        self._save(self._to_stored_dtypes(self._from_native(state_dict)), folder)

    def _save(self, sd: dict[str, torch.Tensor], folder: Path) -> None:
        save_sharded(sd, folder, safe_serialization=False, single_file_name=self._output_name())

    def _copy_support_files(self, folder: Path) -> None:
        copy_support_files(self._checkpoint_dir, folder)


class FullModelMetaCheckpointer(_SingleFormatCheckpointer):
    """Meta's original format: ``consolidated.00.pth`` with ``params.json`` beside it.

    q/k are stored interleaved and permuted to the native (HF) layout on load and back
    on save, so Meta -> native -> Meta is bit-identical. Writes
    ``output_dir/epoch_{e}/consolidated.00.pth`` plus the copied ``params.json`` and
    tokenizer files. Same arguments as :class:`FullModelHFCheckpointer`.

    ``model_type: LLAMA3_VISION`` reads and writes Llama 3.2 Vision's Meta layout (see
    ``tunesmith.models._convert_vision_meta``): the tile position-embedding grids as loaded
    are kept so cells no aspect ratio uses are written back unchanged, and LoRA adapters are
    written in PEFT format with transformers' Mllama names (derived from ``params.json``).
    """

    format_name = "meta"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self._files) != 1:
            raise ValueError(
                "FullModelMetaCheckpointer reads one consolidated file; "
                f"checkpointer.checkpoint_files lists {len(self._files)} (model-parallel Meta "
                "shards are not supported; consolidate them first)"
            )
        params = self._checkpoint_dir / "params.json"
        self._params = read_json(params)
        self._meta_reference: dict[str, torch.Tensor] = {}
        if self._model_type == "LLAMA3_VISION":
            from tunesmith.models._convert_vision_meta import mllama_hf_config_from_params

            # the HF names PEFT adapters are written with (no config.json beside Meta files)
            self.hf_config = mllama_hf_config_from_params(self._params)

    def _to_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from tunesmith.models.convert_weights import meta_to_native

        if self._model_type == "LLAMA3_VISION" and not self._meta_reference:
            from tunesmith.models._convert_vision_meta import GRID_KEYS

            self._meta_reference = {k: sd[k] for k in GRID_KEYS if k in sd}
        return meta_to_native(sd, self._model_type, self._params)

    def _from_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from tunesmith.models.convert_weights import native_to_meta

        if self._model_type == "LLAMA3_VISION":
            return native_to_meta(sd, self._model_type, self._params, self._meta_reference)
        return native_to_meta(sd, self._model_type, self._params)

    def _output_name(self) -> str:
        return "consolidated.00.pth"


def _head_counts(folder: Path, overrides: dict[str, int | None]) -> tuple[int, int, int] | None:
    """(num_heads, num_kv_heads, head_dim) from arguments, config.json or params.json."""
    n_heads, n_kv, head_dim = (
        overrides["num_heads"],
        overrides["num_kv_heads"],
        overrides["head_dim"],
    )
    if n_heads is None:
        if (folder / "config.json").is_file():
            cfg = read_json(folder / "config.json")
            n_heads = cfg["num_attention_heads"]
            n_kv = n_kv or cfg.get("num_key_value_heads")
            head_dim = head_dim or cfg.get("head_dim") or cfg["hidden_size"] // n_heads
        elif (folder / "params.json").is_file():
            cfg = read_json(folder / "params.json")
            n_heads = cfg["n_heads"]
            n_kv = n_kv or cfg.get("n_kv_heads")
            head_dim = head_dim or cfg.get("head_dim") or cfg["dim"] // n_heads
        else:
            return None
    if head_dim is None:
        raise ValueError("checkpointer.head_dim is required together with checkpointer.num_heads")
    return int(n_heads), int(n_kv or n_heads), int(head_dim)


class FullModelTorchTuneCheckpointer(_SingleFormatCheckpointer):
    """torchtune's native checkpoints (``.pt`` / ``.safetensors`` with native key names).

    torchtune keeps Llama-style q/k in the interleaved (Meta) layout, which needs the head
    counts to permute: give ``num_heads`` / ``num_kv_heads`` / ``head_dim`` or keep a
    ``config.json`` / ``params.json`` in ``checkpoint_dir``. Model types without the
    permutation (Qwen, Phi) need neither. Writes ``torchtune_model.pt`` (one file, or the
    input's sharding as ``model-0000i-of-0000n.pt``).
    """

    format_name = "torchtune"

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
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
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
        self._heads = _head_counts(
            self._checkpoint_dir,
            {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim},
        )

    def _convert(self, sd: dict[str, torch.Tensor], to_native: bool) -> dict[str, torch.Tensor]:
        from tunesmith.models import convert_weights as cw

        fn = cw.torchtune_to_native if to_native else cw.native_to_torchtune
        if self._heads is None:
            # Probe with a 1-head, head_dim-4 tensor: types without the permutation return it as is.
            probe = {"layers.0.attn.q_proj.weight": torch.arange(4.0).view(4, 1)}
            if torch.equal(
                fn(probe, self._model_type, 1, 1, 4)["layers.0.attn.q_proj.weight"],
                probe["layers.0.attn.q_proj.weight"],
            ):
                return dict(sd)
            raise ValueError(
                f"FullModelTorchTuneCheckpointer: model_type {self._model_type} stores q/k "
                "interleaved, so the head counts are needed; set checkpointer.num_heads, "
                "checkpointer.num_kv_heads and checkpointer.head_dim, or put the model's "
                f"config.json / params.json in {str(self._checkpoint_dir)!r}"
            )
        return fn(sd, self._model_type, *self._heads)

    def _to_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._convert(sd, to_native=True)

    def _from_native(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._convert(sd, to_native=False)

    def _output_name(self) -> str:
        return "torchtune_model.pt"

    def _save(self, sd: dict[str, torch.Tensor], folder: Path) -> None:
        sharded = len(set(self._key_to_file.values())) > 1
        if not sharded:
            save_sharded(sd, folder, safe_serialization=False, single_file_name=self._output_name())
            return
        save_sharded(sd, folder, key_to_file=self._key_to_file, safe_serialization=False)
