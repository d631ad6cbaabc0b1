"""`tunesmith upload` and finetune's `upload_to_hub` against the loopback fake hub.

A real tiny LoRA finetune publishes its final checkpoint (weights, config, tokenizer and
chat-template files, the PEFT adapter, the loss plot and a generated model card);
`tunesmith download` of the repo returns the same bytes; the card holds the run's
hyperparameters and losses; bad input is one `error:` line, exit 2, before any request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._fake_hub import REPO, TOKEN, FakeHub, reset, serve
from tests.recipes.conftest import LORA, read_losses

pytest.importorskip("huggingface_hub")

TOKENIZER_FILES = {
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}),
    "tokenizer_config.json": json.dumps({"eos_token": "<eos>", "chat_template": "{{ 'x' }}"}),
    "special_tokens_map.json": json.dumps({"eos_token": "<eos>"}),
    "chat_template.jinja": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
}


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    reset()
    with serve() as url:
        yield url


@pytest.fixture
def hub_env(hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The fake hub as the endpoint (in this process and for subprocesses), LFS not xet."""
    import huggingface_hub.constants as constants

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=TOKEN,
    )
    for key in [k for k in os.environ if k.startswith("HF_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not any(q.startswith(".") for q in p.relative_to(folder).parts)
    }


@pytest.fixture
def model_with_tokenizer(tiny_llama: Path, tmp_path: Path) -> Path:
    """The tiny Llama plus tokenizer and chat-template files (copied into every save)."""
    folder = tmp_path / "base"
    shutil.copytree(tiny_llama, folder)
    for name, text in TOKENIZER_FILES.items():
        (folder / name).write_text(text)
    return folder


def test_upload_to_hub_publishes_lora_run_and_download_matches(
    run_finetune: Callable[..., Path],
    model_with_tokenizer: Path,
    hub_env: dict[str, str],
    tmp_path: Path,
) -> None:
    repo = "tiny-org/lora-run"
    out = run_finetune(
        "lora",
        **{f"model.{k}": v for k, v in LORA.items()},
        **{"model.checkpoint_dir_or_config": str(model_with_tokenizer)},
        **{"checkpointer.checkpoint_dir": str(model_with_tokenizer)},
        max_steps_per_epoch=5,
        upload_to_hub={"repo_id": repo, "private": True},
    )
    saved = out / "epoch_1"
    local = _local_files(saved)
    hub_files = FakeHub.uploaded[repo]
    expected = set(local) | {"README.md", "loss_curve.png"}
    assert set(hub_files) == expected
    for name in (*TOKENIZER_FILES, "adapter/adapter_model.safetensors", "model.safetensors"):
        assert name in hub_files
    for name, body in local.items():
        assert hub_files[name] == body, name
    assert hub_files["loss_curve.png"] == (out / "logs" / "log.png").read_bytes()
    assert FakeHub.created[repo]["private"] is True
    assert "adapter/adapter_model.safetensors" in FakeHub.uploaded_lfs[repo]
    # the saved folder is untouched: no card written into it, its marker still verifies
    from tunesmith.training.checkpointing._atomic import verify_checkpoint

    assert not (saved / "README.md").exists()
    assert verify_checkpoint(saved) is None

    card = hub_files["README.md"].decode()
    front = card.split("---")[1]
    assert '"peft"' in front and '"lora"' in front and 'pipeline_tag: "text-generation"' in front
    assert "| learning rate | 0.003 |" in card
    assert "| LoRA rank | 8 |" in card and "| LoRA alpha | 16.0 |" in card
    assert "| batch size (per device) | 4 |" in card and "| total steps | 5 |" in card
    assert "| max sequence length | 256 |" in card and "| epochs | 1 |" in card
    assert "tunesmith.datasets.instruct_dataset" in card
    assert "data_files `reverse.json`" in card and str(tmp_path) not in card  # no local paths
    losses = read_losses(out)
    assert len(losses) == 5
    for step, loss in enumerate(losses, 1):
        assert f"| {step} | {loss:.4f} |" in card
    assert f"Final training loss: {losses[-1]:.4f} (step 5)" in card
    assert "![training loss](loss_curve.png)" in card

    # download of the uploaded repo returns byte-identical files (a private repo: token)
    dest = tmp_path / "downloaded"
    result = _cli(hub_env, "download", repo, "--output-dir", str(dest))
    assert result.returncode == 0, result.stderr
    assert _local_files(dest) == hub_files

    # the CLI publishes the same folder to another repo, on a branch, with a message
    result = _cli(
        hub_env,
        "upload",
        str(saved),
        "tiny-org/lora-cli",
        "--revision",
        "dev",
        "--commit-message",
        "first release",
    )
    assert result.returncode == 0, result.stderr
    cli_files = dict(FakeHub.uploaded["tiny-org/lora-cli"])
    assert cli_files.pop("README.md").decode() == card.replace("lora-run", "lora-cli")
    assert cli_files == {k: v for k, v in hub_files.items() if k != "README.md"}
    assert FakeHub.commits[-1]["summary"] == "first release"
    assert FakeHub.commits[-1]["revision"] == "dev"
    assert ("tiny-org/lora-cli", "dev") in FakeHub.branches
    assert FakeHub.created["tiny-org/lora-cli"]["private"] is False


def _complete_folder(root: Path) -> Path:
    from tunesmith.training.checkpointing._atomic import mark_complete

    folder = root / "epoch_1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    mark_complete(folder, name="epoch_1", epoch=1, has_model=True)
    return folder


def test_upload_keeps_a_users_readme(hub_env: dict[str, str], tmp_path: Path) -> None:
    folder = _complete_folder(tmp_path / "run")
    from tunesmith.training.checkpointing._atomic import mark_complete

    (folder / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    mark_complete(folder, name="epoch_1", epoch=1, has_model=True)
    result = _cli(hub_env, "upload", str(folder), "tiny-org/own-readme")
    assert result.returncode == 0, result.stderr
    assert "exists: uploading it as is" in result.stderr
    assert (
        FakeHub.uploaded["tiny-org/own-readme"]["README.md"] == b"---\nlicense: mit\n---\n# mine\n"
    )
    assert (folder / "README.md").read_text() == "---\nlicense: mit\n---\n# mine\n"


def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    complete = _complete_folder(root / "ok")
    incomplete = root / "half" / "epoch_2"
    incomplete.mkdir(parents=True)
    (incomplete / "config.json").write_text("{}")
    (incomplete / "model.safetensors").write_bytes(b"\0" * 8)
    damaged = _complete_folder(root / "damaged")
    (damaged / "model.safetensors").write_bytes(b"\1" * 64)
    empty = root / "empty"
    empty.mkdir()
    return {
        "missing": ([str(root / "nope"), "tiny-org/x"], "folder not found"),
        "not a model": ([str(empty), "tiny-org/x"], "is not a saved model folder"),
        "incomplete": ([str(incomplete), "tiny-org/x"], "incomplete checkpoint"),
        "run folder": ([str(root / "ok"), "tiny-org/x"], "pass one of its saved folders"),
        "damaged": ([str(damaged), "tiny-org/x"], "damaged"),
        "repo id": ([str(complete), "no-owner"], "is not a repository id"),
    }


def test_upload_bad_input_is_one_line_before_any_request(
    hub_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunesmith.cli.main import main

    cases = _bad_inputs(tmp_path)
    for name, (args, text) in cases.items():
        before = len(FakeHub.requests)
        assert main(["upload", *args]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], (name, err)
        assert len(FakeHub.requests) == before, name


def test_upload_without_token_or_with_a_bad_one(hub_env: dict[str, str], tmp_path: Path) -> None:
    folder = _complete_folder(tmp_path / "run")
    env = {k: v for k, v in hub_env.items() if k != "HF_TOKEN"}
    before = len(FakeHub.requests)
    result = _cli(env, "upload", str(folder), "tiny-org/x")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: uploading to tiny-org/x needs a Hugging Face")
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(FakeHub.requests) == before
    result = _cli(env, "upload", str(folder), "tiny-org/x", "--hf-token", "hf_wrong")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:]
    assert "token was rejected (401" in lines[-1]


def test_upload_to_hub_option_is_checked_before_training(
    hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import OmegaConf

    from tunesmith.config import ConfigError
    from tunesmith.training.hub_upload import upload_option

    assert upload_option(OmegaConf.create({})) is None
    ok = upload_option(OmegaConf.create({"upload_to_hub": {"repo_id": "me/m", "private": True}}))
    assert ok == {"repo_id": "me/m", "private": True}
    for bad, key in (
        ({"repo_id": "nope"}, "upload_to_hub.repo_id"),
        ({"repo_id": "me/m", "token": "hf_x"}, "upload_to_hub.token"),
        ({"repo_id": "me/m", "privat": True}, "upload_to_hub.privat"),
    ):
        with pytest.raises(ConfigError) as info:
            upload_option(OmegaConf.create({"upload_to_hub": bad}))
        assert info.value.key == key
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ConfigError, match="needs a Hugging Face token"):
        upload_option(OmegaConf.create({"upload_to_hub": {"repo_id": "me/m"}}))


def test_card_names_base_model_and_eval_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base model comes from the download manifest of the run's checkpoint folder, the
    eval table from an eval run's results.json beside the checkpoint; --dry-run sends
    nothing and needs no token."""
    from tunesmith.cli.main import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    base = tmp_path / "base"
    base.mkdir()
    (base / ".tunesmith-manifest.json").write_text(
        json.dumps({"files": {}, "repo_id": "HuggingFaceTB/SmolLM2-135M", "revision": "abc"})
    )
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    run = tmp_path / "run"
    folder = _complete_folder(run)
    (run / "logs").mkdir()
    config = {
        "checkpointer": {"checkpoint_dir": str(base), "model_type": "LLAMA3"},
        "dataset": {
            "_component_": "tunesmith.datasets.alpaca_dataset",
            "source": "tatsu-lab/alpaca",
        },
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 2e-5},
        "loss": {"_component_": "tunesmith.rlhf.loss.DPOLoss"},
    }
    (run / "logs" / "config.json").write_text(json.dumps(config))
    results = {
        "results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.5, "acc_stderr,none": 0.1}}
    }
    (run / "results.json").write_text(json.dumps(results))
    before = len(FakeHub.requests)
    assert main(["upload", str(folder), "me/model", "--dry-run"]) == 0
    card = capsys.readouterr().out
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M"' in card
    assert 'license: "apache-2.0"' in card and 'datasets: ["tatsu-lab/alpaca"]' in card
    assert '"dpo"' in card and "This model is a DPO, full finetune of" in card
    assert "| learning rate | 2e-05 |" in card
    assert "| hellaswag | acc | 0.5000 |" in card and "stderr" not in card
    assert len(FakeHub.requests) == before


def test_upload_to_hub_failure_after_training_says_how_to_retry(
    run_finetune: Callable[..., Path], hub_env: dict[str, str]
) -> None:
    """The hub refuses the commit (a repo this account cannot write): the run's checkpoint
    is saved and the error names the command that publishes it later."""
    from tunesmith.training.hub_upload import UploadError

    with pytest.raises(UploadError) as info:
        run_finetune("refused", max_steps_per_epoch=1, upload_to_hub={"repo_id": REPO})
    message = str(info.value)
    assert "not found" in message and "refused/epoch_1" in message
    assert "publish it later with `tunesmith upload" in message and REPO in message


def test_upload_to_hub_from_a_dpo_run(
    tiny_llama: Path, tmp_path: Path, hub_env: dict[str, str]
) -> None:
    """The dpo recipe publishes too; the card names the method from its loss."""
    from omegaconf import OmegaConf

    from tests.recipes.test_dpo import dpo_config, write_preference_data
    from tunesmith.recipes.dpo import recipe_main

    data = write_preference_data(tmp_path / "pairs.json", n=16)
    cfg = dpo_config(
        tmp_path / "dpo",
        tiny_llama,
        data,
        max_steps_per_epoch=2,
        **{f"model.{k}": v for k, v in LORA.items()},
        upload_to_hub={"repo_id": "tiny-org/dpo-run"},
    )
    recipe_main(OmegaConf.create(cfg))
    files = FakeHub.uploaded["tiny-org/dpo-run"]
    assert (
        files["adapter/adapter_model.safetensors"]
        == (tmp_path / "dpo" / "epoch_1" / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    card = files["README.md"].decode()
    assert "This model is a DPO, LoRA finetune (rank 8, alpha 16) of" in card
    assert 'tags: ["tunesmith", "dpo", "peft", "lora"]' in card
    assert "| loss | DPOLoss |" in card
