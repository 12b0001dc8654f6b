"""The server's one bearer-token check, for its gRPC services, REST and metrics."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from runtime.errors import UnauthenticatedError


def check_bearer(values: Sequence[str | bytes], token: bytes) -> None:
    """``Authorization`` values carrying exactly one bearer ``token`` (RFC 6750; the
    scheme's case does not matter, RFC 7235), compared in constant time; else
    UnauthenticatedError. With two values, a proxy that checks the first and this
    server would disagree about who is calling. Bytes that are no text are a wrong
    token, never an error of the server's."""
    if len(values) > 1:
        raise UnauthenticatedError(
            f"{len(values)} authorization headers; send exactly one bearer token"
        )
    value = values[0] if values else b""
    try:
        given = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    except UnicodeError:
        given = b""
    scheme, _, credentials = bytes(given).strip().partition(b" ")
    matches = hmac.compare_digest(credentials.strip(), token)
    if scheme.lower() != b"bearer" or not matches:
        raise UnauthenticatedError("missing or wrong bearer token")
