"""Who may call the reward server: loopback binds are open, any other bind needs the bearer token."""

from __future__ import annotations

import hmac

from app.network import is_loopback

TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def exposure_error(host: str, token: str) -> str | None:
    """Why serving on `host` with this token is refused (a reachable address without a token), or None."""
    if token or is_loopback(host):
        return None
    return (
        f"Refusing to serve rewards on {host} without a token: anyone who can reach it could use the scorer. Set "
        f"JRM_REWARD_TOKEN (e.g. from {TOKEN_HINT}) and send it as 'Authorization: Bearer <token>', or bind "
        "127.0.0.1."
    )


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True when the Authorization header is 'Bearer <token>'; compared in constant time."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
