"""Admin handlers: users listed, created, re-roled and deactivated by admins only; no self-lockout."""

from __future__ import annotations

import re

import gradio as gr
import pytest
from sqlalchemy import select

from app.handlers import admin
from storage.models import User
from storage.users import verify_password
from tests.app.handler_support import PASSWORD, add_users, as_user, make_deps


@pytest.fixture
def deps(app_store):
    add_users(app_store, boss="admin", res="researcher", ann="annotator")
    return make_deps(app_store)


def _user(deps, name: str) -> User:
    with deps.factory() as session:
        return session.scalar(select(User).where(User.name == name))


def test_admin_creates_re_roles_and_deactivates_a_user(deps):
    created = admin.add_user(deps, " carol ", "annotator", "s3cret pass", as_user("boss"))
    assert "Created carol (annotator)" in created.status
    assert verify_password("s3cret pass", _user(deps, "carol").password_hash)
    row = created.table.set_index("name").loc["carol"]
    assert (row["role"], bool(row["active"]), bool(row["can log in"])) == ("annotator", True, True)
    assert "carol is now researcher" in admin.change_role(deps, "carol", "researcher", as_user("boss")).status
    assert _user(deps, "carol").role == "researcher"
    assert "carol is deactivated" in admin.deactivate_user(deps, "carol", as_user("boss")).status
    assert _user(deps, "carol").active is False
    assert set(admin.list_users_view(deps, as_user("boss"))["name"]) >= {"boss", "res", "ann", "carol"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, r: admin.add_user(d, "ann", "annotator", PASSWORD, r), "is taken"),
        (lambda d, r: admin.add_user(d, "<img src=x onerror=alert(1)>", "annotator", PASSWORD, r),
         re.escape("'&lt;img src=x onerror=alert(1)&gt;' is not valid")),
        (lambda d, r: admin.add_user(d, "dave", "annotator", "", r), "Set a password"),
        (lambda d, r: admin.add_user(d, "dave", "overlord", PASSWORD, r), "Role .*overlord.* is not valid"),
        (lambda d, r: admin.change_role(d, "nobody", "admin", r), "No user named"),
        (lambda d, r: admin.change_role(d, "boss", "annotator", r), "cannot change the role of your own"),
        (lambda d, r: admin.deactivate_user(d, "boss", r), "cannot deactivate your own"),
    ],
)
def test_bad_admin_input_gets_a_clear_escaped_message(deps, call, message):
    with pytest.raises(gr.Error, match=message) as caught:
        call(deps, as_user("boss"))
    assert "<img" not in caught.value.message
    assert _user(deps, "boss").role == "admin" and _user(deps, "boss").active


@pytest.mark.parametrize("caller", ["ann", "res"])
def test_only_admins_manage_users(deps, caller):
    for call in (
        lambda: admin.list_users_view(deps, as_user(caller)),
        lambda: admin.add_user(deps, "mallory", "admin", PASSWORD, as_user(caller)),
        lambda: admin.change_role(deps, caller, "admin", as_user(caller)),
        lambda: admin.deactivate_user(deps, "boss", as_user(caller)),
    ):
        with pytest.raises(gr.Error, match="admin role required"):
            call()
    assert _user(deps, "mallory") is None and _user(deps, caller).role != "admin" and _user(deps, "boss").active
