"""The scaler's loop: every tick, observe all services at once, decide each (pure), publish and apply.

`Scaler` is a library: `kapa scaler` runs it behind HTTP and gRPC, and the local mode (`kapa up`) embeds it
with its own ready-pod counter and an actuator that starts and stops replica processes. Everything the
decision needs arrives through small protocols (catalog, metrics source, ready-pod counter, actuators), so
the Kubernetes ones (scaler.kubernetes) plug in without touching the loop.

Determinism: ticks fall on wall-clock multiples of TICK_INTERVAL_S and Prometheus is evaluated at exactly the
tick's time (queried QUERY_DELAY_S later, once every sample stamped before it has landed), so scaler replicas
reading the same Prometheus see the same numbers at the same instants, and nothing here is random: each
service's decision state is a function of the observations (and pokes, which the activator sends to every
replica) over the catch-up horizon.

Restarts: a scaler that starts (or restarts, or is a new replica) first replays the last few minutes of ticks
from Prometheus's history (`Scaler.catch_up`), so it decides as one that had been running all along would:
in panic if the service is, counting down the same grace period. And it must not treat running services as
new. A service's first decision waits until its ready pods are known (a tick never guesses them as
zero), and a service that shows it existed before (ready pods, requests in Prometheus, a workload the catalog
says is set to zero: observations.existed_before) does not get initial-scale again.

Scaling policy: each decision is `scaler.policy.decide_with_policy`, Knative's rules, adjusted for a service
annotated `kapa.dev/scaling-policy: predictive` by what its load history predicts. The metrics source
supplies that history (observations.LoadHistorySource; one batched query per tick, for the services with
that policy only), so the policy too is a function of what Prometheus holds, and the catch-up replays
Knative's state alone: the policy keeps none.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kapa.core.contract import CLASS_HPA, SCALING_POLICY_PREDICTIVE
from kapa.core.log import get_logger
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.catalog import ReplicaRecord, ServiceCatalog
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config
from scaler.decision import TICK_INTERVAL_S, Decision, DecisionState, Observation, decide, delegated_decision
from scaler.exported_metrics import ScalerTelemetry
from scaler.feed import DecisionChange, DecisionFeed
from scaler.observations import (
    LoadHistorySource,
    MetricsSnapshot,
    MetricsSource,
    ReadyPodCounter,
    WindowQuery,
    existed_before,
    observed_value,
)
from scaler.policy import LoadHistory, decide_with_policy

log = get_logger(__name__)


class Actuator(Protocol):
    """Carries decisions out: the local process backend, KEDA's cache, a Kubernetes scale call.

    Called after every tick with every service's decision, and after a poke with that one service's.
    """

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None: ...


class UnknownService(KeyError):
    """The service is not in the catalog."""

    def __init__(self, key: ServiceKey) -> None:
        super().__init__(str(key))
        self.key = key

    def __str__(self) -> str:
        return f"no service {self.key} is enrolled with the scaler"


#: How long after its time a tick queries Prometheus. A sample is stamped with its scrape's start, so a scrape
#: begun just before the tick time lands just after it: replicas querying a few milliseconds apart would
#: read different data. Waiting this long makes them read the same (scrapes of the scaling endpoint take
#: milliseconds), at the cost of this much reaction time.
QUERY_DELAY_S = 0.25
#: The longest history a starting scaler replays (a scale-down-delay may be an hour): 300 batched queries.
MAX_CATCH_UP_S = 600.0


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One past decision, for explain."""

    at: float
    decision: Decision
    poked: bool


@dataclass(slots=True)
class _Service:
    """What the loop keeps per service between ticks (looked up once per tick, so the tick stays cheap)."""

    key: ServiceKey
    spec: ServiceSpec
    config: ServiceConfig
    stable_query: WindowQuery
    panic_query: WindowQuery
    history: deque[DecisionRecord]
    state: DecisionState = DecisionState.initial()
    decided_at: float | None = None
    latest: Decision | None = None
    failed: bool = False


def _actionable(decision: Decision) -> tuple[object, ...]:
    """The parts of a decision whose change subscribers must hear about (observed values move every tick)."""
    return (decision.desired_pods, decision.mode, decision.panic_mode, decision.stale)


class Scaler:
    """Decides the pod count of every service in the catalog, every TICK_INTERVAL_S, and on pokes."""

    def __init__(
        self,
        config: AutoscalerConfig,
        catalog: ServiceCatalog,
        metrics: MetricsSource,
        ready_pods: ReadyPodCounter,
        actuators: Sequence[Actuator] = (),
        clock: Callable[[], float] = time.time,
        history_length: int = 10,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.metrics = metrics
        self.ready_pod_counter = ready_pods
        self._history_source = metrics if isinstance(metrics, LoadHistorySource) else None
        self.actuators = tuple(actuators)
        self._replica_record = catalog if isinstance(catalog, ReplicaRecord) else None
        self.clock = clock
        self.history_length = history_length
        self.telemetry = ScalerTelemetry(self._latest_decisions, lambda: self._snapshot.stale)
        self._services: dict[ServiceKey, _Service] = {}
        self._windows: set[WindowQuery] = set()
        #: The services whose policy learns from their load history, and the histories of the last tick.
        self._learning: tuple[ServiceKey, ...] = ()
        self._histories: Mapping[ServiceKey, LoadHistory] = {}
        self._snapshot = MetricsSnapshot.unavailable(0.0)
        self._feeds_by_key: dict[ServiceKey, set[DecisionFeed]] = {}
        self._feeds_all: set[DecisionFeed] = set()
        self._apply_lock = asyncio.Lock()
        self._failing_actuators: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        #: When the last tick decided (None before the first): readiness.
        self.last_tick_at: float | None = None
        self.refresh_services()

    # --- reading -------------------------------------------------------------------------------------------

    def services(self) -> Collection[ServiceKey]:
        return self._services.keys()

    def has_service(self, key: ServiceKey) -> bool:
        return key in self._services

    def service_config(self, key: ServiceKey) -> ServiceConfig:
        return self._known(key).config

    def latest(self, key: ServiceKey) -> Decision | None:
        """The newest decision for the service (None before its first tick or if it is unknown)."""
        service = self._services.get(key)
        return service.latest if service else None

    def history(self, key: ServiceKey) -> tuple[DecisionRecord, ...]:
        """The last decisions for the service, oldest first."""
        return tuple(self._known(key).history)

    def metrics_stale(self) -> bool:
        """Whether the last tick's metrics source could not answer."""
        return self._snapshot.stale

    def _latest_decisions(self) -> Mapping[ServiceKey, Decision]:
        return {key: service.latest for key, service in self._services.items() if service.latest is not None}

    def _known(self, key: ServiceKey) -> _Service:
        service = self._services.get(key)
        if service is None:
            raise UnknownService(key)
        return service

    # --- subscribing -----------------------------------------------------------------------------------------

    def subscribe(self, keys: Iterable[ServiceKey] | None = None) -> DecisionFeed:
        """A feed of decision changes for `keys` (all services when None). Close it when done."""
        wanted = None if keys is None else frozenset(keys)
        feed = DecisionFeed(wanted, self._unsubscribe)
        if wanted is None:
            self._feeds_all.add(feed)
        else:
            for key in wanted:
                self._feeds_by_key.setdefault(key, set()).add(feed)
        return feed

    def _unsubscribe(self, feed: DecisionFeed) -> None:
        if feed.keys is None:
            self._feeds_all.discard(feed)
            return
        for key in feed.keys:
            feeds = self._feeds_by_key.get(key)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._feeds_by_key[key]

    def _notify(self, change: DecisionChange) -> None:
        for feed in self._feeds_all:
            feed.push(change)
        for feed in self._feeds_by_key.get(change.key, ()):
            feed.push(change)

    # --- deciding --------------------------------------------------------------------------------------------

    def refresh_services(self) -> None:
        """Follow the catalog: add new services, re-read changed annotations, forget removed services.

        A service's configuration is parsed only when its spec changes, and its errors are logged then (once
        per service and change, naming key and service), never every tick.
        """
        specs = self.catalog.services()
        changed = False
        for key in [key for key in self._services if key not in specs]:
            del self._services[key]
            changed = True
        for key, spec in specs.items():
            current = self._services.get(key)
            if current is not None and (current.spec is spec or current.spec == spec):
                continue
            changed = True
            config, errors = service_config(self.config, spec)
            for error in errors:
                log.warning(
                    "invalid autoscaling setting; using the default",
                    service=str(error.service),
                    key=error.key,
                    error=error.message,
                )
            stable_query = WindowQuery.for_window(config.metric, config.stable_window_s, config.aggregation)
            panic_query = WindowQuery.for_window(config.metric, config.panic_window_s, config.aggregation)
            if current is None:
                history: deque[DecisionRecord] = deque(maxlen=self.history_length)
                self._services[key] = _Service(key, spec, config, stable_query, panic_query, history)
            else:
                current.spec, current.config = spec, config
                current.stable_query, current.panic_query = stable_query, panic_query
        if changed:  # the HPA class's services are not observed: the HPA reads their pods' resource use
            self._windows = {query for s in self._services.values() if s.config.autoscaler_class != CLASS_HPA
                             for query in (s.stable_query, s.panic_query)}
            self._learning = tuple(key for key, s in self._services.items()
                                   if s.config.scaling_policy == SCALING_POLICY_PREDICTIVE)

    def _observation(self, service: _Service, poked: bool) -> Observation | None:
        """This tick's observation; None while a service never decided for has no known ready-pod count."""
        ready = self.ready_pod_counter.ready_pods(service.key)
        if ready is None:  # unknown: keep what the last decision saw
            if service.latest is not None:
                ready = service.latest.ready_pods
            elif poked:
                ready = 0  # a held request must not wait for the count: decide as for a service at zero
            else:
                return None  # read as zero, running pods would get initial-scale (a restart scaling them down)
        return self._observed(service, ready, poked)

    def _observed(self, service: _Service, ready: int, poked: bool) -> Observation:
        stable = observed_value(self._snapshot, service.stable_query, service.key, ready)
        panic = observed_value(self._snapshot, service.panic_query, service.key, ready)
        return Observation(stable_value=stable, panic_value=panic, ready_pods=ready, poked=poked)

    def _ready_or_zero(self, service: _Service) -> int:
        return self.ready_pod_counter.ready_pods(service.key) or 0

    def _first_state(self, service: _Service) -> DecisionState:
        """The state a service's first decision starts from: initialised when it existed before."""
        replicas = self._replica_record.replicas(service.key) if self._replica_record is not None else None
        queries = (service.stable_query, service.panic_query)
        return DecisionState.initial(initialised=existed_before(self._snapshot, queries, service.key, replicas))

    def _decide(self, service: _Service, at: float, poked: bool) -> Decision | None:
        """Run the pure decision for one service and keep its new state; None if there is no decision (it
        failed, or the service's first one waits for its ready pods to be known)."""
        # A poke may have decided after this tick's time; the decision's clock must not run backwards.
        now = at if service.decided_at is None or at >= service.decided_at else service.decided_at
        try:
            if service.config.autoscaler_class == CLASS_HPA:
                decision, state = delegated_decision(service.config, self._ready_or_zero(service), now), service.state
            else:
                observation = self._observation(service, poked)
                if observation is None:
                    return None
                state = service.state if service.state.started else self._first_state(service)
                history = self._histories.get(service.key)
                decision, state = decide_with_policy(service.config, observation, history, state, now)
        except Exception:
            if not service.failed:
                service.failed = True
                log.exception("decision failed; keeping the previous one", service=str(service.key))
            return None
        service.failed = False
        previous = service.latest
        service.state, service.latest, service.decided_at = state, decision, now
        service.history.append(DecisionRecord(now, decision, poked))
        if poked or previous is None or _actionable(previous) != _actionable(decision):
            self._notify(DecisionChange(service.key, decision, poked))
        return decision

    def catch_up_horizon_s(self) -> float:
        """How far back a starting scaler replays: far enough that every service's state (panic and its
        highest count, the idle countdown, the scale-down-delay's window) is decided by what lies inside,
        capped at MAX_CATCH_UP_S."""
        horizons = [
            c.stable_window_s + max(c.scale_to_zero_grace_period_s, c.scale_to_zero_pod_retention_period_s)
            + c.scale_down_delay_s
            for c in (s.config for s in self._services.values()) if c.autoscaler_class != CLASS_HPA
        ]
        return min(MAX_CATCH_UP_S, max(horizons, default=0.0))

    async def catch_up(self, until: float) -> int:
        """Replay the ticks of the last catch_up_horizon_s() before `until` from Prometheus's history,
        deciding as the loop would but applying and publishing nothing. Returns the ticks replayed.

        Without it a scaler restarted mid-burst starts out of panic and follows the stable window down (a
        loaded service scaled down), a restart in a grace period starts the countdown again, and a second
        replica disagrees with the first until their states happen to meet. With it each starts in the
        state one running all along would have, since the decision is a function of the observations and
        every replica queries the same Prometheus at the same tick times. Past ready-pod counts come from
        Prometheus (live queue-proxies), their only record. A service's replay starts at the first tick that
        shows it (a series or a pod): before that Prometheus simply did not know it, which is no evidence
        of zero traffic (on a fresh start it would make a new service idle from its first tick). A tick
        Prometheus cannot answer ends the replay with every service fresh again: a gap would make the state
        wrong, not merely old.
        """
        self.refresh_services()
        horizon_s = self.catch_up_horizon_s()
        first = math.ceil((until - horizon_s) / TICK_INTERVAL_S) * TICK_INTERVAL_S
        ticks = [first + step * TICK_INTERVAL_S for step in range(round((until - first) / TICK_INTERVAL_S))]
        for at in ticks if self._services else ():
            self._snapshot = await self.metrics.observe(self.windows(), at)
            if self._snapshot.stale:
                self._forget_replayed_states()
                log.warning("no history to catch up from; deciding from scratch", at=at)
                return 0
            for service in self._services.values():
                ready = self._snapshot.ready_pods.get(service.key, 0)
                if service.config.autoscaler_class == CLASS_HPA or not (service.state.started or ready or any(
                    service.key in self._snapshot.values.get(q, {}) for q in (service.stable_query, service.panic_query)
                )):
                    continue  # before Prometheus knew the service (a fresh start): nothing to replay, not zero
                observation = self._observed(service, ready, poked=False)
                state = service.state if service.state.started else self._first_state(service)
                _, service.state = decide(service.config, observation, state, at)
        log.info("caught up from Prometheus history", ticks=len(ticks), horizon_s=horizon_s)
        return len(ticks)

    def _forget_replayed_states(self) -> None:
        """Every service's first live decision starts fresh, as without a catch-up."""
        for service in self._services.values():
            service.state = DecisionState.initial()

    def windows(self) -> set[WindowQuery]:
        """The distinct (metric, window) pairs the services need: one Prometheus query each per tick."""
        return self._windows

    async def tick(self, at: float | None = None) -> dict[ServiceKey, Decision]:
        """One tick at time `at` (default now): observe, decide for every service, apply. Returns decisions."""
        at = self.clock() if at is None else at
        started = time.perf_counter()
        self.refresh_services()
        if self._services:
            self._snapshot, self._histories = await asyncio.gather(
                self.metrics.observe(self.windows(), at), self._load_histories(at)
            )
        decisions: dict[ServiceKey, Decision] = {}
        for key, service in self._services.items():
            decision = self._decide(service, at, poked=False)
            if decision is not None:
                decisions[key] = decision
        self.telemetry.tick_seconds.observe(time.perf_counter() - started)
        self.last_tick_at = at
        await self._apply(decisions)
        return decisions

    async def _load_histories(self, at: float) -> Mapping[ServiceKey, LoadHistory]:
        """The load histories of the services with the predictive policy (none when the metrics source
        keeps none: the policy then says so and leaves Knative's decision alone)."""
        if not self._learning or self._history_source is None:
            return {}
        return await self._history_source.load_histories(self._learning, at)

    async def poke(self, key: ServiceKey) -> Decision | None:
        """The activator's demand signal: decide for this service at once (poked) and apply, without waiting
        for the next tick or a scrape. Raises UnknownService for a service not in the catalog."""
        service = self._known(key)
        self.telemetry.pokes.labels(key.namespace, key.name).inc()
        decision = self._decide(service, self.clock(), poked=True)
        if decision is not None:
            await self._apply({key: decision})
        return decision

    async def _apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        if not decisions or not self.actuators:
            return
        # In order: a poke's decision must not be overtaken by an older tick's still being applied.
        async with self._apply_lock:
            for index, actuator in enumerate(self.actuators):
                name = type(actuator).__name__
                try:
                    await actuator.apply(decisions)
                except Exception:
                    if index not in self._failing_actuators:  # once per failure streak, not every tick
                        self._failing_actuators.add(index)
                        log.exception("actuator failed; retrying every tick", actuator=name, services=len(decisions))
                else:
                    if index in self._failing_actuators:
                        self._failing_actuators.discard(index)
                        log.info("actuator works again", actuator=name)

    # --- running ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Catch up, then tick forever on wall-clock multiples of TICK_INTERVAL_S (the first one at the last
        multiple before now), each QUERY_DELAY_S after its time."""
        at = math.floor(self.clock() / TICK_INTERVAL_S) * TICK_INTERVAL_S
        try:
            await self.catch_up(at)
        except Exception:
            self._forget_replayed_states()
            log.exception("catching up failed; deciding from scratch")
        while True:
            # Evaluated at `at`, queried a moment later, once every scrape that started before `at` has landed.
            await asyncio.sleep(max(0.0, at + QUERY_DELAY_S - self.clock()))
            try:
                await self.tick(at)
            except Exception:
                log.exception("tick failed")
            at = (math.floor(self.clock() / TICK_INTERVAL_S) + 1) * TICK_INTERVAL_S

    def start(self) -> None:
        """Run the loop in the background of the current event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="scaler-loop")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for feed in list(self._feeds_all) + [f for feeds in self._feeds_by_key.values() for f in feeds]:
            feed.close()
