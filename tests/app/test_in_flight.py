"""app.in_flight.InFlight: overlapping calls for one key run once; failures and other keys are not shared."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.in_flight import InFlight


def _overlapping(in_flight: InFlight, first_call, second_call, *, keys=("k", "k")):
    """Start the first call, start the second while the first is still running, then let the first finish."""
    started, release = threading.Event(), threading.Event()

    def first():
        started.set()
        assert release.wait(30)
        return first_call()

    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(in_flight.run, keys[0], first)
        assert started.wait(30)
        follower = pool.submit(in_flight.run, keys[1], second_call)
        if keys[0] != keys[1]:
            follower.result(timeout=30)  # another key does not wait for the first call
        threading.Timer(0.2, release.set).start()  # the second call is waiting by then
        return leader, follower


def test_a_call_for_a_key_that_is_running_waits_and_shares_the_first_result():
    in_flight, runs = InFlight(), []
    leader, follower = _overlapping(in_flight, lambda: runs.append("first") or "stored",
                                    lambda: runs.append("second") or "stored again")
    assert leader.result() == ("stored", True)
    assert follower.result() == ("stored", False)
    assert runs == ["first"] and len(in_flight) == 0


def test_a_first_call_that_fails_shares_nothing_and_the_waiting_call_runs_its_own():
    in_flight = InFlight()

    def fail():
        raise ValueError("bad input in the first request")

    leader, follower = _overlapping(in_flight, fail, lambda: "stored")
    with pytest.raises(ValueError, match="bad input"):
        leader.result()
    assert follower.result() == ("stored", True)
    assert len(in_flight) == 0


def test_other_keys_run_at_the_same_time():
    in_flight = InFlight()
    leader, follower = _overlapping(in_flight, lambda: "a", lambda: "b", keys=("a", "b"))
    assert (leader.result(), follower.result()) == (("a", True), ("b", True))


def test_calls_one_after_another_each_run():
    in_flight = InFlight()
    assert in_flight.run("k", lambda: 1) == (1, True)
    assert in_flight.run("k", lambda: 2) == (2, True)
