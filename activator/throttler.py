"""Per-service admission: hold requests while no pod can take them, hand each a pod slot, never over-grant.

A request asks `acquire()` for a pod. If a ready pod has a free slot and nobody is waiting, it gets one at
once (the hot path: no future, no timer). Otherwise it waits in a FIFO queue, bounded by the service's
queue limit (beyond: `QueueFull` -> 503) and by the service's timeout (past it: `HoldTimeout` -> 504).
Waiters are dispatched whenever capacity appears: a pod turns ready, or a request releases its slot; so
when a second pod becomes ready, waiting requests go to it instead of piling on the first.

Every slot handed out must come back through `release()` exactly once, whatever way the request ends; a
waiter cancelled at the very moment it was granted a slot gives the slot back itself.

The throttler also keeps the time integral of its occupancy (held + in flight), which it alone changes,
so the exported concurrency is exact whatever the scrape timing.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable

from kapa.core.services import Endpoint

from activator.config import ServiceSettings
from activator.lb_policy import PodTracker, Policy, policy_for
from activator.peers import ALONE, Share, pod_capacity


class QueueFull(Exception):
    """The service already holds as many requests as its queue limit allows."""


class HoldTimeout(Exception):
    """The request waited for a pod for longer than the service's timeout."""


class Throttler:
    def __init__(
        self,
        settings: ServiceSettings,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._policy = policy or policy_for(settings.container_concurrency)
        self._share = ALONE
        self._clock = clock
        self._trackers: dict[Endpoint, PodTracker] = {}
        #: Ready pods in endpoint order (first-available needs a stable order).
        self._ready: list[PodTracker] = []
        self._waiters: deque[asyncio.Future[PodTracker]] = deque()
        #: Requests waiting for a slot (live waiters only).
        self.held = 0
        #: Slots handed out and not yet released.
        self.in_flight = 0
        self._occupancy_seconds = 0.0
        self._occupancy_since = clock()

    # -- pods ------------------------------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """The service's pods are now exactly `endpoints`; new ones start unready until probed."""
        wanted = set(endpoints)
        for endpoint in list(self._trackers):
            if endpoint not in wanted:
                self.mark_unready(endpoint)
                del self._trackers[endpoint]
        for endpoint in wanted:
            if endpoint not in self._trackers:
                self._trackers[endpoint] = PodTracker(endpoint, None)
        self._set_capacities()

    def update_settings(self, settings: ServiceSettings) -> None:
        """The service's annotations changed: new limit, timeout and queue limit from now on (requests
        already waiting keep the timeout they started with)."""
        if settings.container_concurrency != self.settings.container_concurrency:
            self._policy = policy_for(settings.container_concurrency)
        self.settings = settings
        self._set_capacities()

    def set_share(self, share: Share) -> None:
        """This activator's place among its replicas changed (see activator.peers)."""
        if share != self._share:
            self._share = share
            self._set_capacities()

    def _set_capacities(self) -> None:
        """Each pod's capacity from this activator, by its place in the endpoint order every replica shares."""
        for index, endpoint in enumerate(sorted(self._trackers)):
            self._trackers[endpoint].capacity = pod_capacity(self.settings.container_concurrency, index, self._share)
        self._dispatch()

    def mark_ready(self, endpoint: Endpoint) -> None:
        """A probe answered: the pod takes requests from now on, starting with those waiting."""
        tracker = self._trackers.get(endpoint)
        if tracker is None or tracker.ready:
            return
        tracker.ready = True
        bisect.insort(self._ready, tracker, key=lambda pod: pod.endpoint)
        self._dispatch()

    def mark_unready(self, endpoint: Endpoint) -> None:
        """The pod failed or went away: no new request goes to it (requests on it end by themselves)."""
        tracker = self._trackers.get(endpoint)
        if tracker is None or not tracker.ready:
            return
        tracker.ready = False
        self._ready.remove(tracker)

    # -- slots -----------------------------------------------------------------------------------------------

    def try_acquire(self) -> PodTracker | None:
        """A slot at once if one is free and nobody waits before us; else None (then call `acquire`)."""
        if self.held:
            return None
        pod = self._policy(self._ready)
        if pod is not None:
            self._grant(pod)
        return pod

    async def acquire(self, timeout_s: float | None = None) -> PodTracker:
        """Wait for a slot, in arrival order. Raises QueueFull at once, or HoldTimeout after `timeout_s`
        (default: the service's timeout)."""
        pod = self.try_acquire()
        if pod is not None:
            return pod
        if self.held >= self.settings.queue_limit:
            raise QueueFull
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PodTracker] = loop.create_future()
        self._compact()
        self._waiters.append(waiter)
        self._change_held(+1)
        timeout_s = self.settings.timeout_s if timeout_s is None else timeout_s
        timer = loop.call_later(timeout_s, self._expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                waiter.cancel()
                self._change_held(-1)
            elif waiter.exception() is None:
                self.release(waiter.result())  # granted just as we were cancelled: give the slot back
            raise
        finally:
            timer.cancel()

    def release(self, pod: PodTracker) -> None:
        """Give back a slot from `try_acquire`/`acquire`; exactly once per slot."""
        self._advance()
        pod.in_flight -= 1
        self.in_flight -= 1
        if pod.ready:
            self._dispatch()

    def track_stream(self, delta: int) -> None:
        """An h2c stream on a connection pinned to a pod began (+1) or ended (-1): in flight and in the
        occupancy, without a pod slot (the pod's queue-proxy limits streams per connection)."""
        self._advance()
        self.in_flight += delta

    def _grant(self, pod: PodTracker) -> None:
        self._advance()
        pod.in_flight += 1
        self.in_flight += 1

    def _dispatch(self) -> None:
        while self._waiters:
            pod = self._policy(self._ready)
            if pod is None:
                return
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled or expired while queued
                continue
            self._grant(pod)
            self._change_held(-1)
            waiter.set_result(pod)

    def _expire(self, waiter: asyncio.Future[PodTracker]) -> None:
        if not waiter.done():
            waiter.set_exception(HoldTimeout())
            self._change_held(-1)

    def _compact(self) -> None:
        """Drop finished waiters left in the queue, so a flood of abandoned requests cannot grow it."""
        if len(self._waiters) > 2 * self.held + 64:
            self._waiters = deque(waiter for waiter in self._waiters if not waiter.done())

    def _change_held(self, delta: int) -> None:
        self._advance()
        self.held += delta

    # -- occupancy -------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        now = self._clock()
        self._occupancy_seconds += (self.held + self.in_flight) * (now - self._occupancy_since)
        self._occupancy_since = now

    def occupancy_seconds(self) -> float:
        """Time integral of held + in-flight requests since start, in request-seconds, brought up to now."""
        self._advance()
        return self._occupancy_seconds
