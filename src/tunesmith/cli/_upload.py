"""``tunesmith upload``: publish a saved checkpoint folder to the Hub with a model card."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_upload_parser", "cmd_upload"]


def add_upload_parser(sub: argparse._SubParsersAction) -> None:
    """The ``upload`` subcommand's arguments."""
    upload = sub.add_parser(
        "upload",
        help="upload a saved checkpoint folder to the Hugging Face Hub, with a model card",
        description=(
            "Upload a checkpoint folder a tunesmith run saved (output_dir/epoch_N) or a Hugging "
            "Face model folder to the Hub in one commit, with a generated README.md model card "
            "(base model, method, data, hyperparameters, loss curve, eval scores) unless the "
            "folder has its own README.md. The folder itself is not changed."
        ),
    )
    upload.add_argument("folder", help="the saved folder, e.g. /tmp/run/epoch_3")
    upload.add_argument("repo_id", help="target repository, owner/name")
    upload.add_argument("--private", action="store_true", help="create the repository private")
    upload.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    upload.add_argument(
        "--hf-token", help="Hugging Face token with write access (default: $HF_TOKEN / login)"
    )
    upload.add_argument("--commit-message", default=None, help="the commit's title")
    upload.add_argument(
        "--run-dir", default=None, help="the run's log folder (default: logs/ beside the folder)"
    )
    upload.add_argument(
        "--eval-results", default=None, help="an eval recipe's results.json for the card"
    )
    upload.add_argument("--base-model", default=None, help="the base model's Hub id for the card")
    upload.add_argument(
        "--dry-run", action="store_true", help="check and print the card; send nothing"
    )
    upload.set_defaults(func=cmd_upload)


def cmd_upload(args: argparse.Namespace) -> int:
    """Check the folder (no network), then create the repo and commit files + card."""
    from tunesmith.training.hub_upload import check_upload, upload_checkpoint

    plan = check_upload(
        args.folder,
        args.repo_id,
        token=args.hf_token,
        run_dir=args.run_dir,
        results=args.eval_results,
        base_model=args.base_model,
        need_token=not args.dry_run,
    )
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    names = sorted([*plan.files, *(["README.md"] if plan.card is not None else [])])
    if args.dry_run:
        print(plan.card if plan.card is not None else "(the folder's own README.md)")
        print(f"would upload {len(names)} files to {args.repo_id}: {', '.join(names)}")
        return 0
    url = upload_checkpoint(
        plan,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"Uploaded {plan.folder} to {args.repo_id} ({len(names)} files): {url}")
    for name in names:
        print(f"  {name}")
    return 0
