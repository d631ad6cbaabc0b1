"""GGUF input checkpointer: train from a llama.cpp file, save Hugging Face folders.

Loading dequantizes the GGUF weights (see :mod:`tunesmith.models.gguf`); saving writes
``model.safetensors`` + ``config.json`` + ``generation_config.json`` + ``tokenizer.json``
+ ``tokenizer_config.json`` (with the chat template), so the output loads with
``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` and PEFT adapters apply to it.
A saved adapter's ``base_model_name_or_path`` is ``output_dir/base_model``, the dequantized
GGUF written once as such a folder (a ``.gguf`` file is not a base PEFT can load).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.training.checkpointing._atomic import (
    atomic_write_bytes,
    atomic_write_json,
    read_complete_marker,
    staged_checkpoint_dir,
)
from tunesmith.training.checkpointing._base import CheckpointerBase
from tunesmith.training.checkpointing._files import (
    load_weight_files,
    save_sharded,
)
from tunesmith.training.checkpointing._hf import HuggingFaceKeys
from tunesmith.training.checkpointing._integrity import verify_input_files
from tunesmith.training.checkpointing._serving import write_serving_files

__all__ = ["GGUFCheckpointer"]

logger = logging.getLogger(__name__)

# The dequantized base as a Hugging Face folder: what saved PEFT adapters name as their base.
BASE_MODEL_FOLDER = "base_model"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class GGUFCheckpointer(HuggingFaceKeys, CheckpointerBase):
    """Load a GGUF model file; write Hugging Face checkpoints.

    Args:
        checkpoint_dir: folder holding the ``.gguf`` file.
        checkpoint_files: ``["model.Q4_1.gguf"]`` (exactly one file).
        model_type: torchtune model type (``LLAMA3``, ``LLAMA2``, ``MISTRAL``; any Llama-layout
            type works since GGUF "llama" weights are renamed to HF Llama names first).
        output_dir, adapter_checkpoint, recipe_checkpoint, resume_from_checkpoint,
        keep_last_n_checkpoints, should_load_recipe_state: as for FullModelHFCheckpointer.
        dtype: dtype of the dequantized weights (default float32).
    """

    format_name = "gguf"

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
        safe_serialization: bool = True,
        dtype: str | torch.dtype = torch.float32,
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
        if len(self._files) != 1 or self._files[0].suffix != ".gguf":
            raise ValueError(
                "GGUFCheckpointer: checkpointer.checkpoint_files must name exactly one .gguf "
                f"file, got {[f.name for f in self._files]}"
            )
        self._gguf_path = self._files[0]
        self._safe_serialization = bool(safe_serialization)
        if isinstance(dtype, str):
            from tunesmith.utils import get_dtype

            dtype = get_dtype(dtype)
        self._dtype = dtype
        from tunesmith.models.gguf import gguf_hf_config, read_gguf

        self._reader, self._metadata = read_gguf(self._gguf_path)
        self._hf_config = gguf_hf_config(self._reader, self._metadata)

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF key/value metadata (``general.*``, ``llama.*``, ``tokenizer.*``)."""
        return self._metadata

    def _load_base_weights(self) -> dict[str, torch.Tensor]:
        verify_input_files(self._checkpoint_dir, self._files)  # download manifest, if any
        return self._read_base_weights()

    def _read_base_weights(self) -> dict[str, torch.Tensor]:
        from tunesmith.models.gguf import gguf_hf_state_dict

        return self._to_native(gguf_hf_state_dict(self._reader, self._hf_config, dtype=self._dtype))

    def _load_weights_from(self, folder: Path) -> dict[str, torch.Tensor]:
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        files = [f for f in files if not f.name.startswith("adapter_")]
        if not files:
            raise FileNotFoundError(f"no model weights found in checkpoint folder {folder}")
        return self._to_native(load_weight_files(files)[0])

    def _write_model(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        # the base's dtype (the dequantized one), whatever dtype training ran in
        hf_sd = {
            k: v.to(self._dtype) if v.is_floating_point() else v
            for k, v in self._from_native(state_dict).items()
        }
        save_sharded(hf_sd, folder, safe_serialization=self._safe_serialization)
        dtypes = {t.dtype for t in hf_sd.values() if t.is_floating_point()}
        config = dict(self._hf_config)
        if len(dtypes) == 1:
            config["torch_dtype"] = _DTYPE_NAMES.get(dtypes.pop(), "float32")
        atomic_write_json(folder / "config.json", config)

    serving: dict[str, Any] | None = None
    """The training tokenizer's template and stop tokens (see ``_serving.py``)."""

    def _copy_support_files(self, folder: Path) -> None:
        """The GGUF's config, tokenizer and template, then what training used (a trained
        checkpoint; the dequantized base folder keeps the GGUF's own)."""
        self._write_gguf_files(folder)
        write_serving_files(folder, self.serving)

    def _write_gguf_files(self, folder: Path) -> None:
        from tunesmith.models.gguf import gguf_tokenizer_files

        if not (folder / "config.json").is_file():
            atomic_write_json(folder / "config.json", self._hf_config)
        generation = {
            k: self._hf_config[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if k in self._hf_config
        }
        atomic_write_json(folder / "generation_config.json", generation)
        for name, text in gguf_tokenizer_files(self._metadata).items():
            atomic_write_bytes(folder / name, text.encode())
        template = self._metadata.get("tokenizer.chat_template")
        if template:
            atomic_write_bytes(folder / "chat_template.jinja", str(template).encode())
        name = self._metadata.get("general.name")
        if name:
            atomic_write_bytes(
                folder / "gguf_source.json",
                json.dumps({"gguf": self._gguf_path.name, "general.name": name}).encode(),
            )

    def _base_model_reference(self) -> tuple[str, str | None]:
        """A PEFT adapter's base is a folder, never the ``.gguf`` file: the dequantized base
        written once as a Hugging Face folder ``output_dir/base_model`` (weights in the
        checkpointer's dtype, config, tokenizer), rewritten when the GGUF file changes."""
        stat = self._gguf_path.stat()
        source = {
            "gguf": str(self._gguf_path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "dtype": str(self._dtype).removeprefix("torch."),
        }
        folder = self._output_dir / BASE_MODEL_FOLDER
        marker = read_complete_marker(folder) or {}
        if marker.get("gguf_source") != source or not (folder / "config.json").is_file():
            with staged_checkpoint_dir(
                self._output_dir, BASE_MODEL_FOLDER, gguf_source=source
            ) as staging:
                self._write_model(self._read_base_weights(), staging)
                self._write_gguf_files(staging)
            logger.info(
                "wrote the dequantized base %s as a Hugging Face folder %s (the base saved "
                "adapters name)",
                self._gguf_path.name,
                folder,
            )
        return str(folder.resolve()), None
