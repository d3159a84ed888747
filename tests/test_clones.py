"""The clone pool's logic with fake make and drop (the real one runs in the plugin tests)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from envkit.clones import ClonePool
from envkit.services import PostgresEndpoint


class Server:
    """Counts what exists; each clone takes a while to make, as a real one does."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.live: set[str] = set()
        self.made = 0
        self.most = 0
        self.lock = threading.Lock()
        self.names = itertools.count(1)

    def make(self) -> PostgresEndpoint:
        time.sleep(self.delay)
        with self.lock:
            name = f"clone_{next(self.names)}"
            self.live.add(name)
            self.made += 1
            self.most = max(self.most, len(self.live))
        return PostgresEndpoint("127.0.0.1", 1, "u", "p", name, admin_url="")

    def drop(self, pg: PostgresEndpoint) -> None:
        time.sleep(self.delay / 2)
        with self.lock:
            self.live.remove(pg.database)


def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.005)
    return predicate()


def test_prepares_ahead_bounded_and_drops_everything() -> None:
    server = Server()
    pool = ClonePool(server.make, server.drop, size=3, threads=2)
    pool.expect(10)
    assert wait_until(lambda: server.made == 3)  # ahead of any test, bounded by size
    time.sleep(0.05)
    assert server.made == 3
    first = pool.take()
    assert first.database in {"clone_1", "clone_2", "clone_3"}  # a pick of one made ahead, no copy
    taken = [first]
    pool.give_back(first)
    for _ in range(9):
        pg = pool.take()
        assert pg.database not in {t.database for t in taken}  # never the same one twice
        taken.append(pg)
        pool.give_back(pg)
    pool.close()
    assert server.live == set()  # prepared, used and in-flight: all dropped
    assert server.made == 10 and server.most <= 3 + 3 + 2  # waiting + being dropped + under way


def test_nothing_expected_means_made_on_demand_and_dropped_at_once() -> None:
    server = Server()
    pool = ClonePool(server.make, server.drop)
    pg = pool.take()
    assert server.live == {pg.database}
    pool.give_back(pg)  # no threads: dropped by the caller
    assert server.live == set()
    pool.close()


def test_a_failing_clone_reaches_the_test() -> None:
    server = Server()
    calls = itertools.count()

    def broken() -> PostgresEndpoint:
        next(calls)
        raise RuntimeError("template gone")

    pool = ClonePool(broken, server.drop, size=2, threads=1)
    pool.expect(3)
    with pytest.raises(RuntimeError, match="template gone"):
        pool.take()
    pool.close()
    assert next(calls) <= 3  # the threads stopped trying after the first failure


def test_work_that_can_wait_waits_for_a_quiet_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond LOW clones ahead, and for drops, the threads wait until no test has taken or given back a clone
    for QUIET seconds (the test's setup and teardown go first); below LOW they make one at once."""
    from envkit import clones

    monkeypatch.setattr(clones, "QUIET", 0.5)
    server = Server(delay=0.005)
    pool = ClonePool(server.make, server.drop, size=4, threads=2)
    pool.expect(20)
    assert wait_until(lambda: server.made == 4)  # nothing taken yet: quiet from the start
    first = pool.take()  # 3 still ahead: the next one can wait
    time.sleep(0.25)
    assert server.made == 4
    assert wait_until(lambda: server.made == 5, timeout=2.0)  # once quiet
    taken = [pool.take() for _ in range(3)]  # 1 ahead left: below LOW, made at once however busy
    assert wait_until(lambda: server.made >= 6, timeout=0.3)
    pool.give_back(first)  # a drop can wait
    time.sleep(0.25)
    assert first.database in server.live
    assert wait_until(lambda: first.database not in server.live, timeout=2.0)
    for pg in taken:
        pool.give_back(pg)
    pool.close()
    assert server.live == set()
