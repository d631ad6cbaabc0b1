"""Publish a saved checkpoint folder to the Hugging Face Hub with a generated model card.

:func:`check_upload` runs every check that needs no network (the folder is a complete
tunesmith checkpoint or a Hugging Face model folder, its files match its ``.complete``
marker, the repo id is ``owner/name``, a token exists) and returns what would be sent;
:func:`upload_checkpoint` then creates the repository (``exist_ok``) and sends the files in
one commit with ``HfApi.upload_folder`` (huggingface_hub, imported lazily).

The saved folder is never changed: the upload is a temporary folder of links to its files
plus the generated ``README.md`` (and the run's loss plot as ``loss_curve.png``). A
``README.md`` already in the folder is uploaded as it is, instead of the card. Training
state (``recipe_state.pt``), the ``.complete`` marker and other dot files stay local.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config._errors import UserError

__all__ = [
    "UploadError",
    "UploadPlan",
    "check_upload",
    "upload_after_training",
    "upload_checkpoint",
    "upload_option",
]

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_LOCAL_ONLY = {"recipe_state.pt", ".tunesmith-manifest.json"}
PLOT_NAME = "loss_curve.png"


class UploadError(UserError):
    """A folder that cannot be published, a missing token, or the hub refusing the upload."""


@dataclass
class UploadPlan:
    """What :func:`upload_checkpoint` sends: ``files`` (repo path -> local file) and the card."""

    folder: Path
    repo_id: str
    token: str
    files: dict[str, Path] = field(default_factory=dict)
    card: str | None = None  # None: the folder's own README.md is uploaded
    notes: list[str] = field(default_factory=list)


def _token(token: str | None) -> str | None:
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def _folder_files(folder: Path) -> dict[str, Path]:
    """The files a folder publishes: its marker's list (a tunesmith checkpoint), else every
    file that is not hidden; never training state."""
    from tunesmith.training.checkpointing._atomic import (
        _CKPT_DIR_RE,
        TMP_PREFIX,
        read_complete_marker,
        verify_checkpoint,
    )

    marker = read_complete_marker(folder)
    if marker is None and folder.name.startswith((TMP_PREFIX, ".old-")):
        raise UploadError(
            f"{folder} is a checkpoint that was still being written (a staging folder): "
            "upload a finished epoch_N / step_N folder"
        )
    if marker is None and _CKPT_DIR_RE.match(folder.name) and (folder / "config.json").exists():
        raise UploadError(
            f"{folder} is an incomplete checkpoint (no .complete marker: the save did not "
            "finish): upload an earlier complete checkpoint, or resume the run to save it again"
        )
    if marker is None:
        finished = sorted(
            (c for c in folder.iterdir() if c.is_dir() and read_complete_marker(c) is not None),
            key=lambda c: c.stat().st_mtime,
        )
        if finished:
            raise UploadError(
                f"{folder} is a run's output folder, not a checkpoint: pass one of its saved "
                f"folders, e.g. {finished[-1]}"
            )
        if (
            not (folder / "config.json").is_file()
            and not (folder / "adapter_config.json").is_file()
        ):
            raise UploadError(
                f"{folder} is not a saved model folder (no .complete marker, no config.json or "
                "adapter_config.json): pass a checkpoint folder a tunesmith run saved "
                "(output_dir/epoch_N) or a Hugging Face model folder"
            )
        names = [
            p.relative_to(folder).as_posix()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
    else:
        problem = verify_checkpoint(folder)
        if problem is not None:
            raise UploadError(
                f"checkpoint file is damaged: {problem} ({folder}): copy it again or upload "
                "an earlier checkpoint"
            )
        names = sorted(marker.get("files") or {})
        if not names:  # an old marker without a file list
            names = [
                p.relative_to(folder).as_posix()
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith(".")
            ]
    return {n: folder / n for n in names if Path(n).name not in _LOCAL_ONLY}


def check_upload(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    recipe: str | None = None,
    need_token: bool = True,
) -> UploadPlan:
    """Every check that needs no network, and the files + card to send (see the module doc);
    ``need_token=False`` (a dry run) skips the token check."""
    from tunesmith.training.model_card import find_run, model_card

    path = Path(folder).expanduser()
    if not _REPO_ID.match(repo_id or ""):
        raise UploadError(
            f"'{repo_id}' is not a repository id: write owner/name, e.g. my-user/my-model"
        )
    if not path.exists():
        raise UploadError(f"folder not found: {path}: pass the checkpoint folder to upload")
    if not path.is_dir():
        raise UploadError(f"{path} is a file, not a folder: pass the checkpoint folder to upload")
    files = _folder_files(path)
    if not any(n.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")) for n in files):
        raise UploadError(
            f"{path} holds no model weights (.safetensors/.bin): pass a checkpoint folder"
        )
    resolved = _token(token) or ""
    if not resolved and need_token:
        raise UploadError(
            f"uploading to {repo_id} needs a Hugging Face token with write access: pass "
            "--hf-token <token> or set HF_TOKEN (tokens: https://huggingface.co/settings/tokens)"
        )
    plan = UploadPlan(folder=path, repo_id=repo_id, token=resolved, files=files)
    if "README.md" in files:
        plan.notes.append(f"{path / 'README.md'} exists: uploading it as is (no card generated)")
        return plan
    record = find_run(path, run_dir=run_dir, results=results, recipe=recipe)
    plot = PLOT_NAME if record.plot is not None and PLOT_NAME not in files else None
    if plot is not None:
        plan.files[plot] = record.plot  # type: ignore[assignment]
    plan.card = model_card(path, repo_id, record, plot_name=plot, base=base_model)
    if not record.config:
        plan.notes.append(
            f"no logged run config found beside {path} (looked in logs/ and ../logs/): the card "
            "has no training details; pass --run-dir <the run's log folder>"
        )
    return plan


def _hub_message(error: Exception, repo_id: str, endpoint: str) -> str | None:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return (
                "the Hugging Face token was rejected (401 invalid credentials); check --hf-token "
                "or HF_TOKEN (tokens: https://huggingface.co/settings/tokens)"
            )
        if status == 403:
            return (
                f"the token may not write to {repo_id} (403): use a token with write access "
                "to that owner's repositories"
            )
        if status == 404:
            return (
                f"{repo_id} or its revision was not found on {endpoint} (404): check the owner, "
                "and that --revision names an existing branch"
            )
        return f"the hub answered {status} while uploading {repo_id} ({endpoint}): retry later"
    import httpx2

    if isinstance(error, httpx2.TransportError | ConnectionError):
        return f"cannot reach the hub at {endpoint} to upload {repo_id}; check your network"
    return None


def upload_checkpoint(
    plan: UploadPlan,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``plan.repo_id`` (kept when it exists) and commit the files; returns the
    commit's URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=plan.token)
    bars_were_off = are_progress_bars_disabled()
    if not sys.stderr.isatty():  # progress bars only on a terminal
        disable_progress_bars()
    message = commit_message or f"Upload {plan.folder.name} with tunesmith"
    with tempfile.TemporaryDirectory(prefix="tunesmith-upload-") as tmp:
        stage = Path(tmp)
        for name, src in plan.files.items():
            dst = stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(src.resolve(), dst)
            except OSError:  # no symlinks on this file system: copy
                shutil.copyfile(src, dst)
        if plan.card is not None:
            (stage / "README.md").write_text(plan.card, encoding="utf-8")
        try:
            api.create_repo(plan.repo_id, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(plan.repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=plan.repo_id,
                folder_path=stage,
                revision=revision,
                commit_message=message,
            )
        except Exception as e:
            text = _hub_message(e, plan.repo_id, endpoint)
            if text is None:
                raise
            raise UploadError(text) from e
        finally:
            if not bars_were_off:
                enable_progress_bars()
    return str(getattr(info, "commit_url", info))


# ------------------------------------------------------------------- the recipe option
_OPTION_KEYS = {"repo_id", "private", "revision", "commit_message", "base_model"}


def upload_option(cfg: Any) -> dict[str, Any] | None:
    """The checked ``upload_to_hub`` mapping of a training config (None when absent), so a
    run that cannot publish stops before it trains: ``repo_id`` (owner/name, required),
    ``private``, ``revision``, ``commit_message``, ``base_model``; the token comes from
    ``HF_TOKEN`` or ``huggingface-cli login``, never from the config (which is logged)."""
    from omegaconf import DictConfig, OmegaConf

    from tunesmith.config import ConfigError

    node = cfg.get("upload_to_hub")
    if node is None or node is False:
        return None
    if isinstance(node, str):
        node = {"repo_id": node}
    elif isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise ConfigError(
            f"upload_to_hub must be a mapping {{repo_id: owner/name, private: ...}}, got "
            f"{node!r}: write upload_to_hub.repo_id=owner/name",
            key="upload_to_hub",
        )
    if "token" in node or "hf_token" in node:
        raise ConfigError(
            "upload_to_hub must not hold a token (configs are logged to config.json): remove "
            "it and set HF_TOKEN or run `huggingface-cli login`",
            key="upload_to_hub.token",
        )
    unknown = sorted(set(node) - _OPTION_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key upload_to_hub.{unknown[0]}: the keys are {', '.join(sorted(_OPTION_KEYS))}",
            key=f"upload_to_hub.{unknown[0]}",
        )
    repo_id = node.get("repo_id")
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ConfigError(
            f"upload_to_hub.repo_id must be a repository id owner/name, got {repo_id!r}",
            key="upload_to_hub.repo_id",
        )
    if not _token(None):
        raise ConfigError(
            f"upload_to_hub: publishing to {repo_id} after training needs a Hugging Face "
            "token with write access: set HF_TOKEN or run `huggingface-cli login` (tokens: "
            "https://huggingface.co/settings/tokens)",
            key="upload_to_hub",
        )
    return node


def upload_after_training(
    cfg: Any, folder: str | os.PathLike[str], recipe: str, option: dict[str, Any]
) -> str:
    """Publish the run's final ``folder`` as ``option`` says (after the last save and the
    loss plot); returns the commit URL."""
    logger = cfg.get("metric_logger")
    run_dir = logger.get("log_dir") if hasattr(logger, "get") else None
    plan = check_upload(
        folder,
        option["repo_id"],
        run_dir=run_dir if run_dir and Path(str(run_dir)).is_dir() else None,
        base_model=option.get("base_model"),
        recipe=recipe,
    )
    for note in plan.notes:
        log.info("upload_to_hub: %s", note)
    try:
        url = upload_checkpoint(
            plan,
            private=bool(option.get("private", False)),
            revision=option.get("revision"),
            commit_message=option.get("commit_message"),
        )
    except UploadError as e:  # the checkpoint is saved: say how to publish it later
        raise UploadError(
            f"{e} (upload_to_hub; the checkpoint is saved: publish it later with `tunesmith "
            f"upload {plan.folder} {plan.repo_id}`)"
        ) from e
    log.info("uploaded %s to %s: %s", plan.folder, plan.repo_id, url)
    return url
