"""The upstream pool closes connections that stayed idle for its idle time, oldest first."""

from __future__ import annotations

from kapa.relay.pool import UpstreamConnection, UpstreamPool


class _Transport:
    """Records close(); the pool touches nothing else of an idle connection's transport here."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _connection(pool: UpstreamPool) -> UpstreamConnection:
    conn = UpstreamConnection(pool, ("127.0.0.1", 1))
    conn.transport = _Transport()  # type: ignore[assignment]
    return conn


def test_a_connection_idle_for_the_idle_time_is_closed_and_a_reused_one_is_not() -> None:
    pool = UpstreamPool(idle_s=3.0)
    old, young = _connection(pool), _connection(pool)
    pool.put(old)
    for second in range(3):
        pool.sweep(float(second))
    pool.put(young)
    pool.sweep(3.0)
    pool.sweep(4.0)
    assert old.transport.closed and not young.transport.closed  # type: ignore[attr-defined]
    assert pool.take(("127.0.0.1", 1)) is young
    pool.put(young)  # idle again from now: the count starts over
    for second in range(5, 8):
        pool.sweep(float(second))
    assert not young.transport.closed  # type: ignore[attr-defined]
    pool.sweep(8.0)
    assert young.transport.closed  # type: ignore[attr-defined]
    assert pool.take(("127.0.0.1", 1)) is None
