"""Weighted dataset mixes (torchtune main's ``datasets:`` list): the stop criteria of
torchdata's MultiNodeWeightedSampler, weights, determinism, and the config errors."""

from __future__ import annotations

import collections

import pytest

from tunesmith.config import ConfigError
from tunesmith.datasets import WeightedMixDataset, build_dataset_mix, get_multi_dataset


def _mix(sizes: dict[str, int], weights: dict[str, float], stop: str, seed: int = 0):
    data = {name: [(name, i) for i in range(n)] for name, n in sizes.items()}
    return WeightedMixDataset(data, weights, stop_criteria=stop, seed=seed)


def test_cycle_until_all_exhausted_sees_every_row_and_repeats_the_small_source():
    mix = _mix({"a": 3, "b": 20}, {"a": 1.0, "b": 1.0}, "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED")
    rows = [mix[i] for i in range(len(mix))]
    assert {r for r in rows if r[0] == "b"} == {("b", i) for i in range(20)}
    counts = collections.Counter(r[0] for r in rows)
    assert counts["b"] == 20  # the last source to run out ends the mix at its exhaustion
    assert counts["a"] > 3  # the small one started again
    # in order within a source (shuffle off): a0 a1 a2 a0 a1 ...
    assert [r[1] for r in rows if r[0] == "a"][:6] == [0, 1, 2, 0, 1, 2][: min(6, counts["a"])]


def test_all_exhausted_reads_each_row_once():
    mix = _mix({"a": 3, "b": 20, "c": 7}, {"a": 5.0, "b": 1.0, "c": 2.0}, "ALL_DATASETS_EXHAUSTED")
    rows = [mix[i] for i in range(len(mix))]
    assert sorted(rows) == sorted(
        [("a", i) for i in range(3)] + [("b", i) for i in range(20)] + [("c", i) for i in range(7)]
    )


def test_first_exhausted_stops_at_the_first_empty_draw():
    mix = _mix({"a": 4, "b": 1000}, {"a": 1.0, "b": 1.0}, "FIRST_DATASET_EXHAUSTED")
    counts = collections.Counter(s for s in mix.sources())
    assert counts["a"] == 4
    assert 0 < counts["b"] < 1000


def test_weights_set_the_proportions_and_the_seed_the_order():
    mix = _mix({"a": 4000, "b": 4000}, {"a": 3.0, "b": 1.0}, "FIRST_DATASET_EXHAUSTED")
    counts = collections.Counter(mix.sources())
    assert counts["a"] / (counts["a"] + counts["b"]) == pytest.approx(0.75, abs=0.03)
    again = _mix({"a": 4000, "b": 4000}, {"a": 3.0, "b": 1.0}, "FIRST_DATASET_EXHAUSTED")
    other = _mix({"a": 4000, "b": 4000}, {"a": 3.0, "b": 1.0}, "FIRST_DATASET_EXHAUSTED", seed=1)
    assert (again.schedule == mix.schedule).all()
    assert len(other) != len(mix) or (other.schedule != mix.schedule).any()


def test_get_multi_dataset_takes_torchtunes_spelling_and_shuffles_per_source():
    data = {"a": list(range(50)), "b": list(range(100, 150))}
    mix = get_multi_dataset(
        data, {"a": 1, "b": 1}, stop_criteria="CYCLE_UNTIL_ALL_DATASETS_EXHASTED"
    )
    assert mix.stop_criteria == "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED"
    shuffled = WeightedMixDataset(
        data, {"a": 1, "b": 1}, "ALL_DATASETS_EXHAUSTED", shuffle={"a": True}
    )
    a = [shuffled[i] for i in range(len(shuffled)) if shuffled[i] < 100]
    assert sorted(a) == list(range(50)) and a != list(range(50))


@pytest.mark.parametrize(
    ("entries", "loader", "match"),
    [
        ([], None, r"^datasets: the list is empty"),
        (
            [{"source": "json", "transform": {"_component_": "x"}}],
            None,
            r"datasets\[0\]\.weight: missing",
        ),
        ([{"source": "json", "weight": 1.0}], None, r"datasets\[0\]\.transform: missing"),
        (
            [{"source": "json", "transform": {}, "weight": 0}],
            None,
            r"datasets\[0\]\.weight=0\.0: must be > 0",
        ),
        (
            [{"source": "json", "transform": {}, "weight": 1, "streaming": True}],
            None,
            r"datasets\[0\]\.streaming=True",
        ),
        (
            [{"source": "json", "transform": {}, "weight": 1}],
            {"packed": True},
            r"dataloader\.packed=True",
        ),
        (
            [{"source": "json", "transform": {}, "weight": 1}],
            {"batch": 2},
            r"dataloader\.batch: unknown key",
        ),
        (
            [{"source": "json", "transform": {}, "weight": 1}],
            {"stop_criteria": "NEVER"},
            r"dataloader\.stop_criteria='NEVER'",
        ),
        (
            [{"source": "json", "transform": {}, "weight": 1}],
            {"parallel_method": "gpu"},
            r"dataloader\.parallel_method='gpu'",
        ),
    ],
)
def test_config_mistakes_name_the_key(entries, loader, match):
    with pytest.raises(ConfigError, match=match):
        build_dataset_mix(entries, loader, tokenizer=None)
