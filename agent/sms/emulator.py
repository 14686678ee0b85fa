"""A small SMS and IAM emulator on loopback, with fault injection, for tests and trying the agent.

It answers POST and GET /v3/tasks/{task_id}/consistency-result as documented (200 `{}`, 400, 403,
404 bodies), POST /v3/auth/tokens as IAM does, and checks AK/SK signatures when given a pair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import signal
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..config import is_loopback
from ..model import MAX_COUNT, MAX_DIR_CHECK, MAX_ENTRIES_PER_REQUEST, MAX_TASK_ID
from ..secret import Secret
from .auth import parse_authorization, verify_signature

UTC = timezone.utc  # datetime.UTC is 3.11

_PATH = re.compile(r"^/v3/tasks/([^/]+)/consistency-result/?$")
_COUNTS = (
    "num_total_files",
    "num_different_files",
    "num_target_miss_files",
    "num_target_more_files",
)


@dataclass
class Seen:
    """One request as the emulator saw it (headers included, for tests that inspect them)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None  # None: the connection was dropped


@dataclass
class _Fault:
    kind: str  # "status", "stall" or "drop"
    status: int = 503
    retry_after: str | None = None
    seconds: float | None = None
    error_code: str | None = None


@dataclass
class _State:
    tasks: set[str]
    token: str | None
    ak: str | None
    sk: str | None
    iam_users: dict[str, str]
    iam_domain: str | None
    token_ttl: float
    result_format: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[_Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    received: list[list[dict[str, Any]]] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    iam_tokens: dict[str, float] = field(default_factory=dict)  # token -> expires_at
    logins: int = 0
    released: threading.Event = field(default_factory=threading.Event)


class Emulator:
    """Start with `.start()` (or `with Emulator(...) as emu:`); port 0 picks a free port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_ids: Sequence[str] = ("T",),
        token: str | None = "TOKEN",
        ak: str | None = None,
        sk: str | None = None,
        iam_users: Mapping[str, str] | None = None,
        iam_domain: str | None = None,
        token_ttl: float = 86400.0,
        result_format: str = "objects",
        ssl_context: ssl.SSLContext | None = None,
    ):
        if not is_loopback(host):
            raise ValueError(f"the emulator only listens on loopback, not {host}")
        self._state = _State(
            tasks=set(task_ids),
            token=token,
            ak=ak,
            sk=sk,
            iam_users=dict(iam_users or {}),
            iam_domain=iam_domain,
            token_ttl=token_ttl,
            result_format=result_format,
        )
        handler = type("Handler", (_Handler,), {"state": self._state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._scheme = "http"
        if ssl_context is not None:  # HTTPS, to test certificate checks and tls.ca_bundle
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # a prompt stop() keeps tests fast
            name="sms-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.released.set()  # stalled answers give up
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- fault injection ---

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: str | float | None = None,
        error_code: str | None = None,
    ) -> None:
        """Answer the next `n` SMS requests with `status` (and a Retry-After header if given)."""
        ra = None if retry_after is None else str(retry_after)
        with self._state.lock:
            self._state.faults += [_Fault("status", status, ra, error_code=error_code)] * n

    def stall_next(self, n: int = 1, seconds: float | None = None) -> None:
        """Hold the next `n` requests `seconds` before answering (None: until stop())."""
        with self._state.lock:
            self._state.faults += [_Fault("stall", seconds=seconds)] * n

    def drop_next(self, n: int = 1) -> None:
        """Close the connection of the next `n` requests without an answer."""
        with self._state.lock:
            self._state.faults += [_Fault("drop")] * n

    def expire_tokens(self) -> None:
        """Every IAM token issued so far is now expired (SMS answers 401)."""
        with self._state.lock:
            for token in self._state.iam_tokens:
                self._state.iam_tokens[token] = 0.0

    # --- what arrived ---

    @property
    def received(self) -> list[list[dict[str, Any]]]:
        """Accepted batches, each the posted `consistency_result` list, in arrival order."""
        with self._state.lock:
            return [list(batch) for batch in self._state.received]

    @property
    def requests(self) -> list[Seen]:
        with self._state.lock:
            return list(self._state.seen)

    @property
    def logins(self) -> int:
        return self._state.logins

    def results(self, task_id: str = "T") -> dict[str, dict[str, Any]]:
        """The latest entry per directory for a task."""
        out: dict[str, dict[str, Any]] = {}
        with self._state.lock:
            for item in self._state.history.get(task_id, []):
                for entry in item["consistency_result"]:
                    out[entry["dir_check"]] = entry
        return out


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"
    server_version = "sms-emulator"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read `.requests`

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(method, self.path, dict(self.headers.items()), body, time.time())
        st = self.state
        with st.lock:
            st.seen.append(seen)
        if method == "POST" and self.path.rstrip("/") == "/v3/auth/tokens":
            seen.status = self._iam_login(body)
            return
        match = _PATH.match(self.path.split("?")[0])
        if not match:
            seen.status = self._json(404, {"error_code": "SMS.0404", "error_msg": "no such API"})
            return
        with st.lock:
            fault = st.faults.pop(0) if st.faults else None
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        if fault is not None and fault.kind == "stall":
            st.released.wait(fault.seconds)
            if fault.seconds is None or st.released.is_set():
                self.close_connection = True
                return
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            code = fault.error_code or ("APIGW.0301" if fault.status == 401 else "SMS.9999")
            msg = "Incorrect IAM authentication information" if fault.status == 401 else "injected"
            seen.status = self._json(fault.status, {"error_code": code, "error_msg": msg}, headers)
            return
        denied = self._check_auth(method, body)
        if denied is not None:
            seen.status = self._json(*denied)
            return
        task_id = match.group(1)
        if task_id not in st.tasks:
            seen.status = self._json(
                404, {"error_code": "SMS.1801", "error_msg": f"task {task_id} not found"}
            )
            return
        if method == "GET":
            seen.status = self._json(
                200, {"task_id": task_id, "result_list": self._history(task_id)}
            )
            return
        entries, problem = _validate(body)
        if problem is not None:
            seen.status = self._json(400, {"error_code": "SMS.0205", "error_msg": problem})
            return
        with st.lock:
            st.received.append(entries)
            st.history.setdefault(task_id, []).append(
                {
                    "finished_time": int(time.time() * 1000),
                    "check_result": "success",
                    "consistency_result": entries,
                }
            )
        seen.status = self._json(200, {})

    def _history(self, task_id: str) -> list[Any]:
        with self.state.lock:
            items = list(self.state.history.get(task_id, []))
        if self.state.result_format == "strings":
            return [json.dumps(item) for item in items]
        return items

    def _check_auth(self, method: str, body: bytes) -> tuple[int, dict[str, Any]] | None:
        st = self.state
        authorization = self.headers.get("Authorization")
        if authorization and st.ak and st.sk:
            fields = parse_authorization(authorization)
            url = f"http://{self.headers.get('Host', '')}{self.path}"
            ok = (
                fields is not None
                and fields["Access"] == st.ak
                and verify_signature(method, url, dict(self.headers.items()), body, Secret(st.sk))
            )
            if ok:
                return None
            return 401, {
                "error_code": "APIGW.0301",
                "error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
            }
        token = self.headers.get("X-Auth-Token")
        if token:
            with st.lock:
                expires = st.iam_tokens.get(token)
            if expires is not None:
                if expires > time.time():
                    return None
                return 401, {
                    "error_code": "APIGW.0301",
                    "error_msg": "Incorrect IAM authentication information: token expired",
                }
            if st.token is not None and secrets.compare_digest(token, st.token):
                return None
        message = "Authentication failed: missing or invalid X-Auth-Token."
        return 403, {
            "error_code": "SMS.9004",
            "error_msg": message,
            "encoded_authorization_message": "",
            "error_param": ["X-Auth-Token"],
            "details": [{"error_code": "SMS.9004", "error_msg": message}],
        }

    def _iam_login(self, body: bytes) -> int:
        st = self.state
        try:
            user = json.loads(body)["auth"]["identity"]["password"]["user"]
            name, password, domain = user["name"], user["password"], user["domain"]["name"]
        except (ValueError, KeyError, TypeError):
            return self._json(400, {"error": {"code": 400, "message": "malformed auth body"}})
        good = st.iam_users.get(name)
        if (
            good is None
            or not secrets.compare_digest(good, password)
            or (st.iam_domain is not None and domain != st.iam_domain)
        ):
            wrong = {"error": {"code": 401, "message": "The username or password is wrong."}}
            return self._json(401, wrong)
        token = "MII" + secrets.token_urlsafe(48)
        expires = time.time() + st.token_ttl
        with st.lock:
            st.iam_tokens[token] = expires
            st.logins += 1
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self._json(201, {"token": {"expires_at": stamp}}, {"X-Subject-Token": token})

    def _json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> int:
        payload = json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        return status


def _validate(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """The documented request contract; the message says what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        return [], "the request body is not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("consistency_result"), list):
        return [], "consistency_result is missing or not a list"
    entries = data["consistency_result"]
    if len(entries) > MAX_ENTRIES_PER_REQUEST:
        return [], f"consistency_result has {len(entries)} items, at most 30 are allowed"
    for index, entry in enumerate(entries):
        where = f"consistency_result[{index}]"
        if not isinstance(entry, dict):
            return [], f"{where} is not an object"
        dir_check = entry.get("dir_check")
        if not isinstance(dir_check, str) or len(dir_check) > MAX_DIR_CHECK:
            return [], f"{where}.dir_check is missing or longer than {MAX_DIR_CHECK}"
        for name in _COUNTS:
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int):
                return [], f"{where}.{name} is missing or not an integer"
            if not 0 <= value <= MAX_COUNT:
                return [], f"{where}.{name} is out of range 0 to {MAX_COUNT}"
    return entries, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smsagent-emulator", description="Run the SMS/IAM emulator on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--task-id", action="append", dest="task_ids", metavar="ID")
    parser.add_argument("--token", help="the static token SMS accepts")
    parser.add_argument("--ak", help="access key whose signatures are accepted (with --sk-file)")
    parser.add_argument("--sk-file", help="file holding the secret key")
    parser.add_argument("--iam-user", action="append", default=[], metavar="USER:PASSWORD_FILE")
    parser.add_argument("--iam-domain")
    parser.add_argument("--token-ttl", type=float, default=86400.0, metavar="SECONDS")
    parser.add_argument("--result-format", choices=("objects", "strings"), default="objects")
    args = parser.parse_args(argv)
    for task in args.task_ids or []:
        if not 1 <= len(task) <= MAX_TASK_ID:
            parser.error(f"--task-id must be 1 to {MAX_TASK_ID} characters")
    users = {}
    for item in args.iam_user:
        name, sep, path = item.partition(":")
        if not sep:
            parser.error("--iam-user takes USER:PASSWORD_FILE")
        with open(path, encoding="utf-8") as fh:
            users[name] = fh.read().strip()
    sk = None
    if args.sk_file:
        with open(args.sk_file, encoding="utf-8") as fh:
            sk = fh.read().strip()
    try:
        emulator = Emulator(
            args.host,
            args.port,
            task_ids=args.task_ids or ["T"],
            token=args.token,
            ak=args.ak,
            sk=sk,
            iam_users=users,
            iam_domain=args.iam_domain,
            token_ttl=args.token_ttl,
            result_format=args.result_format,
        )
    except (ValueError, OSError) as exc:
        print(f"smsagent-emulator: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    emulator.start()
    tasks = ", ".join(args.task_ids or ["T"])
    print(f"SMS emulator listening on {emulator.url} (tasks: {tasks})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
