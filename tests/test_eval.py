"""eval recipe: tunesmith's lm-eval wrapper against lm-eval's own Hugging Face backend
(``model="hf"``) on a tiny random Llama written with ``save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402

from tunesmith.evaluation import TunesmithLM  # noqa: E402

QUESTIONS = [
    ("The sky is", ["blue", "green", "loud", "a fish"], 0),
    ("Two plus two is", ["four", "five", "seven", "blue"], 0),
    ("The dog says", ["woof", "meow", "quack", "hello world"], 0),
    ("Fire is", ["hot", "cold", "wet", "square"], 0),
    ("A year has", ["twelve months", "two days", "one hour", "nine weeks"], 0),
    ("The opposite of up is", ["down", "left", "green", "up"], 0),
]


def _write_model(folder: Path) -> None:
    """Byte-level BPE tokenizer.json (BOS added by its post-processor, like Llama 3) + a tiny
    random Llama, both as a Hugging Face folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [q + " " + " ".join(c) for q, c, _ in QUESTIONS] * 10
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                    "eos_token": "</s>", "pad_token": "<pad>"})
    )  # fmt: skip
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def _write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny_mc.json"
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    data.write_text(json.dumps(rows))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    _write_model(root / "model")
    return root / "model", _write_task(root / "tasks")


def _config(model_dir: Path, tasks_dir: Path, **over: Any) -> Any:
    return OmegaConf.create({
        "model": {"_component_": "tunesmith.models.build_from_hf",
                  "checkpoint_dir_or_config": str(model_dir)},
        "checkpointer": {"_component_": "tunesmith.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(model_dir),
                         "checkpoint_files": ["model.safetensors"],
                         "output_dir": str(model_dir.parent / "unused"), "model_type": "LLAMA3"},
        "tokenizer": {"_component_": "tunesmith.data.tokenizers.HuggingFaceBaseTokenizer",
                      "tokenizer_json_path": str(model_dir / "tokenizer.json"),
                      "tokenizer_config_json_path": str(model_dir / "tokenizer_config.json")},
        "device": "cpu", "dtype": "fp32", "seed": 1234,
        "tasks": ["tiny_mc"], "include_path": str(tasks_dir), "batch_size": 4,
        **over,
    })  # fmt: skip


def _ours(model_dir: Path, tasks_dir: Path, batch_size: int = 3) -> TunesmithLM:
    from tunesmith.config import instantiate
    from tunesmith.recipes.generate import load_model

    cfg = _config(model_dir, tasks_dir)
    model, _ = load_model(cfg, torch.device("cpu"), torch.float32)
    return TunesmithLM(model, instantiate(cfg.tokenizer), batch_size=batch_size)


def _hf(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=2)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_equals_hf_backend(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, tasks_dir = files
    ours, hf = _ours(model_dir, tasks_dir), _hf(model_dir, monkeypatch)
    assert ours.tok_encode("The sky is") == hf.tok_encode("The sky is")  # BOS first in both
    pairs = [
        ("The sky is", " blue"),
        ("The sky is ", "green"),  # trailing space moves into the continuation
        ("", "Fire is hot"),  # empty context: the prefix (BOS) token
        ("Two plus two is", " four and more words than one token"),
        ("The dog says", " woof"),
    ]
    got = ours.loglikelihood(_requests("loglikelihood", pairs))
    want = hf.loglikelihood(_requests("loglikelihood", pairs))
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert abs(g - w) <= 1e-4 * max(1.0, abs(w))
        assert g_greedy == w_greedy
    texts = [("The sky is blue. Two plus two is four. " * 3,), ("Fire is hot",)]
    got_r = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    want_r = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    for g, w in zip(got_r, want_r, strict=True):
        assert abs(g - w) <= 1e-4 * max(1.0, abs(w))


def test_rolling_windows_beyond_max_length(files: tuple[Path, Path]) -> None:
    """A text longer than max_seq_length is scored in windows: every token exactly once."""
    model_dir, tasks_dir = files
    ours = _ours(model_dir, tasks_dir)
    text = "The opposite of up is down. " * 12
    full = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))[0]
    ids = ours.tok_encode(text)
    ours._max_length = 16
    windowed = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))[0]
    assert len(ids) > 3 * 16
    assert windowed < full  # less context per token: a worse (but finite) score
    with torch.no_grad():  # the full-context score by hand: sum of next-token log-probs
        logp = torch.log_softmax(ours.model(torch.tensor([[ours.prefix_token_id] + ids]))[0], -1)
    by_hand = logp[:-1].gather(-1, torch.tensor(ids)[:, None]).sum().item()
    assert abs(full - by_hand) <= 1e-4 * abs(by_hand)


def test_generate_until_equals_hf_backend(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, tasks_dir = files
    ours, hf = _ours(model_dir, tasks_dir), _hf(model_dir, monkeypatch)
    args = [
        ("The sky is", {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}),
        ("Fire is", {"until": ["s"], "max_gen_toks": 10, "do_sample": False}),
    ]
    got = ours.generate_until(_requests("generate_until", args))
    want = hf.generate_until(_requests("generate_until", args))
    assert got == want
    assert len(got[0]) > 0
    # batched (same arguments, left-padded) == one at a time
    same = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}
    contexts = ["The sky is", "Two plus two is", "Fire", "The opposite of up is down and"]
    batched = TunesmithLM(ours.model, ours._tokenizer, batch_size=4)
    single = TunesmithLM(ours.model, ours._tokenizer, batch_size=1)
    reqs = _requests("generate_until", [(c, same) for c in contexts])
    assert batched.generate_until(reqs) == single.generate_until(reqs)


@pytest.mark.slow
def test_eval_task_equals_hf_backend(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The acceptance check: the same accuracy (and per-choice loglikelihoods) as lm-eval's
    HF backend on a local multiple-choice task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tunesmith.recipes.eval import recipe_main, run_evaluation

    model_dir, tasks_dir = files
    cfg = _config(model_dir, tasks_dir, log_samples=True)
    ours = run_evaluation(_ours(model_dir, tasks_dir, batch_size=4), cfg)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "device": "cpu", "dtype": "float32"},
        tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(tasks_dir)),
        batch_size=4, log_samples=True,
    )  # fmt: skip
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == ref["results"]["tiny_mc"][metric]
    got = [[float(r[0]) for r in s["filtered_resps"]] for s in ours["samples"]["tiny_mc"]]
    want = [[float(r[0]) for r in s["filtered_resps"]] for s in ref["samples"]["tiny_mc"]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-5)
    # the recipe end to end prints lm-eval's table and writes results.json
    out = model_dir.parent / "eval_out"
    recipe_main(_config(model_dir, tasks_dir, output_dir=str(out), limit=4))
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "acc" in printed
    assert "tiny_mc" in json.loads((out / "results.json").read_text())["results"]
    from tunesmith.config import ConfigError
    from tunesmith.utils._integrity import CheckpointError

    kept = (out / "results.json").read_bytes()  # a second run keeps the first one's results
    with pytest.raises(CheckpointError, match="already holds results.json"):
        recipe_main(_config(model_dir, tasks_dir, output_dir=str(out), limit=4))
    assert (out / "results.json").read_bytes() == kept

    with pytest.raises(ConfigError, match="unknown lm-eval task"):
        run_evaluation(None, _config(model_dir, tasks_dir, tasks=["no_such_task_xyz"]))


def test_config_errors(files: tuple[Path, Path]) -> None:
    from tunesmith.config import ConfigError
    from tunesmith.recipes.eval import run_evaluation

    model_dir, tasks_dir = files
    with pytest.raises(ConfigError, match="include_path"):
        run_evaluation(None, _config(model_dir, tasks_dir, include_path="/nonexistent/tasks"))
    with pytest.raises(ConfigError, match="at least one"):
        run_evaluation(None, _config(model_dir, tasks_dir, tasks=[]))


def test_apply_chat_template_matches_transformers(files: tuple[Path, Path]) -> None:
    from tunesmith.data.tokenizers import HuggingFaceModelTokenizer

    model_dir, tasks_dir = files
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>\n"
        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok = HuggingFaceModelTokenizer(
        model_dir / "tokenizer.json",
        tokenizer_config_json_path=model_dir / "tokenizer_config.json",
        chat_template=template,
    )
    ours = TunesmithLM(_ours(model_dir, tasks_dir).model, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"}]
    want = hf_tok.apply_chat_template(
        chat, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert ours.apply_chat_template(chat) == want
    ids = ours.tok_encode(want)
    assert ids[0] == 1 and ids[1] != 1  # the template's BOS is not doubled
    assert ours.tok_encode(want) == hf_tok(want, add_special_tokens=False)["input_ids"]
