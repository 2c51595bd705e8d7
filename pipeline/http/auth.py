"""Who is calling: bearer tokens per tenant, and the web page's session cookie.

``SONIC_API_TOKENS`` is ``tenantA:token1,tenantB:token2`` (a token may hold ``:``; the
tenant ``*`` is an operator who sees every tenant). A request carries
``Authorization: Bearer <token>``; its tenant is the token's, and a tenant sees and
creates only its own jobs.

The page cannot put a header on an ``EventSource`` or a ``<video src>``, so it trades its
token for a cookie (``POST /v1/session`` with the bearer header): ``sonic_session``, an
HMAC-SHA256-signed ``{tenant, token id, expiry}``, ``HttpOnly``, ``SameSite=Strict``,
``Path=/v1``, ``Secure`` over https. The cookie is honoured on GET and HEAD only, so a
cross-site form can never create a job with it (writes need the header); it dies with its
expiry (``SONIC_API_SESSION_TTL_S``) or as soon as its token is removed from the settings
(the token id, a SHA-256 prefix of the token, must still be configured).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.errors import ConfigError
from pipeline.settings import Settings

from .errors import ApiError

COOKIE = "sonic_session"
OPERATOR = "*"
_SAFE = {"GET", "HEAD"}


@dataclass(frozen=True)
class Principal:
    """The caller: ``tenant`` (None for an operator, who sees every tenant)."""

    tenant: str | None
    token_id: str

    @property
    def operator(self) -> bool:
        return self.tenant is None


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def parse_tokens(raw: str) -> dict[str, str]:
    """``tenant:token,...`` -> {token: tenant}; raises ConfigError when malformed."""
    found: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        tenant, sep, token = item.partition(":")
        tenant, token = tenant.strip(), token.strip()
        if not sep or not tenant or len(token) < 8 or len(tenant) > 128:
            raise ConfigError("SONIC_API_TOKENS is tenant:token[,tenant:token...] with tokens "
                              "of 8 characters or more")
        found[token] = tenant
    if not found:
        raise ConfigError("SONIC_API_TOKENS is empty: the HTTP service needs at least one "
                          "tenant:token")
    return found


class Authenticator:
    """Checks tokens and signs/verifies session cookies (built once per app)."""

    def __init__(self, settings: Settings) -> None:
        if settings.api_tokens is None:
            raise ConfigError("SONIC_API_TOKENS is not set: the HTTP service needs at least "
                              "one tenant:token")
        self._tokens = parse_tokens(settings.api_tokens.get_secret_value())
        self._ids = {token_id(t): tenant for t, tenant in self._tokens.items()}
        secret = settings.api_session_secret
        self._key = (secret.get_secret_value().encode() if secret is not None
                     else secrets.token_bytes(32))
        self.ttl_s = settings.api_session_ttl_s

    def from_token(self, token: str) -> Principal | None:
        match = None
        for known, tenant in self._tokens.items():  # every one compared: constant time
            if hmac.compare_digest(known.encode(), token.encode()):
                match = tenant
        if match is None:
            return None
        return Principal(None if match == OPERATOR else match, token_id(token))

    def cookie_for(self, who: Principal, now: float | None = None) -> str:
        claims = {"t": who.tenant or OPERATOR, "k": who.token_id,
                  "exp": int((now or time.time()) + self.ttl_s)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def from_cookie(self, value: str, now: float | None = None) -> Principal | None:
        payload, _, signature = value.partition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            tenant, kid, exp = str(claims["t"]), str(claims["k"]), float(claims["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if exp < (now or time.time()) or self._ids.get(kid) != tenant:
            return None
        return Principal(None if tenant == OPERATOR else tenant, kid)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def authenticate(self, request: Request) -> Principal:
        """The request's principal, or ApiError 401 ``auth.unauthorized``."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            who = self.from_token(token.strip()) if scheme.lower() == "bearer" else None
            if who is None:
                raise _unauthorized("the bearer token is not valid")
            return who
        cookie = request.cookies.get(COOKIE)
        if cookie and request.method in _SAFE:
            who = self.from_cookie(cookie)
            if who is not None:
                return who
            raise _unauthorized("the session has expired or is not valid; sign in again")
        raise _unauthorized("send Authorization: Bearer <token>")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "auth.unauthorized", message,
                    **{"WWW-Authenticate": 'Bearer realm="sonic-pipeline"'})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: Declares the scheme in the OpenAPI schema; the check itself is :meth:`authenticate`.
BEARER = HTTPBearer(auto_error=False, description="a tenant's token (SONIC_API_TOKENS)")


def principal(request: Request, _: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(BEARER)] = None) -> Principal:
    """FastAPI dependency: the caller of this request (the app's Authenticator)."""
    auth: Authenticator = request.app.state.resources.auth
    return auth.authenticate(request)
