"""The one Event writer: Warning Events about rejected annotations, from the webhook and the scaler alike.

Both report the same problem about the same Deployment (the webhook when a pod is admitted, the scaler when
the Deployment's annotations change), so an Event is named after its content: whichever writer (or replica)
comes first creates it, and every later creation is a conflict the API server answers 409. Writing is a
courtesy beside the log line that always goes out: it runs in the background, bounded, and never raises.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.settings import ConfigError

log = get_logger(__name__)
#: The same problem on the same object is recorded again only after this long (the API server keeps Events
#: for an hour by default).
EVENT_REPEAT_AFTER_S = 600.0
#: Event creations in flight at most; beyond, problems are only logged (a flood of pods must not queue work).
MAX_PENDING_EVENTS = 64
#: Seconds an API call may take (connect, read): a hung API server must not pin worker threads for long.
API_TIMEOUT_S = 5.0


def event_name(error: ConfigError, involved: Mapping[str, str]) -> str:
    """The Event's name, from the object and the problem: every webhook replica (and every new pod showing the
    same problem) names the same Event, so the API server keeps one and a second creation is a conflict."""
    identity = (involved["kind"], involved["namespace"], involved["name"], error.key, error.message)
    return f"{involved['name']}.{hashlib.sha256(chr(0).join(identity).encode()).hexdigest()[:16]}"


def annotation_event(error: ConfigError, involved: Mapping[str, str], now: datetime, source: str) -> dict[str, Any]:
    """A core/v1 Warning Event on `involved` naming the rejected annotation, its problem and the default used."""
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(error, involved), "namespace": involved["namespace"]},
        "involvedObject": dict(involved),
        "type": "Warning",
        "reason": contract.EVENT_REASON_INVALID_ANNOTATION,
        "message": f"annotation {error.key} of {error.service}: {error.message}",
        "source": {"component": source},
        "reportingComponent": source,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Creates the Events of bad annotations through the Kubernetes API, in the background.

    `record` returns at once; the API calls (the official client is synchronous, so in worker threads) run
    as tasks that log and swallow every failure. A Deployment's uid is looked up first, since `kubectl
    describe` shows only the Events whose involvedObject carries the object's uid.
    """

    def __init__(self, api: Any, source: str, clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._source = source
        self._clock = clock
        #: Event name -> when it was last recorded, for EVENT_REPEAT_AFTER_S.
        self._recorded: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, owner: Mapping[str, str], problems: Sequence[ConfigError]) -> None:
        """Schedule Events about `owner` for `problems`; never raises, never waits."""
        now = self._clock()
        if len(self._recorded) > 4096:  # forget what can be recorded again anyway
            self._recorded = {n: t for n, t in self._recorded.items() if now - t < EVENT_REPEAT_AFTER_S}
        names = {error: event_name(error, owner) for error in problems}
        last = {error: self._recorded.get(name) for error, name in names.items()}
        due = [error for error, seen in last.items() if seen is None or now - seen >= EVENT_REPEAT_AFTER_S]
        if not due:
            return
        if len(self._pending) >= MAX_PENDING_EVENTS:
            log.warning("too many events in flight; this one is only logged", object=owner["name"],
                        problems=len(due))  # fmt: skip
            return
        for error in due:
            self._recorded[names[error]] = now
        task = asyncio.get_running_loop().create_task(self._create(dict(owner), due))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _create(self, owner: dict[str, str], problems: list[ConfigError]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if owner["kind"] == "Deployment" and "uid" not in owner:
                deployment = await asyncio.to_thread(
                    self._apps.read_namespaced_deployment, owner["name"], owner["namespace"],
                    _request_timeout=API_TIMEOUT_S,
                )
                owner["uid"] = deployment.metadata.uid
        except Exception as error:  # noqa: BLE001 - without the uid the Event still shows in `get events`
            log.warning("cannot look the deployment up for its events", object=owner["name"], error=_brief(error))
        for error in problems:
            event = annotation_event(error, owner, datetime.now(timezone.utc), self._source)
            try:
                await asyncio.to_thread(
                    self._core.create_namespaced_event, owner["namespace"], event, _request_timeout=API_TIMEOUT_S
                )
            except ApiException as failure:
                if failure.status != 409:  # 409: already recorded (another replica, an earlier pod)
                    log.warning("cannot create event", object=owner["name"], key=error.key, error=_brief(failure))
            except Exception as failure:  # noqa: BLE001 - an Event is a courtesy; the log line went out
                log.warning("cannot create event", object=owner["name"], key=error.key, error=_brief(failure))

    async def close(self) -> None:
        """Wait briefly for Events in flight, then give up on them."""
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=2.0)
            for task in late:
                task.cancel()


def _brief(error: BaseException) -> str:
    status = getattr(error, "status", None)
    return f"HTTP {status}: {getattr(error, 'reason', '')}" if status else (str(error) or type(error).__name__)


