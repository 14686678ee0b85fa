"""The emulator's checks before SMS records anything: the POST contract, the gateway's
signature dates, and IAM's password login."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from email.message import Message

import pytest

from agent.secret import Secret
from agent.sms.emulator import Emulator
from agent.sms.emulator_gateway import expired_signature, iam_login, validate_post
from agent.sms.signer import sign_request

from .sms_helpers import entry
from .test_emulator import GOOD as GOOD_BODY

GOOD = entry("/var", 3).to_api()


@pytest.mark.parametrize(("body", "problem"), [
    (b"{", "the request body is not JSON"),
    (b"[]", "consistency_result is missing or not a list"),
    (json.dumps({"consistency_result": [GOOD] * 31}).encode(), "31 items, at most 30"),
    (json.dumps({"consistency_result": [3]}).encode(), "consistency_result[0] is not an object"),
    (json.dumps({"consistency_result": [{**GOOD, "dir_check": "/" + "a" * 1024}]}).encode(),
     "consistency_result[0].dir_check is missing or longer than 1024"),
    (json.dumps({"consistency_result": [{**GOOD, "num_total_files": True}]}).encode(),
     "consistency_result[0].num_total_files is missing or not an integer"),
    (json.dumps({"consistency_result": [{**GOOD, "num_target_more_files": -1}]}).encode(),
     "consistency_result[0].num_target_more_files is out of range 0 to 1000000"),
])  # fmt: skip
def test_a_post_outside_the_contract_is_refused_with_its_reason(body: bytes, problem: str) -> None:
    entries, found = validate_post(body)
    assert entries == [] and found is not None and problem in found


def test_a_post_at_the_limits_is_accepted() -> None:
    body = {"consistency_result": [{**GOOD, "dir_check": f"/d{i}"} for i in range(30)]}
    entries, problem = validate_post(json.dumps(body).encode())
    assert problem is None and len(entries) == 30


class State:
    """The part of the emulator's state these checks read."""

    def __init__(self, now: float) -> None:
        self.clock = lambda: now
        self.max_skew = 15 * 60
        self.lock = threading.Lock()
        self.iam_users = {"alice": "right"}
        self.iam_domain = "dom"
        self.iam_tokens: dict[str, float] = {}
        self.logins = 0
        self.token_ttl = 3600.0


def headers(**values: str) -> Message:
    message = Message()
    for name, value in values.items():
        message[name.replace("_", "-")] = value
    return message


def test_a_signature_dated_too_far_from_the_gateway_clock_has_expired() -> None:
    state = State(now=1_800_000_000)  # 2027-01-15T08:00:00Z
    assert expired_signature(state, headers(X_Sdk_Date="20270115T080500Z")) is None  # 5 min
    status, body = expired_signature(state, headers(X_Sdk_Date="20270115T090000Z")) or (0, {})
    assert status == 401 and body["error_code"] == "APIGW.0301"
    assert "signature expired, signature time:20270115T090000Z" in body["error_msg"]
    assert expired_signature(state, headers(X_Sdk_Date="yesterday")) is None  # fails elsewhere


def test_iam_login() -> None:
    state = State(now=0)

    def login(password: str, domain: str = "dom") -> tuple[int, dict, dict]:
        user = {"name": "alice", "password": password, "domain": {"name": domain}}
        body = {"auth": {"identity": {"password": {"user": user}}}}
        return iam_login(state, json.dumps(body).encode())  # type: ignore[arg-type]

    status, body, sent = login("right")
    assert status == 201 and sent["X-Subject-Token"] in state.iam_tokens
    assert state.logins == 1 and body["token"]["expires_at"].endswith("Z")
    assert login("wrong")[0] == 401 and login("right", domain="other")[0] == 401
    assert iam_login(state, b"{}")[0] == 400  # type: ignore[arg-type]
    assert state.logins == 1


@pytest.mark.parametrize(
    ("skew", "expired"), [(-16 * 60, True), (16 * 60, True), (-14 * 60, False), (14 * 60, False)]
)
def test_signature_dated_more_than_15_minutes_away_is_refused(skew: float, expired: bool) -> None:
    with Emulator(token=None, ak="AK1", sk="sk") as emu:
        url = emu.url + "/v3/tasks/T/consistency-result"
        moment = datetime.now(timezone.utc) + timedelta(seconds=skew)
        body = json.dumps(GOOD_BODY).encode()
        headers = sign_request(
            "POST",
            url,
            {"Content-Type": "application/json"},
            body,
            ak="AK1",
            sk=Secret("sk"),
            now=moment,
        )
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, data = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, data = exc.code, json.loads(exc.read())
    if not expired:
        assert (status, data) == (200, {})
        return
    assert status == 401 and set(data) == {"error_msg", "error_code", "request_id"}
    assert data["error_code"] == "APIGW.0301"
    assert data["error_msg"].startswith(
        "Incorrect IAM authentication information: signature expired"
    )
    assert "signature time:" + moment.strftime("%Y%m%dT%H%M%SZ") in data["error_msg"]
