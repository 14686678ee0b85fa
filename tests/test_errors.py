"""The exception tree: one root, a kind per failure shown as `smsagent: Kind: message`."""

from __future__ import annotations

import pytest

from agent.errors import (
    AgentError,
    AuthError,
    ConfigError,
    StateError,
    TargetError,
    UploadError,
    ValidationError,
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConfigError("bad"), "Config error"),
        (TargetError("bad"), "Target error"),
        (UploadError("bad"), "Upload error"),
        (ValidationError("bad"), "Invalid result"),
        (StateError("bad"), "State error"),
        (AuthError("bad"), "Auth error"),
    ],
)
def test_every_error_is_an_agent_error_with_its_kind(error: AgentError, kind: str) -> None:
    assert isinstance(error, AgentError)
    assert error.kind == kind
    assert str(error) == "bad"


def test_a_config_error_names_its_file_and_key() -> None:
    assert str(ConfigError("must be a number", source="agent.yaml", key="limits.workers")) == (
        "agent.yaml: limits.workers: must be a number"
    )
    assert str(ConfigError("file not found", source="/etc/x.yaml")) == "/etc/x.yaml: file not found"
    assert str(ConfigError("no directories")) == "no directories"


def test_an_upload_error_keeps_what_the_server_said() -> None:
    error = AuthError("refused", url="https://sms/x", status=401, error_code="SMS.0101",
                      retry_after=3.0)  # fmt: skip
    assert isinstance(error, UploadError)  # an auth failure keeps results queued like any other
    assert (error.url, error.status, error.error_code, error.retry_after) == (
        "https://sms/x", 401, "SMS.0101", 3.0)  # fmt: skip
