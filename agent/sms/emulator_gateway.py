"""What the emulator checks before SMS records anything: the API gateway's authentication (a
token, IAM's tokens, an AK/SK signature and its X-Sdk-Date), IAM's password login, and the
documented contract of a POST consistency-result."""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from email.message import Message
from typing import TYPE_CHECKING, Any

from ..model import COUNT_FIELDS, MAX_COUNT, MAX_DIR_CHECK, MAX_ENTRIES_PER_REQUEST
from ..secret import Secret
from .signer import SDK_DATE_FORMAT, parse_authorization, verify_signature

if TYPE_CHECKING:
    from .emulator import _State

UTC = timezone.utc  # datetime.UTC is 3.11


def check_auth(
    st: _State, method: str, path: str, headers: Message, body: bytes
) -> tuple[int, dict[str, Any]] | None:
    """None when the request carries a valid token or AK/SK signature; else the gateway's
    answer (401 APIGW.0301, or SMS's 403 SMS.9004 when nothing usable was sent)."""
    authorization = headers.get("Authorization")
    if authorization and st.ak and st.sk:
        expired = expired_signature(st, headers)
        if expired is not None:
            return expired
        fields = parse_authorization(authorization)
        url = f"http://{headers.get('Host', '')}{path}"
        ok = (
            fields is not None
            and fields["Access"] == st.ak
            and verify_signature(method, url, dict(headers.items()), body, Secret(st.sk))
        )
        if ok:
            return None
        return gateway_error("verify aksk signature fail")
    token = headers.get("X-Auth-Token")
    if token:
        with st.lock:
            expires = st.iam_tokens.get(token)
        if expires is not None:
            if expires > time.time():
                return None
            return gateway_error("token expired")
        if st.token is not None and secrets.compare_digest(token, st.token):
            return None
    message = "Authentication failed: missing or invalid X-Auth-Token."
    return 403, {
        "error_code": "SMS.9004",
        "error_msg": message,
        "encoded_authorization_message": "",
        "error_param": ["X-Auth-Token"],
        "details": [{"error_code": "SMS.9004", "error_msg": message}],
    }


def expired_signature(st: _State, headers: Message) -> tuple[int, dict[str, Any]] | None:
    """The gateway's answer when X-Sdk-Date is further than max_skew from its clock."""
    stamp = headers.get("X-Sdk-Date", "")
    try:
        signed = datetime.strptime(stamp, SDK_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None  # no usable date: the signature check fails instead
    now = st.clock()
    if abs(now - signed) <= st.max_skew:
        return None
    server = datetime.fromtimestamp(now, UTC).strftime(SDK_DATE_FORMAT)
    return gateway_error(f"signature expired, signature time:{stamp},server time:{server}")


def iam_login(st: _State, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST /v3/auth/tokens as IAM answers it: (status, body, headers)."""
    try:
        user = json.loads(body)["auth"]["identity"]["password"]["user"]
        name, password, domain = user["name"], user["password"], user["domain"]["name"]
    except (ValueError, KeyError, TypeError):
        return 400, {"error": {"code": 400, "message": "malformed auth body"}}, {}
    good = st.iam_users.get(name)
    if (
        good is None
        or not secrets.compare_digest(good, password)
        or (st.iam_domain is not None and domain != st.iam_domain)
    ):
        wrong = {"error": {"code": 401, "message": "The username or password is wrong."}}
        return 401, wrong, {}
    token = "MII" + secrets.token_urlsafe(48)
    expires = time.time() + st.token_ttl
    with st.lock:
        st.iam_tokens[token] = expires
        st.logins += 1
    stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return 201, {"token": {"expires_at": stamp}}, {"X-Subject-Token": token}


def gateway_error(reason: str) -> tuple[int, dict[str, Any]]:
    """401 in the API gateway's documented shape (error_msg, error_code, request_id)."""
    return 401, {
        "error_msg": f"Incorrect IAM authentication information: {reason}",
        "error_code": "APIGW.0301",
        "request_id": secrets.token_hex(16),
    }


def validate_post(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """The documented request contract; the message says what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        return [], "the request body is not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("consistency_result"), list):
        return [], "consistency_result is missing or not a list"
    entries = data["consistency_result"]
    if len(entries) > MAX_ENTRIES_PER_REQUEST:
        most = MAX_ENTRIES_PER_REQUEST
        return [], f"consistency_result has {len(entries)} items, at most {most} are allowed"
    for index, entry in enumerate(entries):
        where = f"consistency_result[{index}]"
        if not isinstance(entry, dict):
            return [], f"{where} is not an object"
        dir_check = entry.get("dir_check")
        if not isinstance(dir_check, str) or len(dir_check) > MAX_DIR_CHECK:
            return [], f"{where}.dir_check is missing or longer than {MAX_DIR_CHECK}"
        for name in COUNT_FIELDS:
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int):
                return [], f"{where}.{name} is missing or not an integer"
            if not 0 <= value <= MAX_COUNT:
                return [], f"{where}.{name} is out of range 0 to {MAX_COUNT}"
    return entries, None
