"""Admin tab: list users, create one, change a role, deactivate. Admins only, checked on every call."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr
import pandas as pd

from app.auth import CurrentUser, require_admin
from app.deps import Deps
from app.handlers import user_errors
from app.render import error, text
from storage.db import transaction
from storage.models import ROLES
from storage.users import create_user, deactivate, list_users, set_role

USER_COLUMNS = ["name", "role", "active", "can log in", "created"]


class UsersView(NamedTuple):
    status: str  # HTML, escaped
    table: pd.DataFrame  # USER_COLUMNS, by name


def users_table(deps: Deps) -> pd.DataFrame:
    """Every user: name, role, active, whether they have a password, creation day."""
    with deps.factory() as session:
        rows = [(u.name, u.role, u.active, u.password_hash is not None, f"{u.created_at:%Y-%m-%d}")
                for u in list_users(session)]
    return pd.DataFrame(rows, columns=USER_COLUMNS)


def list_users_view(deps: Deps, request: gr.Request) -> pd.DataFrame:
    """The users table."""
    require_admin(deps, request)
    return users_table(deps)


def add_user(deps: Deps, name: str, role: str, password: str, request: gr.Request) -> UsersView:
    """Create a user who can log in with `password`."""
    require_admin(deps, request)
    if not password:
        raise error("Set a password for the new user (they log in with it).")
    with user_errors(), transaction(deps.factory) as session:
        user = create_user(session, name=(name or "").strip(), role=role, password=password)
        message = f"<p>Created {text(user.name)} ({text(user.role)}).</p>"
    return UsersView(message, users_table(deps))


def _not_self(admin: CurrentUser, name: str, action: str) -> None:
    # An admin who demotes or deactivates themselves may leave the store with no admin at all.
    if (name or "").strip() == admin.name:
        raise error(f"You cannot {action} your own account; ask another admin.")


def change_role(deps: Deps, name: str, role: str, request: gr.Request) -> UsersView:
    """Give user `name` the role `role`."""
    admin = require_admin(deps, request)
    _not_self(admin, name, "change the role of")
    if role not in ROLES:
        raise error(f"Choose a role: {', '.join(ROLES)}.")
    with user_errors(), transaction(deps.factory) as session:
        user = set_role(session, name=(name or "").strip(), role=role)
        message = f"<p>{text(user.name)} is now {text(user.role)}.</p>"
    return UsersView(message, users_table(deps))


def deactivate_user(deps: Deps, name: str, request: gr.Request) -> UsersView:
    """Stop user `name` from logging in (their votes stay)."""
    admin = require_admin(deps, request)
    _not_self(admin, name, "deactivate")
    with user_errors(), transaction(deps.factory) as session:
        user = deactivate(session, name=(name or "").strip())
        message = f"<p>{text(user.name)} is deactivated.</p>"
    return UsersView(message, users_table(deps))
