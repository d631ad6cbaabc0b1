"""Multimodal packing for Qwen2.5-VL (early fusion, M-RoPE): a pack of image + text documents
(images of different sizes, two images in one document, a document without images) gives
each document's unpacked token losses and gradients (tiny random model written by
transformers, fp32), with M-RoPE ids restarting per document."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.datasets.test_multimodal_packing import _grads, _token_losses
from tests.recipes._qwen_vl_toys import MAX_PIXELS, MIN_PIXELS, write_specials, write_tiny_qwen_vl

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def qwen_toy(tmp_path_factory, assets):
    from tunesmith.models import build_from_hf
    from tunesmith.training import FullModelHFCheckpointer

    root = tmp_path_factory.mktemp("qwen_pack")
    model_dir = write_tiny_qwen_vl(root / "qwen_vl")
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(model_dir),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN2_5_VL",
        output_dir=str(root / "out"),
    )
    model = build_from_hf(str(model_dir)).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    dog = root / "dog.jpg"
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", dog)
    g = torch.Generator().manual_seed(0)
    wide = root / "wide.png"
    pixels = torch.randint(0, 256, (30, 90, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(wide)
    rows = [
        {"images": [str(dog)], "texts": [{"user": "What is it?", "assistant": "A dog."}]},
        {"images": [], "texts": [{"user": "Say hi.", "assistant": "Hi there, friend."}]},
        {
            "images": [str(wide), str(dog)],
            "texts": [{"user": "Two pictures?", "assistant": "Yes, two."}],
        },
        {"images": [str(wide)], "texts": [{"user": "Colour?", "assistant": "Noise."}]},
    ]
    data = root / "rows.json"
    data.write_text(json.dumps(rows))
    specials = write_specials(root / "specials.json")
    return model, data, assets / "torchtune_tests", specials


def _dataset(qwen_toy, packed, max_seq_len=160):
    from tunesmith.datasets.multimodal import the_cauldron_dataset
    from tunesmith.models.qwen2_5_vl import qwen2_5_vl_transform

    _, data, assets, specials = qwen_toy
    transform = qwen2_5_vl_transform(
        str(assets / "tiny_bpe_vocab.json"),
        str(assets / "tiny_bpe_merges.txt"),
        max_seq_len=max_seq_len,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        special_tokens_path=str(specials),
    )
    ds = the_cauldron_dataset(
        transform, subset="ocrvqa", source="json", data_files=str(data), packed=packed
    )
    return ds, transform


def test_qwen_packed_loss_and_grads_equal_unpacked(qwen_toy):
    model = qwen_toy[0]
    unpacked, transform = _dataset(qwen_toy, packed=False)
    packs, _ = _dataset(qwen_toy, packed=True)
    assert len(packs) == 2 and list(packs.sample_indices) == [0, 1, 2, 3]

    model.zero_grad()
    total, count, per_doc = torch.zeros(()), 0, []
    for i in range(len(unpacked)):  # every document alone
        losses, trained = _token_losses(model, transform.collate([unpacked[i]]))
        per_doc.append(losses[trained])
        total = total + losses.sum()
        count += int(trained.sum())
    (total / count).backward()
    expected_grads, expected = _grads(model), total.detach() / count

    model.zero_grad()
    batch = transform.collate_packed([packs[0], packs[1]])
    assert batch["input_pos"].shape == (3, *batch["tokens"].shape)
    losses, trained = _token_losses(model, batch)
    assert int(trained.sum()) == count
    got = losses.sum() / count
    got.backward()
    assert abs(got.item() - expected.item()) <= 1e-5
    torch.testing.assert_close(losses[trained], torch.cat(per_doc), atol=1e-5, rtol=0)
    for name, grad in _grads(model).items():
        scale = max(1.0, float(expected_grads[name].abs().max()))
        assert (grad - expected_grads[name]).abs().max() <= 1e-5 * scale, name

    # control: without the block-causal mask (documents see earlier ones) the loss differs;
    # (M-RoPE ids counted over the whole pack would not: RoPE is relative and a document's
    # ids only shift by one constant)
    with torch.no_grad():
        causal = {k: v for k, v in batch.items() if k != "mask"}
        other, _ = _token_losses(model, causal)
    assert abs(float(other.sum() / count) - float(expected)) > 1e-4


def test_qwen_packed_finetune_collate_is_picked(qwen_toy):
    from tunesmith.recipes._finetune_setup import build_dataloader

    packs, transform = _dataset(qwen_toy, packed=True)
    loader, _ = build_dataloader(
        [packs], transform, batch_size=2, world_size=1, rank=0, seed=0, ignore_index=-100
    )
    batch = next(iter(loader))
    assert batch["input_pos"].shape == (3, 2, 160) and batch["mask"].shape == (2, 160, 160)
    assert "encoder_fallback_mask" not in batch
