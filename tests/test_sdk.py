"""The official Huawei Cloud SDK (huaweicloudsdksms) driven against the emulator: shapes match."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.sms.emulator import Emulator

sms = pytest.importorskip("huaweicloudsdksms.v3")
sdk_auth = pytest.importorskip("huaweicloudsdkcore.auth.credentials")
sdk_http = pytest.importorskip("huaweicloudsdkcore.http.http_config")
sdk_errors = pytest.importorskip("huaweicloudsdkcore.exceptions.exceptions")

AK, SK = "AKSDKTEST0123456789", "sdk-secret-key-0123456789abcdef"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    settings = {"CONSISTENCY_DIR": "/srv/a,/srv/b", "MIGRATE_EXCLUDE_DIR": "/srv/a/cache"}
    with Emulator(
        task_ids=["T"], token=None, ak=AK, sk=SK, settings=settings, migration_ip="10.0.0.8"
    ) as server:
        yield server


def client(url: str, sk: str = SK) -> Any:
    config = sdk_http.HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    config.retry_times = 0
    credentials = sdk_auth.BasicCredentials(AK, sk, "project-id-0")
    return (
        sms.SmsClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([url])
        .build()
    )


def test_sdk_updates_then_shows_consistency_results(emu: Emulator) -> None:
    sdk = client(emu.url)
    body = sms.SetConsistencyResultRequestBody(
        consistency_result=[
            sms.ConsistencyResult(
                dir_check="/srv/a",
                num_total_files=10,
                num_different_files=1,
                num_target_miss_files=2,
                num_target_more_files=3,
            )
        ]
    )
    answer = sdk.update_consistency_result(
        sms.UpdateConsistencyResultRequest(task_id="T", body=body)
    )
    assert answer.status_code == 200
    assert emu.results("T")["/srv/a"]["num_target_more_files"] == 3
    shown = sdk.show_consistency_result(sms.ShowConsistencyResultRequest(task_id="T"))
    assert shown.task_id == "T"
    # list[str] in the SDK's model: each item must be a JSON string, not a Python repr.
    (item,) = shown.result_list
    assert isinstance(item, str)
    decoded = json.loads(item)
    assert decoded["consistency_result"][0]["dir_check"] == "/srv/a"
    assert decoded["check_result"] == "success"


def test_sdk_shows_config_settings_whole_and_by_key(emu: Emulator) -> None:
    sdk = client(emu.url)
    every = sdk.show_config_setting(sms.ShowConfigSettingRequest(task_id="T"))
    assert every.task_id == "T" and every.migrate_type
    values = {c.config_key: c.config_value for c in every.configurations}
    assert values == {"CONSISTENCY_DIR": "/srv/a,/srv/b", "MIGRATE_EXCLUDE_DIR": "/srv/a/cache"}
    one = sdk.show_config_setting(
        sms.ShowConfigSettingRequest(task_id="T", config_key="CONSISTENCY_DIR")
    )
    assert [(c.config_key, c.config_value) for c in one.configurations] == [
        ("CONSISTENCY_DIR", "/srv/a,/srv/b")
    ]


def test_sdk_shows_the_task_addresses(emu: Emulator) -> None:
    emu.set_addresses("10.0.0.8", "192.168.0.8")
    task = client(emu.url).show_task(sms.ShowTaskRequest(task_id="T"))
    assert task.migration_ip == "10.0.0.8" and task.target_server.ip == "192.168.0.8"


def test_sdk_sees_the_gateway_error_shape(emu: Emulator) -> None:
    with pytest.raises(sdk_errors.ClientRequestException) as caught:
        client(emu.url, sk="wrong").show_consistency_result(
            sms.ShowConsistencyResultRequest(task_id="T")
        )
    assert caught.value.status_code == 401
    assert caught.value.error_code == "APIGW.0301"
    assert caught.value.request_id


def test_sdk_signature_dated_too_far_is_refused_as_expired() -> None:
    two_hours_ahead = lambda: time.time() + 7200  # noqa: E731 - the emulator's clock
    server = Emulator(task_ids=["T"], token=None, ak=AK, sk=SK, clock=two_hours_ahead)
    with server as emu, pytest.raises(sdk_errors.ClientRequestException) as caught:
        client(emu.url).show_config_setting(sms.ShowConfigSettingRequest(task_id="T"))
    assert caught.value.status_code == 401 and caught.value.error_code == "APIGW.0301"
    assert "signature expired" in caught.value.error_msg
