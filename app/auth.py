"""Who is calling: the logged-in store user (auth on) or the local admin (auth off), and role checks.

Roles are enforced here, on the server, by every research and admin handler; hiding tabs is only a courtesy.
With auth on, Gradio's login form calls `login_checker`, and each event carries the user name in
`gr.Request.username`; the user is read from the store on every call, so a deactivation or a role change
takes effect at once, also for sessions that are already logged in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import gradio as gr
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.deps import Deps
from app.login_throttle import LOGIN_CHECKS_AT_ONCE, LoginThrottle
from app.render import error
from storage.db import engine_of, session_factory, transaction
from storage.models import User
from storage.users import authenticate, create_user, get_user_by_name

log = logging.getLogger(__name__)

LOCAL_USER = "local"  # the single user of an app started without authentication
RESEARCH_ROLES = ("researcher", "admin")
ADMIN_ROLES = ("admin",)


@dataclass(frozen=True)
class CurrentUser:
    """The caller of a handler, as read from the store for this call."""

    id: int
    name: str
    role: str

    @property
    def is_researcher(self) -> bool:
        return self.role in RESEARCH_ROLES

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES


def _as_current(user: User) -> CurrentUser:
    return CurrentUser(id=user.id, name=user.name, role=user.role)


def current_user(deps: Deps, request: gr.Request | None, session: Session | None = None) -> CurrentUser:
    """The logged-in user (auth on) or the local admin (auth off); `gr.Error` for an unknown or inactive one.

    Pass the handler's `session` to read the user in the same transaction as the handler's own work (one
    transaction per call instead of two); without it the user is read in a read-only session. With auth off the
    local admin is read (or created) in a short transaction of its own, so call this before `session` has run
    a statement (on SQLite it then holds no lock yet).
    """
    if not deps.settings.auth:
        return local_user(deps.factory)
    name = getattr(request, "username", None) if request is not None else None
    if not name:
        raise error("Log in first: this server needs a user name and password.")
    if session is not None:
        user = _active_user(session, name)
        # The session's identity map holds rows weakly; holding this one for the transaction lets the store's own
        # checks of the same user (`session.get(User, id)` in next_pair and record_vote) skip re-reading it.
        session.info["caller"] = user
        return _as_current(user)
    with deps.reader() as reader:  # on SQLite a reader never waits for (or holds) the write lock
        return _as_current(_active_user(reader, name))


def _active_user(session: Session, name: str) -> User:
    user = get_user_by_name(session, name=name)
    if user is None or not user.active:
        raise error(f"The account {name!r} is deactivated or no longer exists; ask an admin.")
    return user


def local_user(factory: sessionmaker[Session]) -> CurrentUser:
    """The admin called "local" that a single-user app acts as, created on first use.

    Read in a read-only session (every call of a local-mode app comes here); only the first call writes."""
    with session_factory(engine_of(factory), read_only=True)() as session:
        user = get_user_by_name(session, name=LOCAL_USER)
        if user is not None and user.active:
            return _as_current(user)
    for _ in range(2):  # a second request racing to create the user loses on the unique name and reads it
        try:
            with transaction(factory) as session:
                user = get_user_by_name(session, name=LOCAL_USER)
                if user is None:
                    user = create_user(session, name=LOCAL_USER, role="admin")  # no password: cannot log in
                if not user.active:
                    raise error(f"The local user {LOCAL_USER!r} is deactivated; reactivate it or start with --auth.")
                return _as_current(user)
        except IntegrityError:
            continue
    raise error(f"Could not create the local user {LOCAL_USER!r}; try again.")


def require_role(user: CurrentUser, roles: tuple[str, ...], needed: str) -> CurrentUser:
    """`user` if their role is one of `roles`, else `gr.Error("<needed> role required")`."""
    if user.role not in roles:
        raise error(f"{needed} role required: your account {user.name!r} is {user.role}; ask an admin.")
    return user


def require_researcher(deps: Deps, request: gr.Request | None) -> CurrentUser:
    """The caller, refused unless a researcher or an admin."""
    return require_role(current_user(deps, request), RESEARCH_ROLES, "researcher")


def require_admin(deps: Deps, request: gr.Request | None) -> CurrentUser:
    """The caller, refused unless an admin."""
    return require_role(current_user(deps, request), ADMIN_ROLES, "admin")


def login_checker(
    factory: sessionmaker[Session], throttle: LoginThrottle | None = None
) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's `auth=` callable: checks a name and password against the store's active users.

    Repeated failures for a name are slowed down and password checks run a few at a time (`app.login_throttle`).
    """
    throttle = throttle or LoginThrottle()
    checks: anyio.CapacityLimiter | None = None  # made on first use: it belongs to the server's event loop
    reader = session_factory(engine_of(factory), read_only=True)

    def check(name: str, password: str) -> bool:
        # A read-only session: scrypt runs while it is open, and on SQLite a writer's session would hold the one
        # write lock for those tens of milliseconds, stalling every annotator's vote behind each log-in.
        with reader() as session:
            return authenticate(session, name=name, password=password) is not None

    async def login(name: str, password: str) -> bool:
        nonlocal checks
        checks = checks or anyio.CapacityLimiter(LOGIN_CHECKS_AT_ONCE)
        async with checks:
            wait = throttle.wait_s(name)  # read with a check slot held, so a burst cannot slip past it
            if wait > 0:
                log.warning("Log-in as %r refused unchecked after repeated failures; next try in %.0f s", name, wait)
                return False
            # scrypt takes tens of milliseconds by design; run it off the event loop so logins do not stall pages.
            succeeded = await anyio.to_thread.run_sync(check, name, password)
        throttle.record(name, succeeded=succeeded)
        return succeeded

    return login
