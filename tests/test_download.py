"""`tunesmith download` against a small fake Hugging Face Hub served on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._fake_hub import (
    CHUNK,
    COMMIT,
    FILES,
    GATED,
    LFS,
    ORG,
    REPO,
    TOKEN,
    FakeHub,
    files_of,
    git_sha1,
    reset,
    serve,
    sha256,
)

MANIFEST = ".tunesmith-manifest.json"


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_faults() -> None:
    reset()


def _download(
    hub: str, tmp_path: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
    )
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "download", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_download_fetches_all_files(hub: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = _download(hub, tmp_path, REPO, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    for name, body in FILES.items():
        assert (out / name).read_bytes() == body
    assert f"Downloaded {REPO} to {out}" in result.stdout
    assert "  original/consolidated.00.pth" in result.stdout


def test_download_ignore_and_allow_patterns(hub: str, tmp_path: Path) -> None:
    out = tmp_path / "ignored"
    result = _download(
        hub, tmp_path, REPO, "--output-dir", str(out), "--ignore-patterns", "original/*", "*.json"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts) == [
        MANIFEST,
        "model.safetensors",
    ]
    out = tmp_path / "allowed"
    result = _download(hub, tmp_path, REPO, "--output-dir", str(out), "--allow-patterns", "*.json")
    assert result.returncode == 0, result.stderr
    got = sorted(p.name for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == [MANIFEST, "config.json", "tokenizer.json"]
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == got[1:]


def test_download_missing_repo_is_one_line(hub: str, tmp_path: Path) -> None:
    result = _download(hub, tmp_path, "tiny-org/nope", "--output-dir", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: repository tiny-org/nope not found on {hub}: check the id (owner/name); "
        "a private repository needs --hf-token <token> or HF_TOKEN"
    ]


def test_download_gated_repo_without_token(hub: str, tmp_path: Path) -> None:
    result = _download(hub, tmp_path, GATED, "--output-dir", str(tmp_path / "g"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: {GATED} is a gated repository: request access at {hub}/{GATED}"
    )
    assert "--hf-token" in lines[0] and "HF_TOKEN" in lines[0]


def test_download_gated_repo_with_token(hub: str, tmp_path: Path) -> None:
    result = _download(
        hub, tmp_path, GATED, "--output-dir", str(tmp_path / "g"), "--hf-token", TOKEN
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "this token has no access" in lines[0]


def test_download_invalid_token(hub: str, tmp_path: Path) -> None:
    result = _download(hub, tmp_path, REPO, "--output-dir", str(tmp_path / "t"), token="hf_wrong")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "token was rejected" in lines[0] and "HF_TOKEN" in lines[0]


def test_download_with_valid_token_sends_it(hub: str, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    result = _download(
        hub,
        tmp_path,
        REPO,
        "--output-dir",
        str(out),
        "--hf-token",
        TOKEN,
        "--allow-patterns",
        "config.json",
    )
    assert result.returncode == 0, result.stderr
    assert (out / "config.json").read_bytes() == FILES["config.json"]


def test_download_rejects_bad_repo_id_and_source(hub: str, tmp_path: Path) -> None:
    result = _download(hub, tmp_path, "justaname")
    assert result.returncode == 2 and "write owner/name" in result.stderr
    result = _download(hub, tmp_path, REPO, "--source", "kaggle")
    assert result.returncode == 2 and "invalid choice: 'kaggle'" in result.stderr


def _files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(out).parts and p.name != MANIFEST
    }


def test_download_writes_a_manifest_of_verified_files(hub: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = _download(hub, tmp_path, REPO, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["repo_id"], manifest["revision"]) == (REPO, COMMIT)
    assert manifest["files"] == {
        name: {
            "size": len(body),
            "sha256": sha256(body),
            "git_sha1": None if name in LFS else git_sha1(body),
        }
        for name, body in FILES.items()
    }


@pytest.mark.parametrize(
    "repo, name, what",
    [
        ("bad-size", "model.safetensors", f"size: expected {len(FILES['model.safetensors']) + 3} bytes, got {len(FILES['model.safetensors'])}"),
        ("bad-hash", "model.safetensors", f"sha256: expected {sha256(FILES['model.safetensors'])}, got "),
        ("bad-etag", "tokenizer.json", f"ETag: the hub sent {'f' * 40}, the file hashes to {git_sha1(FILES['tokenizer.json'])}"),
    ],
)  # fmt: skip
def test_download_mismatch_is_one_line_and_the_file_is_not_kept(
    hub: str, tmp_path: Path, repo: str, name: str, what: str
) -> None:
    out = tmp_path / repo
    result = _download(hub, tmp_path, f"{ORG}/{repo}", "--output-dir", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: downloaded file does not match what the hub reports")
    assert what in lines[0] and str(out / name) in lines[0] and "rerun the download" in lines[0]
    assert not (out / name).exists()  # never left under its final name
    assert not (out / MANIFEST).exists()
    # the correct files stay, so a rerun fetches only what is missing
    assert (out / "config.json").read_bytes() == FILES["config.json"]


def test_connection_dropped_mid_file_is_resumed(hub: str, tmp_path: Path) -> None:
    """The hub drops the connection half-way through a file: huggingface_hub resumes with
    a Range request and the result is verified."""
    out = tmp_path / "flaky"
    result = _download(hub, tmp_path, f"{ORG}/flaky", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr
    assert _files(out) == files_of(f"{ORG}/flaky")
    assert FakeHub.ranges == [f"{ORG}/flaky model.safetensors bytes={CHUNK}-"]


def test_rerun_continues_a_broken_download(hub: str, tmp_path: Path) -> None:
    """A download that breaks off is one line; the rerun continues the partial file (Range
    from where it stopped) and does not fetch complete files again."""
    out = tmp_path / "cut"
    result = _download(hub, tmp_path, f"{ORG}/cut", "--output-dir", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "503" in lines[0], lines
    assert not (out / "model.safetensors").exists() and not (out / MANIFEST).exists()
    FakeHub.refuse_resume = False
    FakeHub.requests.clear()
    result = _download(hub, tmp_path, f"{ORG}/cut", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert _files(out) == files_of(f"{ORG}/cut")
    assert FakeHub.ranges[-1] == f"{ORG}/cut model.safetensors bytes={CHUNK}-"
    fetched = [r for r in FakeHub.requests if r.startswith("GET ") and "/resolve/" in r]
    assert [r.rsplit("/", 1)[-1] for r in fetched] == ["model.safetensors"]
    assert json.loads((out / MANIFEST).read_text())["revision"] == COMMIT


def test_damaged_local_copy_is_refetched(hub: str, tmp_path: Path) -> None:
    """A rerun over a folder whose file was damaged after the download (same size, other
    bytes) notices the hash, refetches that file and rewrites the manifest."""
    out = tmp_path / "model"
    assert _download(hub, tmp_path, REPO, "--output-dir", str(out)).returncode == 0
    weights = out / "model.safetensors"
    weights.write_bytes(b"\0" * len(FILES["model.safetensors"]))
    FakeHub.requests.clear()
    result = _download(hub, tmp_path, REPO, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert _files(out) == FILES
    fetched = [r for r in FakeHub.requests if r.startswith("GET ") and "/resolve/" in r]
    assert [r.rsplit("/", 1)[-1] for r in fetched] == ["model.safetensors"]
