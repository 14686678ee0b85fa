"""A small SMS and IAM emulator on loopback, with fault injection, for tests and trying the agent.

It answers POST and GET /v3/tasks/{task_id}/consistency-result as documented (200 `{}`, 400, 403,
404 bodies), GET /v3/tasks/{task_id}/configuration-setting and GET /v3/tasks/{task_id} with the
task's settings, POST /v3/auth/tokens as IAM does, and checks AK/SK signatures (and their
X-Sdk-Date, as the API gateway does) when given a pair. Those checks, and the contract of a
POST, are in `emulator_gateway.py`; the tasks' settings in `emulator_tasks.py`.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

from ..config import is_loopback
from .emulator_gateway import check_auth, iam_login, validate_post
from .emulator_tasks import SettingsFileError, TaskBook, settings_document, task_document

_PATH = re.compile(r"^/v3/tasks/([^/]+)(/consistency-result|/configuration-setting)?/?$")
# The API gateway refuses a signature whose X-Sdk-Date is further than this from its clock.
MAX_CLOCK_SKEW = 15 * 60


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
    book: TaskBook
    clock: Callable[[], float]
    max_skew: float
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
        result_format: str = "strings",
        settings: Mapping[str, str] | None = None,
        settings_file: Path | None = None,
        migration_ip: str | None = None,
        target_ip: str | None = None,
        max_skew: float = MAX_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
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
            book=TaskBook(settings, migration_ip, target_ip, settings_file),
            clock=clock,
            max_skew=max_skew,
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

    # --- the task's settings ---

    def set_setting(self, key: str, value: str | None) -> None:
        """Set (None: remove) one configuration-setting of every task, as the console would."""
        self._state.book.set_setting(key, value)

    def set_addresses(self, migration_ip: str | None, target_ip: str | None = None) -> None:
        """The task's migration_ip and target_server.ip."""
        self._state.book.set_addresses(migration_ip, target_ip)

    def record(self, task_id: str, item: Any) -> None:
        """Add an item to the task's result_list as is, to try readers on odd answers."""
        with self._state.lock:
            self._state.history.setdefault(task_id, []).append(item)

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
                # record() may have added oddities: only well-formed items count here
                entries = item.get("consistency_result") if isinstance(item, dict) else None
                for entry in entries if isinstance(entries, list) else []:
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
            seen.status = self._json(*iam_login(st, body))
            return
        path, _, query = self.path.partition("?")
        match = _PATH.match(path)
        operation = match.group(2) if match else None
        if not match or (method == "POST" and operation != "/consistency-result"):
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
        denied = check_auth(st, method, self.path, self.headers, body)
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
            try:
                document = self._get(task_id, operation, query)
            except SettingsFileError as exc:  # edited into something unreadable while running
                seen.status = self._json(500, {"error_code": "SMS.9999", "error_msg": str(exc)})
                return
            seen.status = self._json(200, document)
            return
        entries, problem = validate_post(body)
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

    def _get(self, task_id: str, operation: str | None, query: str) -> dict[str, Any]:
        book = self.state.book
        if operation == "/configuration-setting":
            keys = parse_qs(query).get("config_key")
            return settings_document(task_id, book.settings(), keys[0] if keys else None)
        if operation is None:
            return task_document(task_id, *book.addresses())
        return {"task_id": task_id, "result_list": self._history(task_id)}

    def _history(self, task_id: str) -> list[Any]:
        with self.state.lock:
            items = list(self.state.history.get(task_id, []))
        if self.state.result_format == "strings":  # the documented form: list[str]
            return [json.dumps(item) for item in items]
        return items

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header follows the emulator's clock, which tests may set apart from the host's.
        return super().date_time_string(self.state.clock() if timestamp is None else timestamp)

    def _json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> int:
        payload = json.dumps(data).encode("utf-8")
        self.send_response(status)
        # The gateway tags every answer; the SDK reads request_id from this header.
        request_id = data.get("request_id") if isinstance(data, dict) else None
        self.send_header("X-Request-Id", request_id or secrets.token_hex(16))
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        return status
