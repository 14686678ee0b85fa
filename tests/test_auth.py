"""Token sources, IAM token caching and renewal, and the AK/SK credentials."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.config import AuthConfig, IamConfig
from agent.errors import AuthError, ValidationError
from agent.secret import Secret
from agent.sms.auth import (
    AkSkSigner,
    IamToken,
    StaticToken,
    check_token,
    find_static_token,
    iam_auth_body,
    parse_expires_at,
    read_secret_file,
)
from agent.sms.signer import verify_signature

from .test_signer import AK, BODY, NOON, SK, URL


def test_ak_sk_signer_adds_domain_and_project(tmp_path: Path) -> None:
    sk_file = tmp_path / "sk"
    sk_file.write_text(SK + "\n")
    auth = AuthConfig(ak=AK, sk_file=sk_file, domain_id="dom1", project_id="proj1")
    signer = AkSkSigner(auth, clock=lambda: NOON)
    out = signer.headers("POST", URL, {"Content-Type": "application/json"}, BODY)
    assert out["X-Domain-Id"] == "dom1" and out["X-Project-Id"] == "proj1"
    assert "x-domain-id;x-project-id" in out["Authorization"]
    assert verify_signature("POST", URL, out, BODY, Secret(SK))
    assert signer.renew() is False
    assert SK not in signer.describe()


def test_static_token_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    cred_dir = tmp_path / "creds"
    cred_dir.mkdir()
    (cred_dir / "sms-token").write_text("from-systemd")
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir), "SMSAGENT_TOKEN": "from-env"}
    inline = Secret("from-inline")

    def found(auth: AuthConfig, environ: dict[str, str]) -> str | None:
        result = find_static_token(auth, environ)
        return result[0].reveal() if result else None

    assert found(AuthConfig(token=inline, token_file=token_file), env) == "from-file"
    assert found(AuthConfig(token=inline), env) == "from-systemd"
    assert found(AuthConfig(token=inline), {"SMSAGENT_TOKEN": "from-env"}) == "from-env"
    assert found(AuthConfig(token=inline), {}) == "from-inline"
    assert found(AuthConfig(), {}) is None


def test_static_token_is_reread_each_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first")
    source = StaticToken(AuthConfig(token_file=token_file), environ={})
    assert source.headers("POST", URL, {}, b"")["X-Auth-Token"] == "first"
    token_file.write_text("second\n")
    assert source.headers("POST", URL, {}, b"")["X-Auth-Token"] == "second"
    assert str(token_file) in source.describe()


def test_no_token_is_a_clear_error() -> None:
    with pytest.raises(AuthError, match="no SMS token configured"):
        StaticToken(AuthConfig(), environ={}).headers("POST", URL, {}, b"")


def test_check_token_limits_never_show_the_token() -> None:
    with pytest.raises(ValidationError, match="16385 characters") as info:
        check_token(Secret("x" * 16385), "test")
    assert "xxxx" not in str(info.value)
    with pytest.raises(AuthError, match="non-printable") as info2:
        check_token(Secret("abc\r\nX-Evil: 1"), "test")
    assert "Evil" not in str(info2.value)
    assert check_token(Secret("x" * 16384), "test")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("  \n", "is empty")],
)
def test_read_secret_file_errors_name_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AuthError, match=message) as info:
        read_secret_file(path, "password")
    assert str(path) in str(info.value)


def test_iam_auth_body_scope() -> None:
    iam = IamConfig("https://iam", "dom", "user", Path("/pw"))
    body = iam_auth_body(iam, Secret("pw"))
    assert body["auth"]["scope"] == {"domain": {"name": "dom"}}
    user = body["auth"]["identity"]["password"]["user"]
    assert user == {"domain": {"name": "dom"}, "name": "user", "password": "pw"}
    assert body["auth"]["identity"]["methods"] == ["password"]
    with_project = IamConfig("https://iam", "dom", "user", Path("/pw"), project="ap-southeast-1")
    body = iam_auth_body(with_project, Secret("pw"))
    assert body["auth"]["scope"] == {"project": {"name": "ap-southeast-1"}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "2026-11-24T12:00:00.000000Z",
            datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp(),
        ),
        ("2026-11-24T12:00:00Z", datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp()),
        ("2026-11-24T12:00:00", datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp()),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_parse_expires_at(value: object, expected: float | None) -> None:
    assert parse_expires_at(value) == expected


class FakeIam:
    def __init__(self, ttl: float, clock: list[float]):
        self.ttl, self.clock, self.calls = ttl, clock, 0

    def __call__(self, iam: IamConfig, password: Secret) -> tuple[Secret, float]:
        assert password.reveal() == "pw"
        self.calls += 1
        return Secret(f"tok{self.calls}"), self.clock[0] + self.ttl


def _iam(tmp_path: Path) -> IamConfig:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    return IamConfig("https://iam.example", "dom", "user", pw)


def test_iam_token_cached_0600_and_reused(tmp_path: Path) -> None:
    now = [1000.0]
    login = FakeIam(3600, now)
    cache = tmp_path / "state" / "iam-token.json"
    first = IamToken(_iam(tmp_path), cache, login, clock=lambda: now[0])
    assert first.token().reveal() == "tok1"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache.parent).st_mode) == 0o700
    # A new process (new object) reuses the cached token: no second login.
    again = IamToken(_iam(tmp_path), cache, login, clock=lambda: now[0])
    assert again.headers("POST", URL, {}, b"")["X-Auth-Token"] == "tok1"
    assert login.calls == 1


def test_iam_token_renewed_before_expiry_and_after_401(tmp_path: Path) -> None:
    now = [1000.0]
    login = FakeIam(3600, now)
    source = IamToken(_iam(tmp_path), tmp_path / "c.json", login, clock=lambda: now[0])
    assert source.token().reveal() == "tok1"
    now[0] += 3600 - 601  # 601 s left: outside the 600 s renewal margin
    assert source.token().reveal() == "tok1"
    now[0] += 2  # 599 s left: still valid, but renewed ahead of expiry
    assert source.token().reveal() == "tok2"
    assert source.renew() is True
    assert source.token().reveal() == "tok3"
    assert login.calls == 3


def test_iam_cache_for_another_user_is_ignored(tmp_path: Path) -> None:
    now = [1000.0]
    login = FakeIam(3600, now)
    cache = tmp_path / "c.json"
    IamToken(_iam(tmp_path), cache, login, clock=lambda: now[0]).token()
    other = IamConfig("https://iam.example", "dom", "someone-else", tmp_path / "pw")
    IamToken(other, cache, login, clock=lambda: now[0]).token()
    assert login.calls == 2
