"""The SMS client against a real loopback emulator: headers, validation, status mapping, backoff."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.errors import AuthError, ConfigError, UploadError, ValidationError
from agent.model import ConsistencyEntry
from agent.sms.client import (
    CONTENT_TYPE,
    Disposition,
    SmsClient,
    backoff_delay,
    disposition,
    open_client,
    parse_retry_after,
    validate_request,
)
from agent.sms.emulator import Emulator

from .sms_helpers import TOKEN, entry, make_config


def client_for(emu: Emulator, tmp_path: Path, **extra: object) -> SmsClient:
    return open_client(make_config(tmp_path / "state", emu.url, **extra))


# --- pure parts ---


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, Disposition.RETRY),
        (408, Disposition.RETRY),
        (429, Disposition.RETRY),
        (500, Disposition.RETRY),
        (502, Disposition.RETRY),
        (503, Disposition.RETRY),
        (400, Disposition.PERMANENT),
        (404, Disposition.PERMANENT),
        (401, Disposition.SLOW),
        (403, Disposition.SLOW),
        (302, Disposition.SLOW),
        (409, Disposition.SLOW),
    ],
)
def test_disposition(status: int | None, expected: Disposition) -> None:
    assert disposition(status) is expected


@pytest.mark.parametrize(
    ("attempt", "rand", "retry_after", "expected"),
    [
        (1, 1.0, None, 1.0),
        (2, 1.0, None, 2.0),
        (5, 1.0, None, 16.0),
        (20, 1.0, None, 600.0),  # capped
        (200, 1.0, None, 600.0),  # no overflow
        (5, 0.0, None, 0.0),  # full jitter reaches zero
        (5, 0.5, None, 8.0),
        (1, 0.0, 42.0, 42.0),  # Retry-After wins over a shorter jitter
        (10, 1.0, 3.0, 512.0),  # ...but never shortens the backoff
    ],
)
def test_backoff_delay(
    attempt: int, rand: float, retry_after: float | None, expected: float
) -> None:
    assert backoff_delay(attempt, cap=600, retry_after=retry_after, rand=lambda: rand) == expected


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after("120", now) == 120.0
    later = format_datetime(datetime(2026, 11, 23, 12, 0, 30, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after(later, now) == 30.0
    earlier = format_datetime(datetime(2026, 11, 23, 11, 0, 0, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("task_id", "entries", "message"),
    [
        ("", [entry()], "task_id must be 1 to 36"),
        ("x" * 37, [entry()], "task_id must be 1 to 36"),
        ("T", [], "empty"),
        ("T", [entry(f"/d{i}") for i in range(31)], "31 entries"),
        ("T", [entry("/a"), entry("/a")], "appears twice"),
    ],
)
def test_validate_request(task_id: str, entries: list[ConsistencyEntry], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_request(task_id, entries)


def test_a_request_at_every_limit_is_sent_and_accepted(tmp_path: Path) -> None:
    task = "x" * 36
    at_limits = [entry(f"/d{i}", total=1_000_000) for i in range(29)] + [entry("/" + "a" * 1023)]
    validate_request(task, at_limits)  # no ValidationError
    with Emulator(task_ids=[task], token=TOKEN) as emu:
        client_for(emu, tmp_path).post_results(task, at_limits)
        assert emu.received == [[e.to_api() for e in at_limits]]


# --- against the emulator ---


def test_post_sends_documented_headers_and_body(emu: Emulator, tmp_path: Path) -> None:
    client = client_for(emu, tmp_path)
    client.post_results("T", [entry("/var", 3, num_different_files=1)])
    seen = emu.requests[-1]
    assert seen.path == "/v3/tasks/T/consistency-result"
    assert seen.headers["X-Auth-Token"] == TOKEN
    assert seen.headers["Content-Type"] == CONTENT_TYPE == "application/json;charset=UTF-8"
    assert seen.headers["User-Agent"].startswith("smsagent/")
    sent = entry("/var", 3, num_different_files=1).to_api()
    assert json.loads(seen.body) == {"consistency_result": [sent]}
    assert emu.received == [[entry("/var", 3, num_different_files=1).to_api()]]


def test_invalid_batch_never_reaches_the_server(emu: Emulator, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        client_for(emu, tmp_path).post_results("T", [entry(f"/d{i}") for i in range(31)])
    assert emu.requests == []


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (400, UploadError, "SMS answered 400"),
        (500, UploadError, "SMS answered 500"),
        (503, UploadError, "SMS answered 503"),
        (429, UploadError, "SMS answered 429"),
        (408, UploadError, "SMS answered 408"),
        (401, AuthError, "expired or invalid"),
        (302, UploadError, "redirects are not followed"),
    ],
)
def test_error_statuses_map_to_errors(
    emu: Emulator, tmp_path: Path, status: int, error: type[Exception], text: str
) -> None:
    emu.fail_next(1, status=status, retry_after=7)
    with pytest.raises(error, match=text) as info:
        client_for(emu, tmp_path).post_results("T", [entry()])
    exc = info.value
    assert isinstance(exc, UploadError)
    assert exc.status == status and exc.retry_after == 7.0
    assert exc.url and exc.url.endswith("/v3/tasks/T/consistency-result")
    assert len(emu.requests) == 1  # no redirect followed, a static token not retried


def test_403_carries_error_code_and_param(emu: Emulator, tmp_path: Path) -> None:
    with pytest.raises(AuthError) as info:
        client_for(emu, tmp_path, auth={"token": "wrong-token"}).post_results("T", [entry()])
    exc = info.value
    assert exc.status == 403 and exc.error_code == "SMS.9004"
    assert exc.error_param == ("X-Auth-Token",)
    assert "SMS.9004" in str(exc) and "error_param" in str(exc)
    assert "wrong-token" not in str(exc)


def test_404_unknown_task(emu: Emulator, tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="404 .*SMS.1801") as info:
        client_for(emu, tmp_path).post_results("other", [entry()])
    assert info.value.status == 404 and info.value.error_code == "SMS.1801"


def test_read_timeout_and_dropped_connection(emu: Emulator, tmp_path: Path) -> None:
    client = client_for(emu, tmp_path, upload={"read_timeout": 0.3})
    emu.stall_next(1, seconds=3)
    with pytest.raises(UploadError, match="no answer .* within 0.3s") as info:
        client.post_results("T", [entry()])
    assert info.value.status is None
    emu.drop_next(1)
    with pytest.raises(UploadError, match="cannot reach"):
        client.post_results("T", [entry()])
    client.post_results("T", [entry()])  # and it recovers


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = open_client(make_config(tmp_path, f"http://127.0.0.1:{port}"))
    with pytest.raises(UploadError, match="cannot reach") as info:
        client.post_results("T", [entry()])
    assert info.value.status is None


def iam_login(tmp_path: Path, emu: Emulator, password: str) -> AgentConfig:
    """A config that logs in to the emulator's IAM as alice with `password`."""
    pw = tmp_path / "pw"
    pw.write_text(password)
    iam = {"endpoint": emu.url, "domain": "dom", "user": "alice", "password_file": str(pw)}
    return make_config(tmp_path / "state", emu.url, auth={"token": None, "iam": iam})


def test_iam_login_and_renewal_on_401(tmp_path: Path) -> None:
    with Emulator(task_ids=["T"], token=None, iam_users={"alice": "iam-pa55word"}) as emu:
        config = iam_login(tmp_path, emu, "iam-pa55word\n")
        client = open_client(config)
        client.post_results("T", [entry("/a")])
        assert emu.logins == 1
        emu.expire_tokens()  # SMS now answers 401 APIGW.0301 to the cached token
        client.post_results("T", [entry("/b")])
        assert emu.logins == 2
        assert [s.status for s in emu.requests] == [201, 200, 401, 201, 200]
        # A fresh client (a restart) reuses the cached token without logging in.
        open_client(config).post_results("T", [entry("/c")])
        assert emu.logins == 2
        assert len(emu.received) == 3


def test_iam_wrong_password(tmp_path: Path) -> None:
    with Emulator(task_ids=["T"], token=None, iam_users={"alice": "right"}) as emu:
        client = open_client(iam_login(tmp_path, emu, "pw-Xy7-guess"))
        with pytest.raises(AuthError, match="IAM refused the login of user alice") as info:
            client.post_results("T", [entry()])
        assert "pw-Xy7" not in str(info.value)


def test_ak_sk_signed_requests(tmp_path: Path) -> None:
    sk = tmp_path / "sk"
    sk.write_text("the-secret-key\n")
    with Emulator(task_ids=["T"], token=None, ak="AK1", sk="the-secret-key") as emu:
        auth = {"token": None, "ak": "AK1", "sk_file": str(sk), "project_id": "p1"}
        client = open_client(make_config(tmp_path, emu.url, auth=auth))
        client.post_results("T", [entry()])
        assert client.get_results("T")[0].entries == (entry(),)
        seen = emu.requests[0]
        assert "X-Auth-Token" not in seen.headers and seen.headers["X-Project-Id"] == "p1"
        sk.write_text("a-wrong-key")
        with pytest.raises(AuthError, match="AK/SK .*check auth.ak"):
            client.post_results("T", [entry()])
        assert len(emu.requests) == 3  # a rejected signature is not retried at once


@pytest.mark.parametrize(("offset", "side"), [(7200 + 125, "behind"), (-(3 * 86400), "ahead of")])
def test_expired_signature_says_how_far_the_clock_is_off(
    tmp_path: Path, offset: float, side: str
) -> None:
    sk = tmp_path / "sk"
    sk.write_text("the-secret-key\n")
    sms_clock = lambda: time.time() + offset  # noqa: E731
    with Emulator(token=None, ak="AK1", sk="the-secret-key", clock=sms_clock) as emu:
        auth = {"token": None, "ak": "AK1", "sk_file": str(sk)}
        client = open_client(make_config(tmp_path, emu.url, auth=auth))
        with pytest.raises(AuthError) as caught:
            client.get_results("T")
    message = str(caught.value)
    assert "signature expired" in message and f" {side} SMS's (its Date: " in message
    hours = "2 h 2 min" if offset > 0 else "3 d 0 h 0 min"
    assert f"this host's clock is {hours}" in message, message
    assert "the-secret-key" not in message


def test_get_results_both_formats(tmp_path: Path) -> None:
    for fmt in ("objects", "strings"):
        with Emulator(task_ids=["T"], token=TOKEN, result_format=fmt) as emu:
            client = client_for(emu, tmp_path)
            client.post_results("T", [entry("/a", 1), entry("/b", 2)])
            remote = client.get_results("T")
            assert len(remote) == 1 and remote[0].check_result == "success"
            assert remote[0].entries == (entry("/a", 1), entry("/b", 2))


def test_open_client_needs_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="endpoint is not set"):
        open_client(make_config(tmp_path, None))


def test_plain_http_to_another_host_is_refused_by_config() -> None:
    with pytest.raises(ConfigError, match="plain HTTP"):
        parse_config({"endpoint": "http://sms.example.com", "task_id": "T"})


def test_session_verifies_tls_and_uses_ca_bundle(tmp_path: Path) -> None:
    from agent.sms.client import make_session

    assert make_session().verify is True
    (tmp_path / "ca.pem").write_text("")
    assert make_session(tmp_path / "ca.pem").verify == str(tmp_path / "ca.pem")


def test_iam_endpoint_over_plain_http_is_refused(tmp_path: Path) -> None:
    iam = {"endpoint": "http://iam.example.com", "domain": "d", "user": "u", "password_file": "/p"}
    with pytest.raises(ConfigError, match="auth.iam.endpoint.*plain HTTP"):
        make_config(tmp_path, "https://sms.example.com", auth={"iam": iam})


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, "https://sms.example.com", tls={"ca_bundle": "/nonexistent.pem"})
    with pytest.raises(ConfigError, match="tls.ca_bundle"):
        open_client(config)


def test_netrc_never_replaces_our_authorization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    sk = tmp_path / "sk"
    sk.write_text("k")
    with Emulator(task_ids=["T"], token=None, ak="AK1", sk="k") as emu:
        auth = {"token": None, "ak": "AK1", "sk_file": str(sk)}
        open_client(make_config(tmp_path, emu.url, auth=auth)).post_results("T", [entry()])
        assert emu.requests[0].headers["Authorization"].startswith("SDK-HMAC-SHA256 ")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not available")
    d = tmp_path_factory.mktemp("tls")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "1", "-subj", "/CN=smsagent test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([openssl, *step], cwd=d, check=True, capture_output=True)
    return {"ca": d / "ca.pem", "cert": d / "srv.pem", "key": d / "srv.key"}


def test_tls_is_verified_and_ca_bundle_is_used(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    with Emulator(task_ids=["T"], token=TOKEN, ssl_context=context) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        with pytest.raises(
            UploadError, match="certificate of .* could not be verified .*tls.ca_bundle"
        ):
            open_client(make_config(tmp_path, emu.url)).post_results("T", [entry()])
        assert emu.received == []
        trusted = make_config(tmp_path, emu.url, tls={"ca_bundle": str(tls_files["ca"])})
        open_client(trusted).post_results("T", [entry()])
        assert len(emu.received) == 1


@pytest.mark.parametrize("path", ["", "/prefix"])
def test_https_to_a_plain_http_port_says_the_server_did_not_speak_tls(
    tmp_path: Path, path: str
) -> None:
    with Emulator(task_ids=["T"], token=TOKEN) as emu:
        endpoint = emu.url.replace("http://", "https://") + path
        with pytest.raises(UploadError) as caught:
            open_client(make_config(tmp_path, endpoint)).post_results("T", [entry()])
    message = str(caught.value)
    assert "did not speak TLS" in message and "http://" in message
    assert "certificate" not in message and "ca_bundle" not in message
    assert message.count("(") == message.count(")"), message


def test_iam_renews_once_only(tmp_path: Path) -> None:
    with Emulator(task_ids=["T"], token=None, iam_users={"alice": "pw"}) as emu:
        client = open_client(iam_login(tmp_path, emu, "pw"))
        emu.fail_next(3, status=401)
        with pytest.raises(AuthError, match="freshly issued token was refused too"):
            client.post_results("T", [entry()])
        assert emu.logins == 2  # the first login, one renewal, and no loop
        assert [s.status for s in emu.requests] == [201, 401, 201, 401]
