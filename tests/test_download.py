"""`tunesmith download` against a small fake Hugging Face Hub served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-model"
GATED = "tiny-org/gated-model"
TOKEN = "hf_good_token"
FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 8}',
    "model.safetensors": b"\x00" * 64 + b"weights",
    "tokenizer.json": b'{"version": "1.0"}',
    "original/consolidated.00.pth": b"meta weights",
}


class FakeHub(BaseHTTPRequestHandler):
    """The few endpoints `snapshot_download` uses: repo info, tree listing, file resolve."""

    requests: list[str] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _repo_access(self, repo: str) -> bool:
        """Answer the error responses the real hub gives; True when the repo may be read."""
        auth = self.headers.get("Authorization", "")
        if auth and auth != f"Bearer {TOKEN}":
            self._send(
                401, b"{}", {"X-Error-Message": "Invalid credentials in Authorization header"}
            )
            return False
        if repo == GATED:
            self._send(
                403,
                b'{"error": "gated"}',
                {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"},
            )
            return False
        if repo != REPO:
            self._send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})
            return False
        return True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        FakeHub.requests.append(f"{self.command} {self.path}")
        path = unquote(urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo = "/".join(parts[2:4])
            if not self._repo_access(repo):
                return
            if parts[4] == "revision":
                siblings = [{"rfilename": name} for name in FILES]
                self._json({"id": repo, "sha": COMMIT, "siblings": siblings, "private": False})
                return
            if parts[4] == "tree":
                entries = [
                    {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for n, b in FILES.items()
                ]
                self._json(entries)
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            if not self._repo_access(repo):
                return
            name = "/".join(parts[4:])
            if name not in FILES:
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            body = FILES[name]
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            self._send(200, body, headers)
            return
        self._send(404, b"", {"X-Error-Code": "RepoNotFound"})


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
        "model.safetensors"
    ]
    out = tmp_path / "allowed"
    result = _download(hub, tmp_path, REPO, "--output-dir", str(out), "--allow-patterns", "*.json")
    assert result.returncode == 0, result.stderr
    got = sorted(p.name for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == ["config.json", "tokenizer.json"]


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
