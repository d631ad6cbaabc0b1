"""Multimodal packing (``packed=True`` on the multimodal builders): a pack of image + text
documents gives each document's unpacked loss and gradients (a tiny random Mllama written by
transformers, fp32), including documents with two images of different tile counts and a
document without images; long samples and a missing pack length are clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.recipes._vision_toys import TILE, write_special_tokens, write_tiny_mllama
from tunesmith.data import padded_collate_tiled_images_and_mask
from tunesmith.data._vision_collate import padded_collate_packed_tiled_images_and_mask

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, assets):
    from safetensors.torch import load_file

    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native

    root = tmp_path_factory.mktemp("mm_pack")
    model_dir = write_tiny_mllama(root / "mllama")
    config = json.loads((model_dir / "config.json").read_text())
    model = build_from_hf(model_dir)
    weights = hf_to_native(load_file(model_dir / "model.safetensors"), "LLAMA3_VISION", config)
    model.load_state_dict(weights, strict=True)
    images = root / "images"
    images.mkdir()
    dog = images / "dog.jpg"
    shutil.copy(assets / "torchtune_tests" / "dog_on_skateboard.jpg", dog)
    g = torch.Generator().manual_seed(0)
    for name, (w, h) in {"small.png": (20, 20), "wide.png": (60, 24)}.items():
        pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(images / name)
    specials = write_special_tokens(root / "specials.json")
    rows = [
        {"images": [str(dog)], "texts": [{"user": "What is it?", "assistant": "A dog."}]},
        {"images": [], "texts": [{"user": "Say hi.", "assistant": "Hi there, friend."}]},
        {
            "images": [str(images / "small.png"), str(images / "wide.png")],
            "texts": [
                {"user": "Two pictures?", "assistant": "Yes, two."},
                {"user": "Which is wider?", "assistant": "The second one."},
            ],
        },
        {
            "images": [str(images / "wide.png")],
            "texts": [{"user": "Colour?", "assistant": "Noise."}],
        },
        {"images": [str(dog)], "texts": [{"user": "Where?", "assistant": "On a board."}]},
    ]
    data = root / "rows.json"
    data.write_text(json.dumps(rows))
    return model.eval(), data, assets / "torchtune_tests" / "tiktoken_small.model", specials


def _transform(toy, max_seq_len):
    from tunesmith.models.llama3_2_vision import Llama3VisionTransform

    _, _, path, specials = toy
    return Llama3VisionTransform(
        str(path),
        special_tokens_path=str(specials),
        tile_size=TILE,
        patch_size=14,
        max_num_tiles=4,
        max_seq_len=max_seq_len,
    )


def _dataset(toy, max_seq_len, packed):
    from tunesmith.datasets.multimodal import the_cauldron_dataset

    return the_cauldron_dataset(
        _transform(toy, max_seq_len),
        subset="ocrvqa",
        source="json",
        data_files=str(toy[1]),
        packed=packed,
    )


def _token_losses(model, batch):
    """Per-token next-token losses ``[b, s]`` (0 where ignored) of a collated batch."""
    batch = dict(batch)
    labels = batch.pop("labels")
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    logits = model(batch.pop("tokens"), **batch)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)
    return losses, targets != -100


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_grads_equal_unpacked(toy):
    model = toy[0]
    unpacked = _dataset(toy, 128, packed=False)
    packs = _dataset(toy, 128, packed=True)
    assert packs.packed and packs.multimodal
    assert len(packs) == 2 and list(packs.sample_indices) == [0, 1, 2, 3, 4]
    tiles = sorted(
        {int(img.shape[0]) for i in range(5) for img in unpacked[i]["encoder_input"]["images"]}
    )
    assert len(tiles) > 1  # images of different tile counts, also within one document

    # unpacked: every document alone (a batch of one)
    model.zero_grad()
    total, count = torch.zeros(()), 0
    per_doc = []
    for i in range(len(unpacked)):
        batch = padded_collate_tiled_images_and_mask([unpacked[i]], padding_idx=0)
        losses, trained = _token_losses(model, batch)
        per_doc.append(losses[trained])
        total = total + losses.sum()
        count += int(trained.sum())
    (total / count).backward()
    expected_grads = _grads(model)
    expected = total.detach() / count

    # packed: both packs in one batch (images and tiles padded across the packs too)
    model.zero_grad()
    batch = padded_collate_packed_tiled_images_and_mask([packs[0], packs[1]])
    assert (
        batch["encoder_input"]["padded_tiles"].shape == batch["encoder_input"]["images"].shape[:2]
    )
    losses, trained = _token_losses(model, batch)
    assert int(trained.sum()) == count
    got = losses.sum() / count
    got.backward()
    assert abs(got.item() - expected.item()) <= 1e-5
    torch.testing.assert_close(losses[trained], torch.cat(per_doc), atol=1e-5, rtol=0)
    got_grads = _grads(model)
    assert sorted(got_grads) == sorted(expected_grads)
    for name, grad in got_grads.items():
        scale = max(1.0, float(expected_grads[name].abs().max()))
        assert (grad - expected_grads[name]).abs().max() <= 1e-5 * scale, name

    # the per-document rules matter: transformers' rule for rows that see no image (attend
    # every image token of the pack row) gives another loss
    with torch.no_grad():
        leaky = {k: v for k, v in batch.items() if k != "encoder_fallback_mask"}
        other, _ = _token_losses(model, leaky)
        assert abs(float(other.sum() / count) - float(expected)) > 1e-4
        # and so does encoding each image as padded to its own document's tiles
        encoder_input = dict(batch["encoder_input"])
        del encoder_input["padded_tiles"]
        other, _ = _token_losses(model, {**batch, "encoder_input": encoder_input})
        assert abs(float(other.sum() / count) - float(expected)) > 1e-4


def test_pack_layout(toy):
    packs = _dataset(toy, 128, packed=True)
    item = packs[0]
    seq_lens = item["seq_lens"].tolist()
    n_images = len(item["encoder_input"]["images"])
    assert sum(seq_lens) == 128 and n_images == len(item["encoder_mask"])
    starts = [0] + torch.tensor(seq_lens).cumsum(0).tolist()[:-1]
    offsets = packs.packs.pack_doc_offsets
    n_docs = int(offsets[1] - offsets[0])
    assert n_docs >= 2 and len(seq_lens) == n_docs + 1  # the tail padding is one more block
    for start, n in list(zip(starts, seq_lens))[:n_docs]:  # positions restart per document
        assert item["input_pos"][start : start + n].tolist()[:3] == [0, 1, 2][: min(3, n)]
    # a token sees only its own document's images
    doc_of = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens))
    for seen, fallback in zip(item["encoder_mask"], item["encoder_fallback_mask"]):
        rows = fallback.any(-1)
        assert doc_of[rows].unique().numel() == 1
        assert not (seen.any(-1) & ~rows).any()


def test_sample_longer_than_pack_is_an_error(toy):
    from tunesmith.datasets.multimodal import PackedMultimodalDataset

    ds = _dataset(toy, 128, packed=False)
    longest = max(range(len(ds)), key=lambda i: len(ds[i]["tokens"]))
    n = len(ds[longest]["tokens"])
    with pytest.raises(
        ValueError, match=f"too long: sample {longest} has {n} tokens, more than max_seq_len"
    ):
        PackedMultimodalDataset(ds, max_seq_len=n - 1)


def test_tokenizer_truncation_then_packs(toy):
    """Through the builders the pack length is the tokenizer's max_seq_len, which truncates
    samples first (as the text packer): no error, every pack exactly that long."""
    packs = _dataset(toy, 40, packed=True)
    assert all(packs[i]["tokens"].shape == (40,) for i in range(len(packs)))
    assert len(packs.sample_indices) >= 3


def test_packed_needs_tokenizer_max_seq_len(toy):
    from tunesmith.config import ConfigError

    with pytest.raises(ConfigError, match=r"tokenizer\.max_seq_len") as info:
        _dataset(toy, None, packed=True)
    assert info.value.key == "tokenizer.max_seq_len" and "\n" not in str(info.value)
