"""API Gateway's Cognito user pool authorizer: verify a caller's ID token as AWS does, before the function runs.

The token comes from the route's identity source (the Authorization header, with or without "Bearer "). It
must be an RS256 JWT signed by a key of the pool's JWKS (fetched once from the pool's
/.well-known/jwks.json, which moto's Cognito serves with the keys it signs with), issued by the pool
(`iss`; like API Gateway, any app client of the pool will do: the authorizer names pools, not clients), an
ID token (`token_use`: no authorization scopes are configured), and not expired. Anything else answers 401
{"message":"Unauthorized"}, or {"message":"The incoming token has expired"}, without invoking the function.
The verified claims reach the function as requestContext.authorizer.claims, every value a string, as API
Gateway passes them.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.request
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

UNAUTHORIZED = (401, b'{"message":"Unauthorized"}')
EXPIRED = (401, b'{"message":"The incoming token has expired"}')


class PoolAuthorizer:
    def __init__(self, pool_arn: str, endpoint: str, client_ids: set[str], header: str = "Authorization") -> None:
        # arn:aws:cognito-idp:<region>:<account>:userpool/<pool id>
        self.region = pool_arn.split(":")[3]
        self.pool_id = pool_arn.rsplit("/", 1)[-1]
        self.issuer = f"https://cognito-idp.{self.region}.amazonaws.com/{self.pool_id}"
        self.jwks_url = f"{endpoint}/{self.pool_id}/.well-known/jwks.json"
        self.client_ids = client_ids
        self.header = header
        self._keys: KeySet | None = None
        self._lock = threading.Lock()

    def keys(self) -> KeySet:
        with self._lock:
            if self._keys is None:
                with urllib.request.urlopen(self.jwks_url, timeout=10) as response:  # noqa: S310 - 127.0.0.1
                    self._keys = KeySet.import_key_set(json.loads(response.read()))
            return self._keys

    def authorize(self, headers: dict[str, str]) -> tuple[dict[str, Any] | None, tuple[int, bytes] | None]:
        """The authorizer context for a request, or API Gateway's refusal."""
        value = next((v for k, v in headers.items() if k.lower() == self.header.lower()), "").strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not value:
            return None, UNAUTHORIZED
        try:
            token = jwt.decode(value, self.keys(), algorithms=["RS256"])
        except (JoseError, ValueError):
            return None, UNAUTHORIZED
        claims = token.claims
        if claims.get("iss") != self.issuer or claims.get("token_use") != "id" or not claims.get("aud"):
            return None, UNAUTHORIZED
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= time.time():
            return None, EXPIRED
        return {"claims": {k: _as_string(k, v) for k, v in claims.items()}}, None


def _as_string(name: str, value: Any) -> str:
    if name in ("exp", "iat", "auth_time") and isinstance(value, int | float):
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(value))  # API Gateway's form
    return value if isinstance(value, str) else json.dumps(value)


@functools.cache
def one_signing_key() -> None:
    """moto's Cognito imports the one private key it signs every pool's tokens with (its jwks-private.json) again for
    each user pool it creates: ~0.25 CPU-s a pool (joserfc recovers the key's primes from its exponents, in Python),
    on every stack's boot. The key never changes, and signing does not change it: it is imported once here, and
    every pool signs with that one."""
    from types import SimpleNamespace

    from joserfc import jwk
    from moto.cognitoidp import models

    imported: dict[str, Any] = {}
    lock = threading.Lock()

    def import_key(value: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return jwk.RSAKey.import_key(value, *args, **kwargs)
        cache_key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        with lock:
            if cache_key not in imported:
                imported[cache_key] = jwk.RSAKey.import_key(value)
            return imported[cache_key]

    models.jwk = SimpleNamespace(RSAKey=SimpleNamespace(import_key=import_key))  # type: ignore[attr-defined]
