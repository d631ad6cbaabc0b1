"""Reward functions: compute_rewards checks, built-ins, and torchtune main's reward classes
equal torchtune's own code (loaded from the torchtune mirror) and its test expectations."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tunesmith.config import ConfigError
from tunesmith.config._components import resolve_component
from tunesmith.rlhf.rewards import (
    FormatReward,
    FormattedMathCorrectnessReward,
    MathAnswerReward,
    ModelReward,
    ReasoningGymReward,
    RewardError,
    RewardFunction,
    RewardOutput,
    ThinkingAnswerFormattingReward,
    compute_rewards,
    math_answers_equal,
    shaped_correctness_reward,
)

MIRROR = Path("/work/.mirror/pytorch+torchtune/repo")

COMPLETIONS = [
    "<think>\n2 and 3\n</think>\n<answer>\n5\n</answer>\n",
    "<think>sum</think> <answer>5</answer>",
    "<answer>5</answer><think>late</think>",
    "the answer is 5.0",
    "I think it is $10$",
    "<think>x</think><answer>7</answer>",
    "",
]
ANSWERS = ["5", "5", "5", "5", "10", "6", "3"]


def _torchtune_head(module: str) -> types.ModuleType:
    """torchtune main's ``module`` source from the mirror, run with a stub tokenizer import."""
    if not MIRROR.exists():
        pytest.skip(f"needs the torchtune mirror at {MIRROR}")
    path = module.replace(".", "/") + ".py"
    src = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"],
                         capture_output=True, text=True)  # fmt: skip
    if src.returncode:
        pytest.skip(f"{path} not in the torchtune mirror")
    stub = types.ModuleType("torchtune.modules.transforms.tokenizers")
    stub.ModelTokenizer = stub.HuggingFaceModelTokenizer = object
    saved = {k: sys.modules.get(k) for k in ("torchtune.modules.transforms.tokenizers",
                                              "torchtune.modules.tokenizers")}  # fmt: skip
    sys.modules["torchtune.modules.transforms.tokenizers"] = stub
    sys.modules["torchtune.modules.tokenizers"] = stub
    try:
        mod = types.ModuleType(f"torchtune_head_{module.replace('.', '_')}")
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(src.stdout, path, "exec"), mod.__dict__)  # noqa: S102 - reference code
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def test_torchtune_reward_classes_equal_torchtune_main() -> None:
    ref = _torchtune_head("torchtune.dev.rl.rewards")
    ids = torch.zeros(len(COMPLETIONS), 4, dtype=torch.long)
    for ours_cls, ref_cls, kw in (
        (FormattedMathCorrectnessReward, ref.FormattedMathCorrectnessReward,
         dict(answer_tag="answer", positive_reward=10.0, negative_reward=-1.0)),
        (ThinkingAnswerFormattingReward, ref.ThinkingAnswerFormattingReward,
         dict(think_tag="think", answer_tag="answer", positive_reward=1.0)),
    ):  # fmt: skip
        ours = ours_cls(**kw)(ids, COMPLETIONS, ANSWERS)
        theirs = ref_cls(**kw)(ids, COMPLETIONS, ANSWERS)
        assert isinstance(ours, RewardOutput)
        assert ours.reward_base_name == theirs.reward_base_name
        assert torch.equal(ours.total_reward.float(), theirs.total_reward.float())
        assert torch.equal(ours.successes, theirs.successes)
        assert ours.rewards.keys() == theirs.rewards.keys()
        for k in ours.rewards:
            assert torch.equal(ours.rewards[k].float(), theirs.rewards[k].float())
        # our RewardFunction signature gives the same totals, answers read from rows
        rows = [{"answer": a} for a in ANSWERS]
        as_fn = ours_cls(**kw)(["p"] * len(rows), COMPLETIONS, rows)
        assert as_fn == ours.total_reward.tolist()
    assert ours.total_reward.tolist()[:3] == [2.0, 1.0, 0.0]


def test_shaped_correctness_reward_equals_torchtune_grpo() -> None:
    ref = _torchtune_head("torchtune.dev.grpo.rewards")
    cases = ["think</think> <answer>5</answer>", "x</think><answer>$5</answer>", "nothing",
             "a</think><answer>6</answer>", "<<5>></think><answer>5</answer>"]  # fmt: skip
    for completion in cases:
        assert shaped_correctness_reward("5", completion) == tuple(
            float(v) for v in ref.shaped_correctness_reward("5", completion)
        )


class TestRewardOutput:  # torchtune main's tests/torchtune/dev/rl/rewards/test_rewards.py
    @pytest.fixture
    def sample_reward_output(self):
        reward_output_cls = resolve_component("torchtune.dev.rl.rewards.RewardOutput")
        return reward_output_cls(
            reward_base_name="test_reward",
            total_reward=torch.tensor([1.0, 2.0, 3.0]),
            successes=torch.tensor([1.0, 0.0, 1.0]),
            rewards={
                "sub_reward_1": torch.tensor([0.5, 1.5, 2.5]),
                "sub_reward_2": torch.tensor([10.0, 20.0, 30.0]),
            },
        )

    def test_log(self, sample_reward_output):
        log_dict = sample_reward_output.log(prefix="train")
        expected_log = {
            "train/test_reward/sub_reward_1": 1.5,
            "train/test_reward/sub_reward_2": 20.0,
            "train/test_reward": 2.0,
            "train/test_reward/successes": 2.0 / 3.0,
        }
        assert log_dict.keys() == expected_log.keys()
        for key in expected_log:
            assert log_dict[key] == pytest.approx(expected_log[key])

    def test_log_no_prefix(self, sample_reward_output):
        log_dict = sample_reward_output.log()
        expected_log = {
            "test_reward/sub_reward_1": 1.5,
            "test_reward/sub_reward_2": 20.0,
            "test_reward": 2.0,
            "test_reward/successes": 2.0 / 3.0,
        }
        assert log_dict.keys() == expected_log.keys()
        for key in expected_log:
            assert log_dict[key] == pytest.approx(expected_log[key])


def test_torchtune_names_resolve() -> None:
    assert resolve_component("torchtune.dev.rl.rewards.FormattedMathCorrectnessReward") is (
        FormattedMathCorrectnessReward
    )
    assert resolve_component("torchtune.dev.grpo.rewards.shaped_correctness_reward") is (
        shaped_correctness_reward
    )


def test_compute_rewards_weights_and_names() -> None:
    rows = [{"answer": a} for a in ANSWERS]
    fns = [MathAnswerReward(), FormatReward(), FormatReward(pattern="think")]
    total, per = compute_rewards(fns, ["p"] * len(rows), COMPLETIONS, rows, weights=[2.0, 1.0, 0.5])
    assert list(per) == ["math_answer", "format", "format_2"]
    assert per["math_answer"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert per["format"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    expected = 2.0 * per["math_answer"] + per["format"] + 0.5 * per["format_2"]
    assert torch.equal(total, expected) and total.dtype == torch.float32
    assert all(isinstance(f, RewardFunction) for f in fns)


def _raises(prompts, completions, rows):
    raise KeyError("score")


@pytest.mark.parametrize(
    "fn, match",
    [
        (_raises, r"'_raises' raised KeyError"),
        (lambda p, c, r: [float("nan")] * len(c), r"returned nan for row 0"),
        (lambda p, c, r: [1.0] * (len(c) - 1) + [math.inf], r"returned inf for row 1"),
        (lambda p, c, r: [1.0], r"returned 1 values for 2 completions"),
        (lambda p, c, r: ["x", 1.0], r"returned 'x' for row 0"),
    ],
)
def test_reward_errors_name_function_and_row(fn, match) -> None:
    with pytest.raises(RewardError, match=match) as info:
        compute_rewards([fn], ["a", "b"], ["1", "2"], [{}, {}])
    assert isinstance(info.value, ConfigError)
    with pytest.raises(RewardError, match=r"row 1 has no 'answer' column"):
        compute_rewards([MathAnswerReward()], ["a", "b"], ["1", "2"], [{"answer": "1"}, {}])


def test_math_answer_normalising_and_math_verify() -> None:
    assert math_answers_equal("1000", "1,000.0")
    assert math_answers_equal("0.5", "\\frac{1}{2}")
    assert not math_answers_equal("3", "4")
    reward = MathAnswerReward(answer_tag=None)
    assert reward(["p"] * 3, ["so \\boxed{42}", "#### 7", "no idea"], [{"answer": "42"},
                  {"answer": "7"}, {"answer": "1"}]) == [1.0, 1.0, 0.0]  # fmt: skip


def test_reasoning_gym_reward_uses_its_scorer() -> None:
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=2, seed=0)
    rows = [{"entry": data[i], "answer": data[i]["answer"]} for i in range(2)]
    completions = [f"<answer>{data[0]['answer']}</answer>", "<answer>banana</answer>"]
    out = ReasoningGymReward()(["q", "q"], completions, rows)
    assert out == [data.score_answer(str(data[0]["answer"]), data[0]), 0.0]
    assert out[0] == 1.0


def test_model_reward_scores_with_sequence_scores() -> None:
    from tests.datasets.byte_tokenizer import ByteTokenizer
    from tunesmith.models import build_decoder
    from tunesmith.models.spec import ModelSpec
    from tunesmith.modules import sequence_scores

    torch.manual_seed(0)
    spec = ModelSpec(family="LLAMA3", vocab_size=260, num_layers=1, num_heads=2, num_kv_heads=1,
                     embed_dim=32, intermediate_dim=64, max_seq_len=64, num_classes=1)  # fmt: skip
    model = build_decoder(spec).eval()
    tok = ByteTokenizer()
    fn = ModelReward(model, tok, batch_size=2)
    out = fn(["ab", "c", "hello"], ["x", "yz", "!"], [{}, {}, {}])
    for p, c, v in zip(["ab", "c", "hello"], ["x", "yz", "!"], out):
        ids = torch.tensor([tok.encode(p + c)])
        with torch.no_grad():
            assert abs(float(sequence_scores(model, ids)[0, 0]) - v) <= 1e-5
