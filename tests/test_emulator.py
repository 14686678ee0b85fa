"""The emulator keeps the documented contract, so tests against it mean something."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent.sms.emulator import Emulator

from .sms_helpers import entry

GOOD = {"consistency_result": [entry("/var", 3).to_api()]}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(task_ids=["T"], token="TOK", iam_users={"u": "pw"}, token_ttl=0.3) as server:
        yield server


def call(
    url: str, method: str = "POST", body: Any = GOOD, token: str | None = "TOK"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    request.add_header("Content-Type", "application/json;charset=UTF-8")
    if token is not None:
        request.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_post_then_get(emu: Emulator) -> None:
    url = emu.url + "/v3/tasks/T/consistency-result"
    assert call(url)[:2] == (200, {})
    status, data, _ = call(url, "GET")
    assert status == 200 and data["task_id"] == "T"
    # The documented form (the SDK's list[str]): each item is a JSON object in a string.
    assert all(isinstance(item, str) for item in data["result_list"])
    item = json.loads(data["result_list"][0])
    assert item["consistency_result"] == GOOD["consistency_result"]
    assert {"finished_time", "check_result"} <= item.keys()
    assert emu.received == [GOOD["consistency_result"]]
    assert emu.results("T") == {"/var": entry("/var", 3).to_api()}


def _with(**change: Any) -> dict[str, Any]:
    return {"consistency_result": [{**entry().to_api(), **change}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        ({}, "missing"),
        ({"consistency_result": {}}, "not a list"),
        ({"consistency_result": [entry(f"/{i}").to_api() for i in range(31)]}, "at most 30"),
        ({"consistency_result": ["x"]}, "not an object"),
        (_with(dir_check="/" + "a" * 1024), "dir_check"),
        (_with(num_total_files=-1), "out of range"),
        (_with(num_different_files=1_000_001), "out of range"),
        (_with(num_target_miss_files="3"), "not an integer"),
        (_with(num_target_more_files=True), "not an integer"),
        ({"consistency_result": [{"dir_check": "/a"}]}, "num_total_files is missing"),
    ],
)
def test_bad_bodies_get_400(emu: Emulator, body: Any, message: str) -> None:
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", body=body)
    assert status == 400 and data["error_code"].startswith("SMS.")
    assert message in data["error_msg"]
    assert emu.received == []


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_gets_documented_403(emu: Emulator, token: str | None) -> None:
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", token=token)
    assert status == 403
    assert set(data) == {
        "error_code",
        "error_msg",
        "encoded_authorization_message",
        "error_param",
        "details",
    }
    assert data["details"][0]["error_code"] == data["error_code"] == "SMS.9004"


def test_unknown_task_and_path_get_404(emu: Emulator) -> None:
    assert call(emu.url + "/v3/tasks/nope/consistency-result")[0] == 404
    assert call(emu.url + "/v3/other")[0] == 404


def test_fail_next_with_retry_after(emu: Emulator) -> None:
    emu.fail_next(2, status=503, retry_after=12)
    url = emu.url + "/v3/tasks/T/consistency-result"
    for _ in range(2):
        status, data, headers = call(url)
        assert status == 503 and headers["Retry-After"] == "12" and "error_code" in data
    assert call(url)[0] == 200


def test_stall_then_answer(emu: Emulator) -> None:
    emu.stall_next(1, seconds=0.2)
    started = time.time()
    assert call(emu.url + "/v3/tasks/T/consistency-result")[0] == 200
    assert time.time() - started >= 0.2


def test_iam_tokens_expire(emu: Emulator) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "u", "password": "pw", "domain": {"name": "d"}}},
            },
            "scope": {"domain": {"name": "d"}},
        }
    }
    status, data, headers = call(emu.url + "/v3/auth/tokens", body=body, token=None)
    assert status == 201 and data["token"]["expires_at"].endswith("Z")
    token = headers["X-Subject-Token"]
    assert call(emu.url + "/v3/tasks/T/consistency-result", token=token)[0] == 200
    time.sleep(0.35)
    status, data, _ = call(emu.url + "/v3/tasks/T/consistency-result", token=token)
    assert status == 401 and data["error_code"] == "APIGW.0301"
    body["auth"]["identity"]["password"]["user"]["password"] = "nope"  # type: ignore[index]
    assert call(emu.url + "/v3/auth/tokens", body=body, token=None)[0] == 401


def test_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Emulator("0.0.0.0")
