import threading

from sqlalchemy import func, select

from storage.db import session_factory, transaction
from storage.models import User


def test_read_only_session_does_not_block_writers(engine):
    """A long read (an export) must not hold SQLite's write lock while annotators vote."""
    reader = session_factory(engine, read_only=True)
    writer = session_factory(engine)
    done = threading.Event()
    with reader() as session, session.begin():
        assert session.scalar(select(func.count(User.id))) == 0

        def write() -> None:
            with transaction(writer) as w:
                w.add(User(name="voter", role="annotator"))
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert done.wait(timeout=10), "a writer waited on an open read-only transaction"
        thread.join()
    with reader() as session:
        assert session.scalar(select(func.count(User.id))) == 1
