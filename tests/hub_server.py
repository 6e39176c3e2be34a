"""A small Hub-compatible HTTP server on 127.0.0.1 for push/pull round trips in tests.

It keeps each repository as a folder and implements what `huggingface_hub` uses to push (create repo, validate YAML,
preupload, commit) and to download (resolve, model info, tree). Everything else answers 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Hub:
    """`with Hub(tmp_path) as hub:` serves repositories under `tmp_path` at `hub.url` until the block ends."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.requests: list[str] = []
        self.commits: dict[str, str] = {}
        self.fail_commits = False  # set to make every commit fail (to test failed pushes)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Hub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> list[str]:
        folder = self.root / repo_id
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                path = urlparse(self.path).path
                hub.requests.append(f"POST {path}")
                body = self._body()
                if path == "/api/repos/create":
                    data = json.loads(body or b"{}")
                    repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
                    (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/]+)", path)
                if match and match.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": modes, "commitOid": hub.commits.get(match.group(1), "0" * 40)})
                if match:
                    return self._commit(match.group(1), body)
                return self._reply(404, {"error": "not found"})

            def _commit(self, repo_id: str, body: bytes):
                if hub.fail_commits:
                    return self._reply(500, {"error": "commit refused by the test server"})
                folder = hub.root / repo_id
                digest = hashlib.sha1(body).hexdigest()
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item.get("value", {})
                    if item.get("key") == "file":
                        target = folder / value["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value["content"]))
                    elif item.get("key") == "deletedFile":
                        (folder / value["path"]).unlink(missing_ok=True)
                hub.commits[repo_id] = digest
                return self._reply(
                    200,
                    {
                        "commitUrl": f"{hub.url}/{repo_id}/commit/{digest}",
                        "commitOid": digest,
                        "success": True,
                        "pullRequestUrl": None,
                    },
                )

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                if path == "/api/whoami-v2":
                    return self._reply(
                        200, {"name": "tester", "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}}
                    )
                match = re.fullmatch(r"/(?:api/models/)?(.+?)/resolve/([^/]+)/(.+)", path)
                if match:
                    return self._resolve(match.group(1), match.group(3))
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
                if match and (hub.root / match.group(1)).is_dir():
                    repo_id = match.group(1)
                    siblings = [{"rfilename": f} for f in hub.files(repo_id)]
                    return self._reply(
                        200,
                        {
                            "id": repo_id,
                            "sha": hub.commits.get(repo_id, "0" * 40),
                            "siblings": siblings,
                            "private": False,
                        },
                    )
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+/?(.*)", path)
                if match and (hub.root / match.group(1)).is_dir():
                    folder = hub.root / match.group(1)
                    entries = [
                        {"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": "0" * 40}
                        for f in hub.files(match.group(1))
                    ]
                    return self._reply(200, entries)
                return self._reply(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

            def _resolve(self, repo_id: str, filename: str):
                file = hub.root / repo_id / filename
                if not file.is_file():
                    return self._reply(404, {"error": "entry not found"}, {"X-Error-Code": "EntryNotFound"})
                data = file.read_bytes()
                headers = {
                    "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                    "X-Repo-Commit": hub.commits.get(repo_id, "0" * 40),
                    "Content-Type": "application/octet-stream",
                }
                return self._reply(200, data, headers)

        return Handler
