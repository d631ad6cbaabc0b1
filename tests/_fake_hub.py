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

Uploads (what ``HfApi.create_repo`` + ``upload_folder`` send with ``HF_HUB_DISABLE_XET=1``;
every write needs ``Bearer TOKEN``): ``POST /api/repos/create`` (409 with the repo's url when
it exists), ``POST /api/validate-yaml`` (the README's front matter must parse as a YAML
mapping), ``POST /api/models/<repo>/preupload/<rev>`` (weights, ``.pt``, ``.png`` and files
over 1 MiB are LFS, the rest regular), ``POST /<repo>.git/info/lfs/objects/batch`` (a basic
transfer: one ``PUT /lfs-upload/<sha256>`` per object; a body whose sha256 differs is refused),
and ``POST /api/models/<repo>/commit/<rev>`` (ndjson: ``header``, ``file`` with base64
content, ``lfsFile`` naming an uploaded object, ``deletedFile``), ``POST /api/models/<repo>/branch/<name>``. A committed repo is then
served for download like the fixed ones (``FakeHub.uploaded[repo]`` holds its files,
``FakeHub.created[repo]`` its visibility; a private one needs the token to be read).
"""

from __future__ import annotations

import base64
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


LFS_BATCH = "info/lfs/objects/batch"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".png", ".pte")


def files_of(repo: str) -> dict[str, bytes]:
    """The files of ``repo`` (``tiny-org/<name>``, or an uploaded one) as the listing
    describes them."""
    if repo in FakeHub.uploaded:
        return FakeHub.uploaded[repo]
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


def _is_lfs(repo: str, name: str) -> bool:
    if repo in FakeHub.uploaded:
        return name in FakeHub.uploaded_lfs.get(repo, set())
    return name in LFS


def _commit_of(repo: str) -> str:
    return FakeHub.commit.get(repo, COMMIT)


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
    uploaded: dict[str, dict[str, bytes]] = {}  # repo -> committed files
    uploaded_lfs: dict[str, set[str]] = {}  # repo -> its files committed as LFS objects
    created: dict[str, dict[str, object]] = {}  # repo -> {"private": bool}
    commit: dict[str, str] = {}  # repo -> head commit oid
    branches: set[tuple[str, str]] = set()  # (repo, branch) made by create_branch
    commits: list[dict[str, object]] = []  # {"repo", "revision", "summary", "paths"}
    lfs_objects: dict[str, bytes] = {}  # sha256 -> body PUT by an LFS upload
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
        if repo in FakeHub.created:
            if FakeHub.created[repo].get("private") and not auth:
                self._send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})
                return False
            return True
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
        if _is_lfs(repo, name):
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
            names = list(files_of(repo))
            if len(parts) < 6 or parts[4] == "revision":
                siblings = [{"rfilename": name} for name in names]
                private = bool(FakeHub.created.get(repo, {}).get("private", False))
                info = {"id": repo, "sha": _commit_of(repo), "siblings": siblings}
                self._json({**info, "private": private})
                return
            if parts[4] == "tree":
                self._json([self._tree_entry(repo, n) for n in names])
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            if not self._repo_access(repo):
                return
            name = "/".join(parts[4:])
            if name not in files_of(repo):
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            self._resolve(repo, name)
            return
        self._send(404, b"", {"X-Error-Code": "RepoNotFound"})

    # ---------------------------------------------------------------------------- uploads
    def _body(self) -> bytes:
        """The request body (``Content-Length`` or chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _may_write(self) -> bool:
        """Writes need the good token (401 without one or with a bad one, as the hub)."""
        if self.headers.get("Authorization", "") == f"Bearer {TOKEN}":
            return True
        self._send(401, b"{}", {"X-Error-Message": "Invalid credentials in Authorization header"})
        return False

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def do_PUT(self) -> None:
        FakeHub.requests.append(f"PUT {self.path}")
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        body = self._body()
        if len(parts) != 2 or parts[0] != "lfs-upload":
            self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
            return
        if sha256(body) != parts[1]:
            self._send(400, b'{"error": "sha256 of the body does not match the object id"}')
            return
        FakeHub.lfs_objects[parts[1]] = body
        self._send(200)

    def do_POST(self) -> None:
        FakeHub.requests.append(f"POST {self.path}")
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        body = self._body()
        if not self._may_write():
            return
        if parts == ["api", "repos", "create"]:
            self._create(json.loads(body))
        elif parts == ["api", "validate-yaml"]:
            self._validate_yaml(json.loads(body))
        elif len(parts) == 6 and parts[1].endswith(".git") and "/".join(parts[2:]) == LFS_BATCH:
            self._lfs_batch(f"{parts[0]}/{parts[1].removesuffix('.git')}", json.loads(body))
        elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            self._preupload("/".join(parts[2:4]), json.loads(body))
        elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "branch":
            if self._known("/".join(parts[2:4])):
                FakeHub.branches.add(("/".join(parts[2:4]), "/".join(parts[5:])))
                self._json({})
        elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            self._commit("/".join(parts[2:4]), "/".join(parts[5:]), body)
        else:
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"})

    def _known(self, repo: str) -> bool:
        if repo in FakeHub.created:
            return True
        self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        return False

    def _create(self, payload: dict[str, object]) -> None:
        repo = f"{payload.get('organization')}/{payload['name']}"
        url = f"{self._base_url()}/{repo}"
        if repo in FakeHub.created or repo == REPO:
            body = json.dumps({"error": "You already created this model repo", "url": url})
            self._send(409, body.encode(), {"Content-Type": "application/json"})
            return
        FakeHub.created[repo] = {"private": payload.get("visibility") == "private"}
        FakeHub.uploaded[repo] = {}
        self._json({"url": url, "name": repo})

    def _validate_yaml(self, payload: dict[str, object]) -> None:
        import yaml

        text = str(payload.get("content", ""))
        errors = []
        match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if match is None:
            errors.append({"message": "no YAML front matter"})
        else:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                meta, errors = None, [{"message": f"YAML: {e}"}]
            if not errors and not isinstance(meta, dict):
                errors.append({"message": "the front matter is not a mapping"})
        status = 400 if errors else 200
        self._send(status, json.dumps({"errors": errors, "warnings": []}).encode())

    def _preupload(self, repo: str, payload: dict[str, object]) -> None:
        if not self._known(repo):
            return
        files = []
        for f in payload["files"]:  # type: ignore[union-attr]
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 1024 * 1024
            mode = "lfs" if lfs else "regular"
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False})
        self._json({"files": files})

    def _lfs_batch(self, repo: str, payload: dict[str, object]) -> None:
        if not self._known(repo):
            return
        objects = []
        for obj in payload["objects"]:  # type: ignore[union-attr]
            href = f"{self._base_url()}/lfs-upload/{obj['oid']}"
            objects.append({**obj, "actions": {"upload": {"href": href}}})
        self._json({"transfer": "basic", "objects": objects})

    def _commit(self, repo: str, revision: str, body: bytes) -> None:
        if not self._known(repo):
            return
        files = dict(FakeHub.uploaded[repo])
        lfs = set(FakeHub.uploaded_lfs.get(repo, set()))
        summary, paths = "", []
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in FakeHub.lfs_objects:
                    message = f"LFS object {value['oid']} of {value['path']} was never uploaded"
                    self._send(422, json.dumps({"error": message}).encode())
                    return
                files[value["path"]] = FakeHub.lfs_objects[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                lfs.discard(value["path"])
            else:
                self._send(400, json.dumps({"error": f"unknown key {key}"}).encode())
                return
            if key != "header":
                paths.append(value["path"])
        FakeHub.uploaded[repo], FakeHub.uploaded_lfs[repo] = files, lfs
        oid = hashlib.sha1(json.dumps(sorted(map(git_sha1, files.values()))).encode()).hexdigest()
        FakeHub.commit[repo] = oid
        FakeHub.commits.append(
            {"repo": repo, "revision": revision, "summary": summary, "paths": paths}
        )
        self._json({"commitUrl": f"{self._base_url()}/{repo}/commit/{oid}", "commitOid": oid})

    def _resolve(self, repo: str, name: str) -> None:
        body = _served(repo, name)
        headers = {"X-Repo-Commit": _commit_of(repo), "Content-Type": "application/octet-stream"}
        true = files_of(repo)[name]
        if _is_lfs(repo, name):
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
    for store in (
        FakeHub.uploaded,
        FakeHub.uploaded_lfs,
        FakeHub.created,
        FakeHub.commit,
        FakeHub.lfs_objects,
    ):
        store.clear()
    FakeHub.commits.clear()
    FakeHub.branches.clear()
