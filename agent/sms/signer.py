"""The SDK-HMAC-SHA256 signature of Huawei Cloud's API gateway (AK/SK), computed as the
official SDK's Signer does, and checked again on the receiving side (the emulator). Pure: no
clock and no HTTP of its own."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..secret import Secret

UTC = timezone.utc  # datetime.UTC is 3.11

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """Each segment percent-encoded, always ending with '/', as Huawei's SDK signer does."""
    encoded = "/".join(_encode(part) for part in unquote(path or "/").split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs)


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], signed: list[str], body: bytes
) -> str:
    parts = urlsplit(url)
    lowered = {k.lower(): str(v).strip() for k, v in headers.items()}
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in signed)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            canonical_headers,
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(sk: str, text: str) -> str:
    return hmac.new(sk.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    ak: str,
    sk: Secret,
    now: datetime,
) -> dict[str, str]:
    """The headers plus Host, X-Sdk-Date and the SDK-HMAC-SHA256 Authorization header."""
    out = dict(headers)
    lower = {k.lower() for k in out}
    if "host" not in lower:
        out["Host"] = urlsplit(url).netloc.rpartition("@")[2]
    if "x-sdk-date" not in lower:
        out["X-Sdk-Date"] = now.astimezone(UTC).strftime(SDK_DATE_FORMAT)
    sdk_date = next(v for k, v in out.items() if k.lower() == "x-sdk-date")
    signed = sorted(k.lower() for k in out if "_" not in k and k.lower() != "authorization")
    canonical = canonical_request(method, url, out, signed, body)
    sig = signature(sk.reveal(), string_to_sign(canonical, sdk_date))
    out["Authorization"] = (
        f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed)}, Signature={sig}"
    )
    return out


def parse_authorization(value: str) -> dict[str, str] | None:
    """`SDK-HMAC-SHA256 Access=.., SignedHeaders=.., Signature=..` as a dict; None if malformed."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        return None
    fields = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        fields[key] = val
    return fields if {"Access", "SignedHeaders", "Signature"} <= fields.keys() else None


def verify_signature(
    method: str, url: str, headers: Mapping[str, str], body: bytes, sk: Secret
) -> bool:
    """Recompute the signature of a received request (used by the emulator)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    fields = parse_authorization(lowered.get("authorization", ""))
    if fields is None or "x-sdk-date" not in lowered:
        return False
    signed = fields["SignedHeaders"].split(";")
    if any(name not in lowered for name in signed):
        return False
    canonical = canonical_request(method, url, lowered, signed, body)
    expected = signature(sk.reveal(), string_to_sign(canonical, lowered["x-sdk-date"]))
    return hmac.compare_digest(expected, fields["Signature"])
