"""Tokens and session cookies without a server: parsing, expiry, revocation, forgery."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pipeline.errors import ConfigError
from pipeline.http.auth import Authenticator, parse_tokens
from pipeline.settings import load


def auth(tokens: str, secret: str | None = "k" * 32, ttl: int = 60) -> Authenticator:
    return Authenticator(load(api_tokens=SecretStr(tokens), api_session_ttl_s=ttl,
                              api_session_secret=SecretStr(secret) if secret else None))


@pytest.mark.parametrize("raw", ["", " , ", "acme", "acme:", ":token-without-tenant",
                                 "acme:short", "a" * 129 + ":long-enough-token"])
def test_malformed_token_lists_are_config_errors(raw: str) -> None:
    with pytest.raises(ConfigError, match="SONIC_API_TOKENS"):
        parse_tokens(raw)


def test_tokens_map_to_tenants_and_star_is_an_operator() -> None:
    a = auth("acme:tok-acme-1234,ops:tok-ops-12345:with-colon,*:tok-operator-1")
    assert a.from_token("tok-acme-1234").tenant == "acme"
    assert a.from_token("tok-ops-12345:with-colon").tenant == "ops"
    assert a.from_token("tok-operator-1").operator
    for wrong in ("tok-acme-123", "tok-acme-12345", "", "TOK-ACME-1234"):
        assert a.from_token(wrong) is None


def test_a_cookie_expires_and_dies_with_its_token() -> None:
    a = auth("acme:tok-acme-1234,globex:tok-globex-12")
    who = a.from_token("tok-acme-1234")
    cookie = a.cookie_for(who, now=1000.0)
    assert a.from_cookie(cookie, now=1059.0) == who
    assert a.from_cookie(cookie, now=1061.0) is None
    # The same signing key, the token gone from the settings: the cookie is dead.
    rotated = auth("acme:tok-acme-new-1,globex:tok-globex-12")
    assert rotated.from_cookie(cookie, now=1001.0) is None
    # Another key (another replica without SONIC_API_SESSION_SECRET): not ours.
    assert auth("acme:tok-acme-1234", secret=None).from_cookie(cookie, now=1001.0) is None


def test_a_cookie_cannot_be_edited_to_another_tenant() -> None:
    import base64
    import json

    a = auth("acme:tok-acme-1234,globex:tok-globex-12")
    cookie = a.cookie_for(a.from_token("tok-acme-1234"), now=1000.0)
    payload, _, signature = cookie.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"t": "globex"}, {"t": "*"}, {"exp": 10**12}):
        edited = base64.urlsafe_b64encode(json.dumps({**claims, **change}).encode())
        assert a.from_cookie(edited.decode().rstrip("=") + "." + signature, now=1001.0) is None
