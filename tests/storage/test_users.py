import base64

import pytest
from sqlalchemy import select, text

from storage.errors import InvalidInput, NotFound
from storage.models import User
from storage.users import (
    authenticate,
    create_user,
    deactivate,
    get_user_by_name,
    hash_password,
    list_users,
    set_role,
    verify_password,
)

PASSWORD = "correct horse battery staple"


def test_hash_format_and_verify():
    encoded = hash_password(PASSWORD)
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert PASSWORD not in encoded
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "x", encoded)


def test_salts_differ():
    assert hash_password(PASSWORD) != hash_password(PASSWORD)


@pytest.mark.parametrize("encoded", [None, "", "garbage", "bcrypt$1$2$3$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA",
                                     "scrypt$16384$8$1$!!$AAAA", "scrypt$3$8$1$AAAA$AAAA"])
def test_malformed_hash_never_matches(encoded):
    assert verify_password(PASSWORD, encoded) is False


def test_empty_password_is_refused():
    with pytest.raises(InvalidInput, match="empty"):
        hash_password("")


def test_create_and_authenticate(session):
    user = create_user(session, name="alice", role="annotator", password=PASSWORD)
    assert user.id is not None and user.active and user.role == "annotator"
    assert authenticate(session, name="alice", password=PASSWORD) is user
    assert authenticate(session, name="alice", password="wrong") is None
    assert authenticate(session, name="nobody", password=PASSWORD) is None
    assert authenticate(session, name="Alice", password=PASSWORD) is None  # names are exact at login


def test_password_is_not_stored_in_clear(session):
    create_user(session, name="bob", role="admin", password=PASSWORD)
    session.flush()
    row = session.execute(text("SELECT * FROM users WHERE name = 'bob'")).one()
    assert all(PASSWORD not in str(value) for value in row)
    assert row.password_hash.startswith("scrypt$")


def test_user_without_password_cannot_log_in(session):
    create_user(session, name="imported", role="annotator")
    assert get_user_by_name(session, name="imported").password_hash is None
    assert authenticate(session, name="imported", password="") is None
    assert authenticate(session, name="imported", password="anything") is None


def test_inactive_user_cannot_log_in(session):
    create_user(session, name="carol", role="researcher", password=PASSWORD)
    deactivate(session, name="carol")
    assert get_user_by_name(session, name="carol").active is False
    assert authenticate(session, name="carol", password=PASSWORD) is None


def test_duplicate_name_is_refused(session):
    create_user(session, name="dave", role="annotator", password=PASSWORD)
    with pytest.raises(InvalidInput, match="taken"):
        create_user(session, name="dave", role="admin", password=PASSWORD)
    with pytest.raises(InvalidInput, match="taken"):
        create_user(session, name="DAVE", role="admin")
    assert len(session.scalars(select(User)).all()) == 1


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "semi;colon", "ünï", "new\nline", None])
def test_bad_name_is_refused(session, name):
    with pytest.raises(InvalidInput, match="not valid"):
        create_user(session, name=name, role="annotator")


def test_good_names(session):
    for name in ["a", "a" * 64, "j.doe-2_x"]:
        assert create_user(session, name=name, role="annotator").name == name


def test_bad_role_is_refused(session):
    with pytest.raises(InvalidInput, match="annotator, researcher, admin"):
        create_user(session, name="eve", role="root")
    create_user(session, name="eve", role="annotator")
    with pytest.raises(InvalidInput, match="not valid"):
        set_role(session, name="eve", role="superuser")


def test_set_role_and_list(session):
    create_user(session, name="zed", role="annotator")
    create_user(session, name="amy", role="annotator")
    assert set_role(session, name="zed", role="researcher").role == "researcher"
    assert [(u.name, u.role) for u in list_users(session)] == [("amy", "annotator"), ("zed", "researcher")]


def test_unknown_user_is_not_found(session):
    with pytest.raises(NotFound, match="No user named 'ghost'"):
        set_role(session, name="ghost", role="admin")
    with pytest.raises(NotFound):
        deactivate(session, name="ghost")


def test_functions_never_commit(factory):
    with factory() as session:
        create_user(session, name="temp", role="annotator", password=PASSWORD)
        session.rollback()
    with factory() as session:
        assert get_user_by_name(session, name="temp") is None
