"""Log-in throttling: repeated failures for a name wait (doubling), checks run a few at a time, a success clears."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import app.auth
from app.auth import login_checker
from app.login_throttle import LOGIN_CHECKS_AT_ONCE, LoginThrottle
from tests.app.handler_support import PASSWORD, add_users


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(throttle: LoginThrottle, name: str, times: int) -> None:
    for _ in range(times):
        throttle.record(name, succeeded=False)


def test_a_name_waits_after_five_failures_doubling_up_to_the_cap_and_a_success_clears_it():
    clock = Clock()
    throttle = LoginThrottle(free_failures=5, first_wait_s=1.0, max_wait_s=8.0, clock=clock)
    _fail(throttle, "ann", 4)
    assert throttle.wait_s("ann") == 0
    waits = []
    for _ in range(6):
        _fail(throttle, "ann", 1)
        waits.append(throttle.wait_s("ann"))
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    _fail(throttle, "ann", 1)
    throttle.record("ann", succeeded=True)
    assert throttle.wait_s("ann") == 0
    _fail(throttle, "ann", 4)
    assert throttle.wait_s("ann") == 0, "the count starts again after a success"


def test_names_are_throttled_as_the_store_compares_them_and_others_are_not():
    throttle = LoginThrottle(clock=Clock())
    _fail(throttle, " Ann ", 5)
    assert throttle.wait_s("ann") > 0 and throttle.wait_s("ANN") > 0
    assert throttle.wait_s("bob") == 0
    assert throttle.wait_s(None) == 0  # not text: remembered by its repr, never an error


def test_a_huge_name_is_remembered_by_its_first_characters_only():
    throttle = LoginThrottle(clock=Clock())
    huge = "x" * 1_000_000
    _fail(throttle, huge, 5)
    assert throttle.wait_s(huge) > 0
    assert throttle.wait_s(huge + "y") > 0, "names longer than any account name share one count by their prefix"
    assert throttle.wait_s("x") == 0


def test_only_the_most_recent_names_are_remembered():
    throttle = LoginThrottle(max_names=2, clock=Clock())
    for name in ("a", "b", "c"):
        _fail(throttle, name, 5)
    assert throttle.wait_s("a") == 0 and throttle.wait_s("b") > 0 and throttle.wait_s("c") > 0


@pytest.mark.parametrize("kwargs", [{"free_failures": 0}, {"first_wait_s": 0}, {"first_wait_s": 9, "max_wait_s": 1},
                                    {"max_names": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="LoginThrottle needs"):
        LoginThrottle(**kwargs)


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_while_a_name_waits_even_its_right_password_is_refused_unchecked(app_store, monkeypatch, caplog):
    add_users(app_store, ann="annotator")
    clock = Clock()
    login = login_checker(app_store.factory, LoginThrottle(clock=clock))
    checked = []
    real = app.auth.authenticate
    monkeypatch.setattr(app.auth, "authenticate", lambda session, **kw: checked.append(1) or real(session, **kw))
    for _ in range(5):
        assert anyio.run(login, "ann", "wrong guess") is False
    assert anyio.run(login, "ann", PASSWORD) is False
    assert len(checked) == 5, "the attempt made while the name waits must not reach the password hash"
    assert "refused unchecked" in caplog.text
    clock.now += 1.0
    assert anyio.run(login, "ann", PASSWORD) is True
    assert anyio.run(login, "ann", "wrong guess") is False  # cleared by the success: one failure, no wait yet
    assert anyio.run(login, "ann", PASSWORD) is True


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_password_checks_run_a_few_at_a_time(app_store, monkeypatch):
    lock, running, most = threading.Lock(), [0], [0]

    def slow_authenticate(session, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(app.auth, "authenticate", slow_authenticate)
    login = login_checker(app_store.factory)

    async def flood() -> None:
        async with anyio.create_task_group() as group:
            for i in range(8):
                group.start_soon(login, f"name-{i}", "guess")

    anyio.run(flood)
    assert most[0] == LOGIN_CHECKS_AT_ONCE
