"""Secrets: the value never shows in repr, str, f-strings or a containing dataclass."""

from __future__ import annotations

from agent.config import parse_config
from agent.secret import Secret


def test_a_secret_is_masked_everywhere_but_reveal() -> None:
    secret = Secret("s3cret-value")
    assert secret.reveal() == "s3cret-value"
    logged = "%s" % secret  # noqa: UP031 - how logging formats its arguments
    for shown in (repr(secret), str(secret), f"{secret}", logged, repr([secret])):
        assert "s3cret-value" not in shown and "****" in shown
    config = parse_config({"auth": {"token": "s3cret-value"}})
    assert "s3cret-value" not in repr(config) and "s3cret-value" not in str(config.auth)


def test_secrets_compare_by_value_and_empty_is_false() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Secret("a") != "a"  # never equal to the plain text it hides
    assert len({Secret("a"), Secret("a")}) == 1
    assert not Secret("") and Secret("x")
