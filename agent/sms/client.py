"""HTTP to SMS and IAM: the session, the consistency-result client, error mapping and backoff.

The only module that imports `requests`; its exceptions become `UploadError`/`AuthError` here.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from .. import __version__
from ..config import AgentConfig, IamConfig
from ..errors import AuthError, ConfigError, UploadError, ValidationError
from ..model import MAX_ENTRIES_PER_REQUEST, ConsistencyEntry, task_id_problem
from ..secret import Secret
from .auth import Credentials, credentials_for, iam_auth_body, parse_expires_at
from .remote import RemoteResult, parse_result_list

# The API gateway refuses an AK/SK signature dated further than this from its own clock.
GATEWAY_MAX_SKEW = 15 * 60

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json;charset=UTF-8"
USER_AGENT = f"smsagent/{__version__}"
MAX_RETRY_AFTER = 86400.0


class Disposition(enum.Enum):
    """What to do with entries after a failed POST."""

    RETRY = "retry"  # transient: exponential backoff with jitter
    SLOW = "slow"  # needs an operator (auth, permissions, redirect): retry at backoff_max
    PERMANENT = "permanent"  # the server will never accept it: dead letters


def disposition(status: int | None) -> Disposition:
    """No answer, 408, 429 and 5xx are transient; 400 and 404 are final; the rest waits slowly."""
    if status is None or status in (408, 429) or status >= 500:
        return Disposition.RETRY
    if status in (400, 404):
        return Disposition.PERMANENT
    return Disposition.SLOW


def backoff_delay(
    attempt: int,
    *,
    cap: float,
    base: float = 1.0,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], never before Retry-After."""
    base = min(base, cap)
    ceiling = min(cap, base * 2 ** max(0, min(attempt - 1, 60)))
    delay = rand() * ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - now)


def validate_request(task_id: str, entries: Sequence[ConsistencyEntry]) -> None:
    """The limits of a request, checked before sending, so the operator sees why and not a 400.
    Each entry was checked on its way into the outbox (`model.validate_entry`)."""
    problem = task_id_problem(task_id)
    if problem:
        raise ValidationError(f"task_id {problem}")
    if not entries:
        raise ValidationError("refusing to post an empty consistency_result list")
    if len(entries) > MAX_ENTRIES_PER_REQUEST:
        raise ValidationError(
            f"{len(entries)} entries in one request; SMS accepts at most {MAX_ENTRIES_PER_REQUEST}"
        )
    seen: set[str] = set()
    for entry in entries:
        if entry.dir_check in seen:
            raise ValidationError(f"{entry.dir_check!r} appears twice in one request")
        seen.add(entry.dir_check)


def make_session(ca_bundle: Path | None = None) -> requests.Session:
    """One session per client: TLS verified (optionally against a CA bundle), proxies from env."""
    if ca_bundle is not None and not ca_bundle.is_file():
        raise ConfigError(f"{ca_bundle} is not a readable file", key="tls.ca_bundle")
    session = requests.Session()
    session.verify = str(ca_bundle) if ca_bundle else True
    session.headers["User-Agent"] = USER_AGENT
    # A no-op auth hook: without it requests would read ~/.netrc and could replace the
    # signed Authorization header with Basic credentials. Proxies still come from the env.
    session.auth = _no_netrc
    return session


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _error_fields(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    params = data.get("error_param")
    return {
        "error_code": str(data["error_code"]) if data.get("error_code") else None,
        "error_msg": str(data["error_msg"])[:500] if data.get("error_msg") else None,
        "error_param": tuple(str(p)[:300] for p in params) if isinstance(params, list) else (),
    }


class SmsClient:
    """POST and GET of /v3/tasks/{task_id}/consistency-result with one session."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        session: requests.Session,
        timeout: tuple[float, float] = (5.0, 30.0),
        clock: Callable[[], float] = time.time,
    ):
        self.endpoint = endpoint.rstrip("/")
        self._credentials = credentials
        self._session = session
        self._timeout = timeout
        self._clock = clock

    def task_url(self, task_id: str, operation: str = "") -> str:
        """`{endpoint}/v3/tasks/{task_id}` plus an operation such as `/consistency-result`."""
        problem = task_id_problem(task_id)
        if problem:
            raise ValidationError(f"task_id {problem}")
        return f"{self.endpoint}/v3/tasks/{quote(task_id, safe='')}{operation}"

    def url(self, task_id: str) -> str:
        return self.task_url(task_id, "/consistency-result")

    def post_results(self, task_id: str, entries: Sequence[ConsistencyEntry]) -> None:
        """Deliver one batch; returns on 2xx, raises UploadError (or AuthError) otherwise."""
        validate_request(task_id, entries)
        body = json.dumps(
            {"consistency_result": [e.to_api() for e in entries]}, ensure_ascii=False
        ).encode("utf-8")
        self._send("POST", self.url(task_id), body)

    def get_results(self, task_id: str) -> list[RemoteResult]:
        return parse_result_list(self.get_json(self.url(task_id)))

    def get_json(self, url: str) -> Any:
        """GET with the same authentication, TLS rules and error mapping as the upload."""
        response = self._send("GET", url, b"")
        try:
            return response.json()
        except ValueError:
            raise UploadError(
                f"GET {url} answered {response.status_code} without JSON",
                url=url,
                status=response.status_code,
            ) from None

    def _send(self, method: str, url: str, body: bytes) -> requests.Response:
        response = self._request(method, url, body)
        if response.status_code == 401 and self._credentials.renew():
            response = self._request(method, url, body)
        if 200 <= response.status_code < 300:
            return response
        raise self._error(method, url, response)

    def _request(self, method: str, url: str, body: bytes) -> requests.Response:
        base = {"Content-Type": CONTENT_TYPE} if body else {}
        headers = self._credentials.headers(method, url, base, body)
        try:
            return self._session.request(
                method,
                url,
                data=body or None,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                # Per call, because requests lets $REQUESTS_CA_BUNDLE override the session's
                # `verify`, which would ignore tls.ca_bundle; with verify=True the env applies.
                verify=self._session.verify,
            )
        except requests.exceptions.SSLError as exc:
            raise UploadError(tls_failure(url, exc), url=url) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise UploadError(
                f"no connection to {url} within {self._timeout[0]:g}s", url=url
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise UploadError(
                f"no answer from {url} within {self._timeout[1]:g}s", url=url
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise UploadError(f"cannot reach {url}: {_reason(exc)}", url=url) from exc
        except requests.exceptions.RequestException as exc:
            raise UploadError(f"{method} {url} failed: {_reason(exc)}", url=url) from exc

    def _error(self, method: str, url: str, response: requests.Response) -> UploadError:
        status = response.status_code
        fields = _error_fields(response)
        code, msg = fields.get("error_code"), fields.get("error_msg")
        detail = ": ".join(p for p in (code, msg) if p) or (response.reason or "no details")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
        kwargs: dict[str, Any] = dict(url=url, status=status, retry_after=retry_after, **fields)
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            return UploadError(
                f"{method} {url} was redirected ({status}) to {where}; redirects are not "
                "followed: set endpoint to the final https:// URL",
                **kwargs,
            )
        if status == 401:
            creds = self._credentials
            clock = _clock_hint(msg, response.headers.get("Date"), self._clock())
            if clock:
                return AuthError(
                    f"SMS rejected {creds.describe()} (401 {detail}): {clock}", **kwargs
                )
            return AuthError(
                f"SMS rejected {creds.describe()} (401 {detail}): {creds.rejected_hint()}",
                **kwargs,
            )
        if status == 403:
            params = "; ".join(fields.get("error_param") or ())
            return AuthError(
                f"SMS refused {method} {url} (403 {detail})"
                + (f" [error_param: {params}]" if params else "")
                + ": check the user's SMS permissions and the task ID",
                **kwargs,
            )
        return UploadError(f"SMS answered {status} to {method} {url}: {detail}", **kwargs)


def _clock_hint(error_msg: str | None, date: str | None, now: float) -> str | None:
    """When a signature was refused as expired, say how far this host's clock is off."""
    server = parse_retry_after(date, 0.0) if date else None  # an HTTP date, as seconds
    skew = None if server is None else now - server
    expired = "signature expired" in (error_msg or "").lower()
    if not expired and (skew is None or abs(skew) <= GATEWAY_MAX_SKEW):
        return None
    if skew is None:
        return "the request's X-Sdk-Date is too far from SMS's clock: check this host's clock (NTP)"
    side = "ahead of" if skew > 0 else "behind"
    return (
        f"this host's clock is {_duration(abs(skew))} {side} SMS's (its Date: {date}); "
        "the API gateway refuses signatures more than 15 minutes off: set the clock (NTP)"
    )


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    parts = [f"{days} d"] if days else []
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts += [f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min")) if n or parts]
    return " ".join(parts + [f"{secs} s"])


def _reason(exc: Exception) -> str:
    """The innermost cause, short: enough to tell refused from DNS from TLS."""
    cause: BaseException = exc
    while cause.__cause__ is not None or (cause.args and isinstance(cause.args[0], Exception)):
        cause = cause.__cause__ or cause.args[0]
    text = str(cause).split("Caused by ")[-1].strip("()")
    return _balanced(text[:200])


def _balanced(text: str) -> str:
    """`text` without the closing parentheses its opening ones lost, or with the ones the
    cut removed: a reason goes inside "(...)" in a message."""
    while text.count(")") > text.count("(") and text.endswith(")"):
        text = text[:-1]
    return text + ")" * max(0, text.count("(") - text.count(")"))


# What OpenSSL says when the other end answers a TLS hello with something that is not TLS
# (most often a plain-HTTP server).
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
            "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "record layer failure")  # fmt: skip
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\] ([a-z0-9 ]+)")


def tls_failure(url: str, exc: Exception) -> str:
    """One line saying what went wrong with TLS: the server did not speak it, or its
    certificate could not be verified, or another handshake failure."""
    text = str(exc)
    found = _SSL_REASON.search(text)
    reason = f"{found.group(1)}: {found.group(2).strip()}" if found else _reason(exc)
    if any(marker in text for marker in _NOT_TLS):
        return (
            f"the server at {url} did not speak TLS ({reason}); if it serves plain HTTP, "
            "use an http:// endpoint (accepted for loopback or with allow_insecure_http)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"the certificate of {url} could not be verified ({reason}); set tls.ca_bundle "
            "if SMS is reached through an intercepting proxy"
        )
    return f"TLS handshake with {url} failed ({reason})"


def iam_login(
    session: requests.Session, timeout: tuple[float, float], iam: IamConfig, password: Secret
) -> tuple[Secret, float]:
    """POST {iam}/v3/auth/tokens; the token is the X-Subject-Token header."""
    url = iam.endpoint.rstrip("/") + "/v3/auth/tokens"
    body = json.dumps(iam_auth_body(iam, password)).encode("utf-8")
    try:
        response = session.post(
            url,
            data=body,
            headers={"Content-Type": CONTENT_TYPE},
            timeout=timeout,
            allow_redirects=False,
            verify=session.verify,
        )
    except requests.exceptions.RequestException as exc:
        # `from None`: the request object in the chain holds the password body. A network
        # failure is transient, so UploadError (retried with backoff), not AuthError.
        raise UploadError(f"IAM login at {url} failed: {_reason(exc)}", url=url) from None
    if response.status_code not in (200, 201):
        fields = _error_fields(response)
        detail = ": ".join(p for p in (fields.get("error_code"), fields.get("error_msg")) if p)
        raise AuthError(
            f"IAM refused the login of user {iam.user} in domain {iam.domain} "
            f"({response.status_code} {detail or response.reason})",
            url=url,
            status=response.status_code,
            error_code=fields.get("error_code"),
            error_msg=fields.get("error_msg"),
        )
    token = response.headers.get("X-Subject-Token")
    try:
        expires = parse_expires_at(response.json()["token"]["expires_at"])
    except (ValueError, KeyError, TypeError):
        expires = None
    if not token or expires is None:
        raise AuthError(
            f"IAM at {url} answered without X-Subject-Token or token.expires_at", url=url
        )
    return Secret(token), expires


def open_client(config: AgentConfig, session: requests.Session | None = None) -> SmsClient:
    """The client for the configured endpoint, with credentials chosen from `auth`."""
    if not config.endpoint:
        raise ConfigError("endpoint is not set: nothing can be uploaded", source=config.origin)
    session = session or make_session(config.tls.ca_bundle)
    timeout = (config.upload.connect_timeout, config.upload.read_timeout)

    def login(iam: IamConfig, password: Secret) -> tuple[Secret, float]:
        return iam_login(session, timeout, iam, password)

    credentials = credentials_for(config.auth, config.state_dir, login)
    return SmsClient(config.endpoint, credentials, session, timeout)
