"""Fixtures for dataset tests: a transparent byte-level tokenizer and an isolated cache."""

from __future__ import annotations

import pytest

import datasets
from tests.datasets.byte_tokenizer import ByteTokenizer

datasets.disable_progress_bars()


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the tokenization cache of every test in its own folder."""
    monkeypatch.setenv("TUNESMITH_DATA_CACHE_DIR", str(tmp_path / "tokenized_cache"))
