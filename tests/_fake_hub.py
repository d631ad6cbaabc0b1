"""A small fake Hugging Face Hub on 127.0.0.1 for `tunesmith download` tests.

It answers what ``snapshot_download`` / ``HfApi`` ask, as the real hub does: repo info,
the recursive file listing (``oid`` = git blob sha1, ``lfs.oid`` = sha256 for LFS files)
and file downloads (``ETag`` = git blob sha1 of regular files; ``X-Linked-Etag`` /
``X-Linked-Size`` = sha256 / size of LFS files; ``Range`` requests answered with 206).

Repositories (all under ``tiny-org/``) with faults:

* ``tiny-model``: a correct repo; ``gated-model``: 403 gated.
* ``bad-size``: the file listing reports ``model.safetensors`` 3 bytes longer than it is
  (the download headers give its true size).
* ``bad-hash``: the served ``model.safetensors`` has one byte changed (size and headers
  as listed), so its sha256 does not match.
* ``bad-etag``: ``tokenizer.json`` is served with an ETag that is not its git hash.
* ``flaky``: the first GET of its (10.5 MiB) ``model.safetensors`` sends one 10 MiB chunk
  and a little more, then drops the connection; later requests (with ``Range``) complete it.
* ``cut``: like ``flaky`` but every later request answers 503 while
  ``FakeHub.refuse_resume`` is true (a download that breaks off, to be resumed by a rerun).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ORG = "tiny-org"
REPO = f"{ORG}/tiny-model"
GATED = f"{ORG}/gated-model"
TOKEN = "hf_good_token"
FAULTY = {"bad-size", "bad-hash", "bad-etag", "flaky", "cut"}
FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 8}',
    "model.safetensors": bytes(range(256)) * 8 + b"weights",
    "tokenizer.json": b'{"version": "1.0"}',
    "original/consolidated.00.pth": b"meta weights",
}
LFS = {"model.safetensors", "original/consolidated.00.pth"}
# huggingface_hub writes a download in 10 MiB chunks, so only a drop after the first chunk
# leaves bytes on disk to resume from: the interrupted repos serve a larger file
CHUNK = 10 * 1024 * 1024
BIG = bytes(range(256)) * (CHUNK // 256 + 2048) + b"tail"
INTERRUPTED = ("flaky", "cut")


def files_of(repo: str) -> dict[str, bytes]:
    """The files of ``repo`` (``tiny-org/<name>``) as the listing describes them."""
    if repo.split("/")[-1] in INTERRUPTED:
        return {**FILES, "model.safetensors": BIG}
    return FILES


def git_sha1(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _listed_size(repo: str, name: str) -> int:
    return len(files_of(repo)[name]) + (
        3 if repo.endswith("bad-size") and name == "model.safetensors" else 0
    )


def _served(repo: str, name: str) -> bytes:
    body = files_of(repo)[name]
    if repo.endswith("bad-hash") and name == "model.safetensors":
        body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
    return body


class FakeHub(BaseHTTPRequestHandler):
    """The endpoints `snapshot_download` and `HfApi.list_repo_tree` use."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []
    ranges: list[str] = []
    refuse_resume = True
    _first_get: set[str] = set()
    _lock = threading.Lock()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
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
        if repo != REPO and not (repo.startswith(ORG + "/") and repo.split("/")[1] in FAULTY):
            self._send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})
            return False
        return True

    def _tree_entry(self, repo: str, name: str) -> dict[str, object]:
        body = files_of(repo)[name]
        entry: dict[str, object] = {"type": "file", "path": name, "size": _listed_size(repo, name)}
        if name in LFS:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(body)}\n"
            entry["oid"] = git_sha1(pointer.encode())
            entry["lfs"] = {
                "oid": sha256(body),
                "size": _listed_size(repo, name),
                "pointerSize": 134,
            }
        else:
            entry["oid"] = git_sha1(body)
        return entry

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        FakeHub.requests.append(f"{self.command} {self.path}")
        path = unquote(urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if (
            parts[:2] == ["api", "models"]
            and len(parts) in (4, 5)
            or parts[:2] == ["api", "models"]
            and len(parts) >= 6
        ):
            repo = "/".join(parts[2:4])
            if not self._repo_access(repo):
                return
            if len(parts) < 6 or parts[4] == "revision":
                siblings = [{"rfilename": name} for name in FILES]
                self._json({"id": repo, "sha": COMMIT, "siblings": siblings, "private": False})
                return
            if parts[4] == "tree":
                self._json([self._tree_entry(repo, n) for n in FILES])
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            if not self._repo_access(repo):
                return
            name = "/".join(parts[4:])
            if name not in FILES:
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            self._resolve(repo, name)
            return
        self._send(404, b"", {"X-Error-Code": "RepoNotFound"})

    def _resolve(self, repo: str, name: str) -> None:
        body = _served(repo, name)
        headers = {"X-Repo-Commit": COMMIT, "Content-Type": "application/octet-stream"}
        true = files_of(repo)[name]
        if name in LFS:
            headers["ETag"] = f'"{sha256(true)}"'
            headers["X-Linked-Etag"] = f'"{sha256(true)}"'
            headers["X-Linked-Size"] = str(len(true))
        else:
            etag = git_sha1(true)
            if repo.endswith("bad-etag") and name == "tokenizer.json":
                etag = "f" * 40
            headers["ETag"] = f'"{etag}"'
        if self.command == "HEAD":
            self._send(200, body, headers)
            return
        requested = self.headers.get("Range")
        interrupted = repo.endswith(INTERRUPTED) and name == "model.safetensors"
        if requested:
            FakeHub.ranges.append(f"{repo} {name} {requested}")
            if repo.endswith("cut") and name == "model.safetensors" and FakeHub.refuse_resume:
                self._send(503, b"busy")
                return
            start = int(re.match(r"bytes=(\d+)-", requested).group(1))
            part = body[start:]
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self._send(206, part, headers)
            return
        with FakeHub._lock:
            first = (repo, name) not in FakeHub._first_get
            FakeHub._first_get.add((repo, name))  # type: ignore[arg-type]
        if interrupted and first:
            # promise the whole body, send a chunk and a bit, drop the connection
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: CHUNK + 4096])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, body, headers)


@contextmanager
def serve() -> Iterator[str]:
    """Run the fake hub on a free port; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def reset() -> None:
    """Forget which files were fetched (the `flaky` / `cut` faults trigger again)."""
    FakeHub._first_get.clear()
    FakeHub.ranges.clear()
    FakeHub.refuse_resume = True
