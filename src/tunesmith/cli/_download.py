"""``tunesmith download``: fetch a model repository from the Hugging Face Hub, verified."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tunesmith.cli._download_verify import (
    MANIFEST_NAME,
    file_problem,
    hub_files,
    remove_download,
    write_manifest,
)
from tunesmith.config._errors import UserError

__all__ = ["DownloadError", "cmd_download", "download_error_message", "transfer_error_message"]


def download_error_message(
    error: Exception, repo_id: str, endpoint: str, has_token: bool
) -> str | None:
    """A one-line message for the hub errors users hit, or None for anything else."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"{endpoint.rstrip('/')}/{repo_id}"
    if isinstance(error, OfflineModeIsEnabled):
        return (
            f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset "
            "HF_HUB_OFFLINE to reach the hub"
        )
    if isinstance(error, GatedRepoError):
        if has_token:
            return (
                f"{repo_id} is a gated repository and this token has no access to it; request access "
                f"at {url} with the account the token belongs to, then retry"
            )
        return (
            f"{repo_id} is a gated repository: request access at {url}, then pass --hf-token <token> "
            "or set HF_TOKEN (tokens: https://huggingface.co/settings/tokens)"
        )
    if isinstance(error, RepositoryNotFoundError):
        private = "" if has_token else "; a private repository needs --hf-token <token> or HF_TOKEN"
        return f"repository {repo_id} not found on {endpoint}: check the id (owner/name){private}"
    if isinstance(error, RevisionNotFoundError):
        return f"{repo_id} has no such revision; check --revision (a branch, tag or commit)"
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return (
                "the Hugging Face token was rejected (401 invalid credentials); check --hf-token or "
                "HF_TOKEN (tokens: https://huggingface.co/settings/tokens)"
            )
        if status == 403:
            return f"access to {repo_id} was refused (403); check that your token has read access"
        return (
            f"the hub answered {status} for {repo_id} ({endpoint}): retry later; a rerun "
            "continues from what already arrived"
        )
    if isinstance(error, LocalEntryNotFoundError):
        return f"cannot reach the hub at {endpoint} to download {repo_id}; check your network connection"
    return None


class DownloadError(UserError):
    """A download whose files do not match the hub, or that broke off; rerunning fixes it."""


def transfer_error_message(error: Exception, repo_id: str, endpoint: str) -> str | None:
    """One line for a download that broke off (connection lost, a file cut short)."""
    import httpx2

    text = str(error)
    cut = re.search(r"file should be of size (\d+) but has size (\d+) \((.*?)\)", text)
    if isinstance(error, OSError) and cut:
        want, got, name = cut.groups()
        return (
            f"the download of {name} ended early: expected {want} bytes, got {got} ({repo_id} on "
            f"{endpoint}): rerun the download; it continues from what already arrived"
        )
    if isinstance(error, httpx2.TransportError):
        return (
            f"the connection to the hub broke during the download ({type(error).__name__}: "
            f"{' '.join(text.split()) or 'no details'}) ({repo_id} on {endpoint}): rerun the "
            "download; it continues from what already arrived"
        )
    return None


def _fetch(args: argparse.Namespace, output_dir: Path, token: str | None, endpoint: str) -> Path:
    """Download, verify every file against the hub's sizes and hashes (refetching a bad one
    once), write the manifest; returns the folder."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=endpoint, token=token)
    revision = api.model_info(args.repo_id, revision=args.revision).sha or args.revision
    expected = hub_files(api, args.repo_id, revision, args.allow_patterns, args.ignore_patterns)

    def snapshot(allow: Sequence[str] | None, ignore: Sequence[str] | None) -> Path:
        return Path(
            snapshot_download(
                args.repo_id,
                revision=revision,
                local_dir=output_dir,
                allow_patterns=allow,
                ignore_patterns=ignore,
                token=token,
                endpoint=endpoint,
            )
        )

    path = snapshot(args.allow_patterns, args.ignore_patterns)
    checked = {f.path: file_problem(path, f) for f in expected}
    bad = [f for f in expected if checked[f.path][0]]
    if bad:  # a damaged earlier copy or a broken transfer: fetch those files once more
        for f in bad:
            remove_download(path, f.path)
        snapshot([f.path for f in bad], None)
        checked.update({f.path: file_problem(path, f) for f in bad})
        still = [f for f in bad if checked[f.path][0]]
        if still:
            f = still[0]
            for g in still:
                remove_download(path, g.path)  # never left under its final name
            raise DownloadError(
                f"downloaded file does not match what the hub reports, {checked[f.path][0]} "
                f"({path / f.path}, {args.repo_id}@{revision[:12]}): rerun the download; if "
                "it fails again the hub's copy is inconsistent, so report it to the repository"
            )
    write_manifest(path, args.repo_id, revision, ((f, checked[f.path][1]) for f in expected))
    return path


def cmd_download(args: argparse.Namespace) -> int:
    """Download ``args.repo_id`` into ``--output-dir``, verify it and list what arrived.

    Every file's size and hash are checked against what the hub reports (see
    :mod:`tunesmith.cli._download_verify`); a rerun continues partial files and skips
    complete ones; ``.tunesmith-manifest.json`` records the verified files.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from huggingface_hub.utils import logging as hf_logging

    from tunesmith.cli.main import debug_enabled

    if "/" not in args.repo_id:
        print(
            f"error: '{args.repo_id}' is not a repository id; write owner/name, "
            "e.g. meta-llama/Llama-3.2-1B-Instruct",
            file=sys.stderr,
        )
        return 2
    token = args.hf_token or os.environ.get("HF_TOKEN") or None
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    output_dir = Path(args.output_dir or Path("/tmp") / args.repo_id.split("/")[-1]).expanduser()
    if not debug_enabled():  # a resumed transfer is no news; a failed one gets our line
        hf_logging.set_verbosity_error()
    bars_were_off = are_progress_bars_disabled()
    if not sys.stderr.isatty():  # progress bars only on a terminal
        disable_progress_bars()
    try:
        path = _fetch(args, output_dir, token, endpoint)
    except DownloadError:
        raise
    except Exception as e:
        message = download_error_message(e, args.repo_id, endpoint, token is not None)
        message = message or transfer_error_message(e, args.repo_id, endpoint)
        if message is None:
            raise
        raise DownloadError(message) from e
    finally:
        if not bars_were_off:
            enable_progress_bars()
    files = sorted(
        p.relative_to(path).as_posix()
        for p in Path(path).rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(path).parts and p.name != MANIFEST_NAME
    )
    print(f"Downloaded {args.repo_id} to {path} ({len(files)} files, sizes and hashes verified)")
    for name in files:
        print(f"  {name}")
    return 0
