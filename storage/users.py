"""Users: scrypt password hashes, login, roles. Functions take the session and never commit.

A hash is stored as `scrypt$n$r$p$salt_b64$hash_b64`; the cost parameters travel with the hash, so raising
them later leaves old hashes verifiable. Passwords are never stored, logged or put in an error message.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import ROLES, User

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD_CHARS = 1024  # scrypt digests any length; a cap keeps one login request cheap
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCRYPT_MAXMEM = 64 * 1024 * 1024  # n=2**14, r=8 needs 16 MiB; room for stronger stored parameters


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_SCRYPT_MAXMEM)


def hash_password(password: str) -> str:
    """Hash `password` with scrypt and a fresh 16-byte salt: `scrypt$n$r$p$salt_b64$hash_b64`."""
    _check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str | None) -> bool:
    """True when `password` matches `encoded`; compares in constant time; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = (encoded or "").split("$")
        salt, expected = base64.b64decode(salt_b64, validate=True), base64.b64decode(hash_b64, validate=True)
        if scheme != "scrypt" or not expected:
            return False
        digest = _scrypt(password, salt, int(n), int(r), int(p), len(expected))
    except (ValueError, MemoryError):  # wrong field count, bad base64/int, or parameters scrypt refuses
        return False
    return hmac.compare_digest(digest, expected)


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password, checked for unknown names: no user enumeration by timing."""
    return hash_password(secrets.token_urlsafe(16))


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidInput("The password is empty; choose a non-empty password.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput(f"The password is longer than {MAX_PASSWORD_CHARS} characters; choose a shorter one.")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(f"User name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'.")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"Role {role!r} is not valid: choose one of {', '.join(ROLES)}.")


def get_user_by_name(session: Session, *, name: str) -> User | None:
    """The user called exactly `name`, or None."""
    return session.scalars(select(User).where(User.name == name)).one_or_none()


def _require_user(session: Session, name: str) -> User:
    user = get_user_by_name(session, name=name)
    if user is None:
        raise NotFound(f"No user named {name!r}; `python -m storage users list` shows the users.")
    return user


def create_user(session: Session, *, name: str, role: str, password: str | None = None) -> User:
    """Add a user; without a password the account cannot log in (simulated or imported annotators)."""
    _check_name(name)
    _check_role(role)
    password_hash = None if password is None else hash_password(password)
    # Names that differ only in case would be indistinguishable on screen, so they count as taken.
    taken = session.scalars(select(User.name).where(func.lower(User.name) == name.lower())).first()
    if taken is not None:
        raise InvalidInput(f"User name {name!r} is taken (by {taken!r}); choose another name.")
    user = User(name=name, role=role, password_hash=password_hash, active=True)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, *, name: str, password: str) -> User | None:
    """The active user whose name and password match, else None (same cost whether or not the name exists)."""
    user = get_user_by_name(session, name=name) if isinstance(name, str) else None
    encoded = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        return None
    matches = verify_password(password, encoded)
    if user is None or not user.password_hash or not user.active:
        return None
    return user if matches else None


def set_role(session: Session, *, name: str, role: str) -> User:
    """Give the user `name` the role `role`."""
    _check_role(role)
    user = _require_user(session, name)
    user.role = role
    session.flush()
    return user


def deactivate(session: Session, *, name: str) -> User:
    """Stop the user `name` from logging in; their votes stay."""
    user = _require_user(session, name)
    user.active = False
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    """All users, by name."""
    return list(session.scalars(select(User).order_by(User.name)))


MAX_DAILY_VOTE_CAP = 100_000


def set_daily_cap(session: Session, *, name: str, cap: int) -> User:
    """Cap the votes `name` may cast per UTC day; 0 removes their own cap (the store's JRM_DAILY_VOTE_CAP applies)."""
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_DAILY_VOTE_CAP:
        raise InvalidInput(f"the daily vote cap must be a whole number from 0 to {MAX_DAILY_VOTE_CAP}, got {cap!r}.")
    user = _require_user(session, name)
    user.daily_vote_cap = cap or None
    session.flush()
    return user
