"""tunesmith.compat: `import torchtune` served from tunesmith (module aliasing, never shadowing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunesmith import compat
from tunesmith.config import instantiate, load_config

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def finder() -> Iterator[None]:
    assert compat.install()
    yield
    compat.uninstall()


def test_torchtune_modules_are_tunesmith_modules(finder: None) -> None:
    import torchtune.data
    import torchtune.modules.peft
    import torchtune.utils.metric_logging

    import tunesmith.data
    import tunesmith.modules.peft
    import tunesmith.training.metric_logging

    assert torchtune.data is tunesmith.data
    assert torchtune.modules.peft.LoRALinear is tunesmith.modules.peft.LoRALinear
    logging = tunesmith.training.metric_logging
    assert torchtune.utils.metric_logging.DiskLogger is logging.DiskLogger
    assert tunesmith.data.__spec__.name == "tunesmith.data"  # the alias leaves tunesmith's spec


def test_private_files_and_per_object_entries(finder: None) -> None:
    from torchtune.data._messages import Message
    from torchtune.modules.transforms import Transform, VisionCrossAttentionMask
    from torchtune.rlhf.loss import DPOLoss, PPOLoss

    import tunesmith.data
    import tunesmith.modules.transforms
    import tunesmith.rlhf.loss
    import tunesmith.rlhf.ppo

    assert Message is tunesmith.data.Message  # one class, not a second copy of the file
    assert PPOLoss is tunesmith.rlhf.ppo.PPOLoss and DPOLoss is tunesmith.rlhf.loss.DPOLoss
    assert VisionCrossAttentionMask is tunesmith.data.VisionCrossAttentionMask
    assert Transform is tunesmith.modules.transforms.Transform
    with pytest.raises(ModuleNotFoundError):
        import torchtune.no_such_package  # noqa: F401
    with pytest.raises(ImportError, match="NoSuchName"):
        from torchtune.modules.peft.no_such_file import NoSuchName  # noqa: F401


def test_functions_of_torchtune_files_are_not_modules(finder: None) -> None:
    # a missing function of a torchtune 0.6.1 file is an ImportError, never a module object
    with pytest.raises(ImportError, match="no_such_function"):
        from torchtune.utils._logging import no_such_function  # noqa: F401
    from torchtune.models.qwen2._component_builders import lora_qwen2_self_attention

    import tunesmith.models.qwen2

    assert lora_qwen2_self_attention is tunesmith.models.qwen2.lora_qwen2_self_attention


def test_patching_a_torchtune_name_reaches_the_code_that_calls_it(finder: None) -> None:
    import importlib
    from unittest import mock

    import datasets

    original = datasets.load_dataset
    view = importlib.import_module("torchtune.datasets._sft")
    with mock.patch("torchtune.datasets._sft.load_dataset") as outer:
        assert datasets.load_dataset is outer and view.load_dataset is outer
        with mock.patch("torchtune.datasets._preference.load_dataset") as inner:
            assert datasets.load_dataset is inner
        assert datasets.load_dataset is outer
    assert datasets.load_dataset is original and view.load_dataset is original


def test_never_shadows_a_real_torchtune(tmp_path: Path) -> None:
    (tmp_path / "torchtune").mkdir()
    (tmp_path / "torchtune" / "__init__.py").write_text("REAL = True\n")
    code = (
        "import tunesmith.compat as c, sys; ok = c.install(); import torchtune; "
        "print(ok, getattr(torchtune, 'REAL', False))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(tmp_path)])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["False", "True"]


_USER_DATASET = """
from torchtune.data import Message
from torchtune.datasets import SFTDataset
from torchtune.modules.transforms import Transform


class QAToMessages(Transform):
    def __call__(self, sample):
        return {"messages": [Message(role="user", content=sample["q"], masked=True),
                             Message(role="assistant", content=sample["a"])]}


def qa_dataset(tokenizer, data_files):
    return SFTDataset(source="json", data_files=data_files, split="train",
                      message_transform=QAToMessages(), model_transform=tokenizer)
"""


def test_user_dataset_importing_torchtune_is_a_component(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config instantiation installs the finder by itself for a module that imports torchtune."""
    model = assets / "torchtune_tests" / "m.model"
    if not model.is_file():
        pytest.skip(f"needs {model}")
    rows = [{"q": "What is 2+2?", "a": "4"}, {"q": "Name a colour.", "a": "Blue."}]
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    (tmp_path / "my_qa_data.py").write_text(textwrap.dedent(_USER_DATASET))
    (tmp_path / "cfg.yaml").write_text(
        textwrap.dedent(f"""
        tokenizer:
          _component_: torchtune.models.llama2.llama2_tokenizer
          path: {model}
          prompt_template: null
        dataset:
          _component_: my_qa_data.qa_dataset
          data_files: {tmp_path / "qa.json"}
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    compat.uninstall()
    try:
        cfg = load_config(tmp_path / "cfg.yaml")
        tokenizer = instantiate(cfg.tokenizer)
        dataset = instantiate(cfg.dataset, tokenizer=tokenizer)
        assert compat.installed()
        from tunesmith.data import Message

        for row, sample in zip(rows, dataset, strict=True):
            expected = tokenizer(
                {
                    "messages": [
                        Message(role="user", content=row["q"], masked=True),
                        Message(role="assistant", content=row["a"]),
                    ]
                }
            )
            assert sample["tokens"] == expected["tokens"]
            masked = [-100 if m else t for t, m in zip(expected["tokens"], expected["mask"])]
            assert sample["labels"] == masked
    finally:
        compat.uninstall()
        sys.modules.pop("my_qa_data", None)


def test_torchtune_files_never_change_tunesmith_modules(finder: None) -> None:
    """torchtune's ``vision_utils/get_canvas_best_fit.py`` is a module named like the function."""
    import tunesmith.data._image_transforms as transforms

    before = dict(vars(transforms))
    from torchtune.data._messages import Message  # noqa: F401
    from torchtune.modules.transforms.vision_utils.get_canvas_best_fit import (
        get_canvas_best_fit,
    )

    import tunesmith.data

    assert get_canvas_best_fit is before["get_canvas_best_fit"]
    assert vars(transforms) == before
    assert tunesmith.data._messages.__name__ == "tunesmith.data._messages"


_MOVED_TORCHAO_PROBE = """
import sys, importlib.util
from tunesmith import compat
compat.install()
if importlib.util.find_spec("torchao.dtypes.nf4tensor") is None:
    print("not moved"); raise SystemExit(0)
import torchao.dtypes
real = sys.modules["torchao.dtypes"]
from torchao.dtypes.nf4tensor import NF4Tensor, to_nf4
assert sys.modules["torchao.dtypes"] is real, "the real torchao.dtypes was replaced"
try:
    from torchao.dtypes import not_a_torchao_name
except ImportError:
    print("ok")
"""


def test_a_moved_torchao_module_leaves_its_real_parent_alone() -> None:
    """Serving ``torchao.dtypes.nf4tensor`` (moved in later torchao) keeps ``torchao.dtypes``
    the real module: a missing name there is an ImportError, not endless recursion."""
    pytest.importorskip("torchao")
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", _MOVED_TORCHAO_PROBE], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] in ("ok", "not moved")


@pytest.mark.parametrize(
    ("generic", "fixed", "kwargs"),
    [
        ("tunesmith.models.qwen2.qwen2", "tunesmith.models.qwen2.qwen2_0_5b",
         dict(vocab_size=151_936, num_layers=24, num_heads=14, num_kv_heads=2, embed_dim=896,
              intermediate_dim=4864, max_seq_len=32_768, norm_eps=1e-6,
              tie_word_embeddings=True)),
        ("tunesmith.models.llama3_2.llama3_2", "tunesmith.models.llama3_2.llama3_2_1b",
         dict(vocab_size=128_256, num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048,
              max_seq_len=131_072, intermediate_dim=8192)),
        ("tunesmith.models.phi3.phi3", "tunesmith.models.phi3.phi3_mini",
         dict(vocab_size=32_064, num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=3072,
              intermediate_dim=8192, max_seq_len=4096)),
    ],
)  # fmt: skip
def test_generic_builders_build_the_fixed_sizes(generic: str, fixed: str, kwargs: dict) -> None:
    """torchtune's generic builder with a size's numbers gives that size's parameters."""
    import torch

    from tunesmith.config import resolve_component

    with torch.device("meta"):
        a = resolve_component(generic)(**kwargs)
        b = resolve_component(fixed)()
    shapes = {k: v.shape for k, v in a.state_dict().items()}
    assert shapes == {k: v.shape for k, v in b.state_dict().items()}
    assert a.norm.eps == b.norm.eps


@pytest.mark.slow
def test_tunesmith_run_serves_import_torchtune_to_a_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(
        textwrap.dedent("""
        from torchtune import config, training
        from torchtune.data import Message


        def recipe_main(cfg):
            seed = training.set_seed(cfg.seed)
            msg = config.instantiate(cfg.message)
            assert isinstance(msg, Message)
            print("RESULT", seed, type(msg).__module__, msg.text_content)
        """)
    )
    (tmp_path / "cfg.yaml").write_text(
        "seed: 7\nmessage:\n  _component_: torchtune.data.Message\n  role: user\n  content: hello\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "tunesmith", "run", "my_recipe.py", "--config", "cfg.yaml"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 7 tunesmith.data._messages hello" in out.stdout
    env["TUNESMITH_NO_TORCHTUNE_COMPAT"] = "1"
    off = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert off.returncode != 0 and "torchtune" in off.stderr
