"""Credentials for SMS: static tokens, IAM password login with a cached token, AK/SK signing
(the signature itself is computed in `signer.py`).

No HTTP here: IAM login is injected as a callable (client.py owns `requests`), so the token
logic stays pure and testable. Secret values never enter a message or a log line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Tuple

from ..config import AuthConfig, IamConfig
from ..errors import AuthError, ValidationError
from ..model import MAX_TOKEN
from ..secret import Secret
from .signer import sign_request

UTC = timezone.utc  # datetime.UTC is 3.11

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "sms-token"  # the name given to systemd's LoadCredential=
TOKEN_ENV = "SMSAGENT_TOKEN"
IAM_CACHE_NAME = "iam-token.json"

# login(iam, password) -> (token, expires_at as a Unix time)
LoginFunc = Callable[[IamConfig, Secret], Tuple[Secret, float]]


class Credentials(Protocol):
    """What the HTTP client needs from any kind of credentials."""

    def headers(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """The request's headers with authentication added."""
        ...

    def renew(self) -> bool:
        """Called after a 401: True when fresh credentials are now available for one retry."""
        ...

    def describe(self) -> str:
        """Where the credentials come from, for messages (never the secret itself)."""
        ...

    def rejected_hint(self) -> str:
        """What the operator should do when SMS answers 401 to these credentials."""
        ...


# --- reading secrets --------------------------------------------------------------------------


def read_secret_file(path: Path, what: str) -> Secret:
    """One secret from a file, trailing newline removed; errors name the file, never the value."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthError(f"{what} file {path} does not exist") from None
    except PermissionError:
        raise AuthError(f"{what} file {path}: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"{what} file {path} cannot be read: {type(exc).__name__}") from None
    if not text:
        raise AuthError(f"{what} file {path} is empty")
    return Secret(text)


def check_token(token: Secret, origin: str) -> Secret:
    """A token must fit the documented limit and be safe to put in a header."""
    value = token.reveal()
    if not 1 <= len(value) <= MAX_TOKEN:
        raise ValidationError(
            f"the token from {origin} is {len(value)} characters; SMS accepts 1 to {MAX_TOKEN}"
        )
    if not all(33 <= ord(ch) <= 126 for ch in value):
        raise AuthError(f"the token from {origin} contains spaces or non-printable characters")
    return token


def find_static_token(auth: AuthConfig, environ: Mapping[str, str]) -> tuple[Secret, str] | None:
    """First of: auth.token_file, $CREDENTIALS_DIRECTORY/sms-token, $SMSAGENT_TOKEN, auth.token."""
    if auth.token_file is not None:
        return read_secret_file(auth.token_file, "token"), f"auth.token_file {auth.token_file}"
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        if path.exists():
            return read_secret_file(path, "token"), f"systemd credential {path}"
    if environ.get(TOKEN_ENV):
        return Secret(environ[TOKEN_ENV].strip()), f"${TOKEN_ENV}"
    if auth.token:
        return auth.token, "auth.token"
    return None


class StaticToken:
    """A token given by the operator; re-read before every request so a fixed file takes effect."""

    def __init__(self, auth: AuthConfig, environ: Mapping[str, str] | None = None):
        self._auth = auth
        self._environ = os.environ if environ is None else environ
        self._origin = "the configured token"

    def headers(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        found = find_static_token(self._auth, self._environ)
        if found is None:
            raise AuthError(
                "no SMS token configured: set auth.token_file, LoadCredential=sms-token, "
                f"${TOKEN_ENV}, auth.iam or auth.ak/auth.sk_file"
            )
        token, self._origin = found
        return {**headers, "X-Auth-Token": check_token(token, self._origin).reveal()}

    def renew(self) -> bool:
        return False  # nothing to renew: the operator must replace the token

    def describe(self) -> str:
        return f"the token from {self._origin}"

    def rejected_hint(self) -> str:
        return (
            "it is expired or invalid; put a fresh one there "
            "(it is read again before the next try; the results stay queued)"
        )


class IamToken:
    """A token from IAM password login, cached in the state dir (0600) and renewed before expiry."""

    def __init__(
        self,
        iam: IamConfig,
        cache_path: Path,
        login: LoginFunc,
        clock: Callable[[], float] = time.time,
    ):
        self._iam = iam
        self._cache_path = cache_path
        self._login = login
        self._clock = clock
        self._key = f"{iam.endpoint}|{iam.domain}|{iam.user}|{iam.project or ''}"
        self._token: Secret | None = None
        self._expires_at = 0.0
        self._obtained_at = 0.0

    def headers(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        return {**headers, "X-Auth-Token": self.token().reveal()}

    def token(self) -> Secret:
        if self._token is None:
            self._load_cache()
        if self._token is None or self._clock() >= self._renew_at():
            self._fetch()
        assert self._token is not None
        return self._token

    def renew(self) -> bool:
        log.info("SMS rejected the IAM token; logging in again as %s", self._iam.user)
        self._token = None
        self._cache_path.unlink(missing_ok=True)
        self._fetch()
        return True

    def describe(self) -> str:
        return f"the IAM token of user {self._iam.user} (domain {self._iam.domain})"

    def rejected_hint(self) -> str:
        return (
            "a freshly issued token was refused too; check that auth.iam.endpoint and "
            "auth.iam.project belong to the SMS endpoint's region"
        )

    def _renew_at(self) -> float:
        # Renew a quarter of the lifetime early (at most ten minutes) so a request never
        # leaves with a token that expires in flight.
        margin = min(600.0, max(0.0, self._expires_at - self._obtained_at) / 4)
        return self._expires_at - margin

    def _fetch(self) -> None:
        password = read_secret_file(self._iam.password_file, "IAM password")
        token, expires_at = self._login(self._iam, password)
        check_token(token, f"IAM at {self._iam.endpoint}")
        self._token, self._expires_at, self._obtained_at = token, expires_at, self._clock()
        log.info("obtained an IAM token for user %s, valid until %s", self._iam.user,
                 datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds"))  # fmt: skip
        self._save_cache()

    def _load_cache(self) -> None:
        try:
            data = json.loads(self._cache_path.read_text(encoding="utf-8"))
            if data.get("key") != self._key:
                return
            self._token = Secret(str(data["token"]))
            self._expires_at = float(data["expires_at"])
            self._obtained_at = float(data["obtained_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no usable cache: log in

    def _save_cache(self) -> None:
        assert self._token is not None
        data = {
            "key": self._key,
            "token": self._token.reveal(),
            "expires_at": self._expires_at,
            "obtained_at": self._obtained_at,
        }
        tmp = self._cache_path.with_name(self._cache_path.name + ".tmp")
        try:
            self._cache_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(data, fh)
            os.replace(tmp, self._cache_path)
        except OSError as exc:
            log.warning("cannot cache the IAM token in %s: %s", self._cache_path, exc.strerror)


def iam_auth_body(iam: IamConfig, password: Secret) -> dict[str, Any]:
    """The standard password-identity body of POST /v3/auth/tokens."""
    scope: dict[str, Any] = (
        {"project": {"name": iam.project}} if iam.project else {"domain": {"name": iam.domain}}
    )
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "domain": {"name": iam.domain},
                        "name": iam.user,
                        "password": password.reveal(),
                    }
                },
            },
            "scope": scope,
        }
    }


def parse_expires_at(value: Any) -> float | None:
    """IAM's `token.expires_at` (ISO 8601, e.g. 2026-11-24T13:00:00.000000Z) as a Unix time."""
    if not isinstance(value, str):
        return None
    if value.endswith("Z"):  # fromisoformat reads "Z" only from Python 3.11
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class AkSkSigner:
    """Signs each request with the access key and the secret key read from `auth.sk_file`."""

    def __init__(
        self,
        auth: AuthConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        assert auth.ak is not None and auth.sk_file is not None
        self._auth = auth
        self._clock = clock

    def headers(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        assert self._auth.ak is not None and self._auth.sk_file is not None
        sk = read_secret_file(self._auth.sk_file, "secret key")
        extra = dict(headers)
        if self._auth.domain_id:
            extra["X-Domain-Id"] = self._auth.domain_id
        if self._auth.project_id:
            extra["X-Project-Id"] = self._auth.project_id
        return sign_request(method, url, extra, body, ak=self._auth.ak, sk=sk, now=self._clock())

    def renew(self) -> bool:
        return False  # a rejected signature will not improve by signing again

    def describe(self) -> str:
        return f"the AK/SK signature with access key {self._auth.ak}"

    def rejected_hint(self) -> str:
        return "check auth.ak, auth.sk_file and the system clock (X-Sdk-Date)"


def credentials_for(auth: AuthConfig, state_dir: Path, login: LoginFunc) -> Credentials:
    """AK/SK if configured, else IAM password login, else a static token."""
    if auth.ak is not None and auth.sk_file is not None:
        return AkSkSigner(auth)
    if auth.iam is not None:
        return IamToken(auth.iam, state_dir / IAM_CACHE_NAME, login)
    return StaticToken(auth)
