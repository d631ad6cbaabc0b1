"""``tunesmith download``: fetch a model repository from the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["cmd_download", "download_error_message"]


def download_error_message(
    error: Exception, repo_id: str, endpoint: str, has_token: bool
) -> str | None:
    """A one-line message for the hub errors users hit, or None for anything else."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"{endpoint.rstrip('/')}/{repo_id}"
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
        return f"the hub at {endpoint} answered {status} for {repo_id}; retry later"
    if isinstance(error, LocalEntryNotFoundError):
        return f"cannot reach the hub at {endpoint} to download {repo_id}; check your network connection"
    return None


def cmd_download(args: argparse.Namespace) -> int:
    """Download ``args.repo_id`` into ``--output-dir`` and list what arrived."""
    from huggingface_hub import constants, snapshot_download

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
    try:
        path = snapshot_download(
            args.repo_id,
            revision=args.revision,
            local_dir=output_dir,
            allow_patterns=args.allow_patterns,
            ignore_patterns=args.ignore_patterns,
            token=token,
            endpoint=endpoint,
        )
    except Exception as e:
        message = download_error_message(e, args.repo_id, endpoint, token is not None)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    files = sorted(
        p.relative_to(path).as_posix()
        for p in Path(path).rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(path).parts
    )
    print(f"Downloaded {args.repo_id} to {path} ({len(files)} files)")
    for name in files:
        print(f"  {name}")
    return 0
