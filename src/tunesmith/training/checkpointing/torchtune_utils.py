"""torchtune 0.6.1's public checkpoint-file helpers (``torchtune.training.checkpointing._utils``),
for code written against torchtune that builds its own file lists or loads classifier heads.

tunesmith's checkpointers resolve ``checkpoint_files`` themselves
(:func:`~tunesmith.training.checkpointing.resolve_checkpoint_files`, which also accepts an
integer ``max_filename``); :class:`FormattedCheckpointFiles` keeps torchtune's stricter rules
(``max_filename`` must be a string) so that its errors match torchtune's.
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ADAPTER_CONFIG_FNAME",
    "ADAPTER_MODEL_FNAME",
    "FormattedCheckpointFiles",
    "RECIPE_STATE_DIRNAME",
    "REPO_ID_FNAME",
    "SAFETENSOR_INDEX_FNAME",
    "SHARD_FNAME",
    "TORCH_INDEX_FNAME",
    "check_outdir_not_in_ckptdir",
    "get_path",
    "update_state_dict_for_classifier",
]

ADAPTER_CONFIG_FNAME = "adapter_config"
"""Stem of a saved adapter's config file (``adapter_config.json``)."""
ADAPTER_MODEL_FNAME = "adapter_model"
"""Stem of a saved adapter's weight file (``adapter_model.safetensors`` / ``.pt``)."""
SAFETENSOR_INDEX_FNAME = "model.safetensors.index.json"
TORCH_INDEX_FNAME = "pytorch_model.bin.index.json"
SHARD_FNAME = "model-{cpt_idx}-of-{num_shards}"
"""Stem of one shard of a saved model; ``cpt_idx`` and ``num_shards`` zero-padded to 5."""
RECIPE_STATE_DIRNAME = "recipe_state"
REPO_ID_FNAME = "original_repo_id"


class FormattedCheckpointFiles:
    """A list of shard names ``file_{i}_of_{n}.pth`` given as one pattern.

    Args:
        filename_format: a format string with exactly two ``{}`` placeholders (shard number,
            shard count), e.g. ``"model-{}-of-{}.safetensors"``.
        max_filename: the last shard number as a string, with the zero padding every name
            uses (``"00004"``).

    Raises:
        ValueError: when ``filename_format`` does not hold exactly two placeholders.
    """

    def __init__(self, filename_format: str, max_filename: str):
        self.filename_format = filename_format
        self.max_filename = max_filename
        fields = [f[1] for f in string.Formatter().parse(filename_format) if f[1] is not None]
        if len(fields) != 2:
            raise ValueError(
                f"Filename format string must have exactly two placeholders, e.g. "
                f"'file_{{i}}_of_{{n_files}}.pth'; got {filename_format!r}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FormattedCheckpointFiles:
        """Build from ``{"filename_format": ..., "max_filename": ...}`` (a config entry).

        Raises:
            ValueError: a key is missing, or ``max_filename`` is not a string (YAML reads
                ``00004`` unquoted as a number: quote it).
        """
        if "filename_format" not in d or "max_filename" not in d:
            raise ValueError(
                "Must pass 'filename_format' and 'max_filename' keys to generate checkpoint "
                f"filenames; got keys {sorted(d)}"
            )
        if not isinstance(d["max_filename"], str):
            raise ValueError(
                f"`max_filename` must be a string, but found {type(d['max_filename'])} instead "
                "(quote it in YAML: max_filename: '00004')."
            )
        return cls(filename_format=d["filename_format"], max_filename=d["max_filename"])

    def build_checkpoint_filenames(self) -> list[str]:
        """Every shard name, ``1`` to ``max_filename``, zero-padded as ``max_filename`` is.

        >>> FormattedCheckpointFiles("f_{}_of_{}.pt", "03").build_checkpoint_filenames()
        ['f_01_of_03.pt', 'f_02_of_03.pt', 'f_03_of_03.pt']
        """
        width = len(self.max_filename)
        return [
            self.filename_format.format(str(i).zfill(width), self.max_filename)
            for i in range(1, int(self.max_filename) + 1)
        ]


def get_path(input_dir: Path, filename: str, missing_ok: bool = False) -> Path:
    """``input_dir / filename``, checked: ``input_dir`` must be a folder and, unless
    ``missing_ok``, the file must exist (else ``ValueError``)."""
    if not input_dir.is_dir():
        raise ValueError(f"{input_dir} is not a valid directory.")
    path = input_dir / filename
    if not missing_ok and not path.is_file():
        raise ValueError(f"No file with name: {filename} found in {input_dir}.")
    return path


def update_state_dict_for_classifier(
    state_dict: dict[str, torch.Tensor],
    model_named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    force_override: bool = False,
) -> None:
    """Make ``state_dict`` loadable into a classifier (``output [num_classes, d]``), in place.

    ``output.weight`` in ``state_dict`` is replaced by the model's own when the row counts
    differ (a base language model's ``[vocab, d]`` head) or when ``force_override``;
    ``output.bias`` is dropped with a warning.

    Raises:
        AssertionError: ``output.weight`` missing from ``state_dict`` or from the model's
            parameters (torchtune's exception type, kept for its callers).
    """
    model_weight = dict(model_named_parameters).get("output.weight")
    if "output.weight" not in state_dict:
        raise AssertionError("Expected output.weight in state_dict, but it wasn't found.")
    if model_weight is None:
        raise AssertionError(
            "Expected output.weight in model_named_parameters, but it wasn't found."
        )
    if "output.bias" in state_dict:
        warnings.warn("Found output.bias in state dict - this will not be used!", stacklevel=2)
        del state_dict["output.bias"]
    if force_override or state_dict["output.weight"].shape[0] != model_weight.shape[0]:
        state_dict["output.weight"] = model_weight


def check_outdir_not_in_ckptdir(ckpt_dir: Path, out_dir: Path) -> bool:
    """True when ``out_dir`` is neither ``ckpt_dir`` nor inside it (paths resolved).

    Raises:
        ValueError: otherwise: saving there would copy earlier outputs along with the
            checkpoint's config files.
    """
    ckpt, out = Path(ckpt_dir).resolve(), Path(out_dir).resolve()
    if out == ckpt or ckpt in out.parents:
        raise ValueError(
            "The output directory cannot be the same as or a subdirectory of the checkpoint "
            f"directory. Found ckpt_dir={ckpt_dir} and out_dir={out_dir}; choose an "
            "output_dir outside checkpoint_dir."
        )
    return True
