"""Checkpoint integrity (issue 12): checksummed markers, verified loads, resume fallback,
named errors for damaged inputs, and a full disk during a save."""

from __future__ import annotations

import errno
import json
import logging
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.training.test_resume_harness import make_base_checkpoint, train
from tunesmith.training import (
    COMPLETE_MARKER,
    CheckpointError,
    FullModelHFCheckpointer,
    latest_complete_checkpoint,
    list_complete_checkpoints,
    read_complete_marker,
    verify_checkpoint,
)
from tunesmith.utils._integrity import MANIFEST_NAME, check_safetensors, file_checksum


def _ckpt(base: Path, out: Path, resume: bool = False) -> FullModelHFCheckpointer:
    return FullModelHFCheckpointer(
        base, ["model.safetensors"], "LLAMA3", out, resume_from_checkpoint=resume
    )


def _zero_page(path: Path, page: int = 2) -> None:
    with open(path, "r+b") as f:
        f.seek(page * 4096)
        f.write(b"\0" * 4096)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_checkpoint(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def three_saves(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saves")
    train(base, out, 3, save_every=1)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_marker_records_every_file_with_size_and_checksum(three_saves: Path) -> None:
    folder = latest_complete_checkpoint(three_saves)
    marker = read_complete_marker(folder)
    files = marker["files"]
    on_disk = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != COMPLETE_MARKER
    )
    assert sorted(files) == on_disk and "model.safetensors" in files
    for rel, rec in files.items():
        assert rec["size"] == (folder / rel).stat().st_size
        assert rec["hash"] == file_checksum(folder / rel, marker["checksum"])
    assert verify_checkpoint(folder) is None


def test_old_marker_without_file_list_still_resumes(
    base: Path, three_saves: Path, tmp_path
) -> None:
    out = _copy(three_saves, tmp_path / "out")
    for folder in list_complete_checkpoints(out):
        marker = read_complete_marker(folder)
        marker.pop("files"), marker.pop("checksum")
        (folder / COMPLETE_MARKER).write_text(json.dumps(marker))
    state = _ckpt(base, out, resume=True).load_checkpoint()
    assert state["steps_run"] == 3


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "deleted", "recipe_state"])
def test_damaged_newest_checkpoint_falls_back_to_newest_intact(
    base: Path, three_saves: Path, tmp_path: Path, caplog, damage: str
) -> None:
    out = _copy(three_saves, tmp_path / "out")
    newest = out / "step_3"
    weights = newest / "model.safetensors"
    if damage == "zeroed":
        _zero_page(weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "deleted":
        weights.unlink()
    else:
        (newest / "recipe_state.pt").unlink()
    ckpt = _ckpt(base, out, resume=True)
    with caplog.at_level(logging.WARNING):
        state = ckpt.load_checkpoint()
    assert ckpt.resumed_from == out / "step_2" and state["steps_run"] == 2
    text = caplog.text
    assert "step_3" in text and ("model.safetensors" in text or "recipe_state.pt" in text)
    assert "final" not in text


def test_every_checkpoint_damaged_is_one_error(base: Path, three_saves: Path, tmp_path) -> None:
    out = _copy(three_saves, tmp_path / "out")
    for folder in list_complete_checkpoints(out):
        _flip(folder / "model.safetensors", 5000)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*step_3.*model.safetensors"):
        _ckpt(base, out, resume=True).load_checkpoint()


def test_starting_from_a_damaged_output_folder_names_the_file(three_saves, tmp_path) -> None:
    src = _copy(three_saves / "step_3", tmp_path / "step_3")
    _zero_page(src / "model.safetensors")
    ckpt = _ckpt(src, tmp_path / "new")
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match its recorded"):
        ckpt.load_checkpoint()


def test_garbage_recipe_state_names_the_file(base, three_saves, tmp_path) -> None:
    out = _copy(three_saves, tmp_path / "out")
    for folder in list_complete_checkpoints(out):  # old markers: nothing to verify against
        marker = read_complete_marker(folder)
        marker.pop("files")
        (folder / COMPLETE_MARKER).write_text(json.dumps(marker))
    (out / "step_3" / "recipe_state.pt").write_bytes(b"\x80garbage" * 500)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(CheckpointError) as info:
        warnings.simplefilter("always")
        _ckpt(base, out, resume=True).load_checkpoint()
    assert not [w for w in seen if "file an issue" in str(w.message)]
    msg = str(info.value)
    assert "recipe_state.pt" in msg and "earlier checkpoint" in msg and "file an issue" not in msg
    assert "\n" not in msg


def test_final_save_is_called_final_only_when_it_is(base, tmp_path) -> None:
    out = tmp_path / "out"
    ckpt = _ckpt(base, out)
    state = ckpt.load_checkpoint()
    ckpt.save_checkpoint({"model": state["model"]}, epoch=1)  # end of training
    with pytest.raises(FileNotFoundError, match="end-of-training save"):
        _ckpt(base, out, resume=True).load_checkpoint()


def test_truncated_safetensors_is_named_with_sizes(base: Path, tmp_path: Path) -> None:
    src = _copy(base, tmp_path / "m")
    weights = src / "model.safetensors"
    full = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: full - 1000])
    with pytest.raises(CheckpointError) as info:
        _ckpt(src, tmp_path / "out").load_checkpoint()
    msg = str(info.value)
    assert "truncated" in msg and str(weights) in msg
    assert f"{full - 1000} bytes" in msg and f"needs {full}" in msg


def test_unparsable_safetensors_header_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"header does not parse.*model.safetensors"):
        check_safetensors(bad)


def test_zeroed_page_without_manifest_warns(base: Path, tmp_path: Path, caplog) -> None:
    src = _copy(base, tmp_path / "m")
    _zero_page(src / "model.safetensors", page=3)
    with caplog.at_level(logging.WARNING):
        _ckpt(src, tmp_path / "out").load_checkpoint()
    assert "zeroed 4096-byte page" in caplog.text and "model.safetensors" in caplog.text


def test_all_zero_tensor_is_not_flagged(tmp_path: Path, caplog) -> None:
    from tunesmith.utils._integrity import zeroed_pages

    path = tmp_path / "z.safetensors"
    save_file({"a": torch.zeros(8192), "b": torch.randn(8192)}, path)
    assert zeroed_pages(path) == []
    t = torch.randn(8192)
    t[2048:5120] = 0  # 12 KiB of zeros inside a non-zero tensor
    save_file({"a": t}, path)
    assert len(zeroed_pages(path)) == 1


def test_zeroed_page_found_past_the_first_scan_block(tmp_path: Path) -> None:
    """The scan reuses one 16 MiB buffer: a zero page in a later block of a large tensor is
    found (and named by its file offset), a tensor of ordinary values spanning blocks is not."""
    from tunesmith.utils._integrity import _SCAN_BYTES, zeroed_pages

    n = 3 * _SCAN_BYTES // 4 + 1000  # fp32: ~3 scan blocks
    t = torch.randn(n, generator=torch.Generator().manual_seed(0)) + 5
    at = 2 * _SCAN_BYTES // 4 + 3000  # element index inside the third block
    t[at : at + 4096] = 0  # 16 KiB of zeros: at least three whole pages
    path = tmp_path / "big.safetensors"
    save_file({"small": torch.randn(100) + 5, "big": t}, path)
    found = zeroed_pages(path)
    assert len(found) == 1 and found[0].startswith("big (page at byte ")
    offset = int(found[0].split("byte ")[1].rstrip(")"))
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    start = (
        8 + header_len + json.loads(path.read_bytes()[8 : 8 + header_len])["big"]["data_offsets"][0]
    )
    assert start + 4 * at <= offset < start + 4 * (at + 4096) and offset % 4096 == 0
    save_file({"big": torch.randn(n) + 5}, path)
    assert zeroed_pages(path) == []


def _manifest(folder: Path, sha: bool = True) -> None:
    import hashlib

    files = {}
    for p in folder.iterdir():
        if p.is_file() and not p.name.startswith("."):
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if sha else None
            files[p.name] = {"size": p.stat().st_size, "sha256": digest}
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": files}))


def test_manifest_catches_zeroed_bytes_and_a_wrong_size(base, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = _copy(base, tmp_path / "m")
    _manifest(src)
    _ckpt(src, tmp_path / "out").load_checkpoint()  # intact: loads (and is remembered)
    assert (tmp_path / "cache" / "tunesmith" / "verified-sha256.json").is_file()
    _zero_page(src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"sha256 the hub reported.*model.safetensors"):
        _ckpt(src, tmp_path / "out2").load_checkpoint()
    _manifest(src, sha=False)
    manifest = json.loads((src / MANIFEST_NAME).read_text())
    manifest["files"]["model.safetensors"]["size"] += 1
    (src / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"the hub reported"):
        _ckpt(src, tmp_path / "out3").load_checkpoint()


def test_disk_full_during_save_is_one_line_and_keeps_the_previous(base, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "out"
    ckpt = _ckpt(base, out)
    state = ckpt.load_checkpoint()
    first = ckpt.save_checkpoint({"model": state["model"]}, epoch=0, step=1)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint({"model": state["model"]}, epoch=0, step=2)
    msg = str(info.value)
    assert "\n" not in msg and "disk full" in msg and str(out) in msg
    assert "step_1 is intact" in msg and "MB" in msg
    assert sorted(p.name for p in out.iterdir()) == ["step_1"]
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_zeroed_adapter_in_a_checkpoint_subfolder_is_caught(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    train(base, out, 2, lora=True, save_every=2)
    adapter = out / "step_2" / "adapter"
    _zero_page(adapter / "adapter_model.safetensors", page=1)
    ckpt = FullModelHFCheckpointer(
        base, ["model.safetensors"], "LLAMA3", tmp_path / "new", adapter_checkpoint=str(adapter)
    )
    with pytest.raises(CheckpointError, match=r"adapter/adapter_model.safetensors does not match"):
        ckpt.load_checkpoint()
