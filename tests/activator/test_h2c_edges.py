"""An h2c request held by the activator (its service at zero) whose client gives up is let go at once: no
longer held nor counted, and never forwarded once a pod comes up."""

from __future__ import annotations

from pathlib import Path

import pytest
from hyperframe.frame import HeadersFrame

from kapa.core import contract
from kapa.core.services import Endpoint

from tests.activator.harness import activator, metric_value
from tests.activator.test_activator import HELLO, hello, session, wait_for
from tests.kapa.relay.h2_peers import RawH2Client, h2_app
from tests.queue_proxy.conftest import queue_proxy


@pytest.mark.parametrize("gives_up_by", ["reset", "close"])
async def test_a_held_h2c_request_whose_client_gives_up_is_let_go(tmp_path: Path, gives_up_by: str) -> None:
    async with activator(tmp_path, [hello()]) as act, session() as http:

        async def gauges() -> tuple[float | None, float | None]:
            text = await act.metrics(http)
            return metric_value(text, contract.ACTIVATOR_HELD_REQUESTS), metric_value(text, contract.REQUESTS_IN_FLIGHT)

        async def held() -> bool:
            return await gauges() == (1, 0)

        async def let_go() -> bool:
            return await gauges() == (0, 0)

        client = await RawH2Client.connect(act.port)
        await client.send(client.headers(1, authority="hello.default", path="/abandoned", end_stream=False))
        await wait_for(held)
        if gives_up_by == "reset":
            await client.send(client.reset(1))
            await client.until_closed()  # nothing left on the connection to forward
        else:
            await client.close()
        await wait_for(let_go)
        assert metric_value(await act.metrics(http), contract.REQUESTS, code_class="4xx") == 1  # a 499

        async with h2_app() as (app, app_port):
            with queue_proxy(tmp_path, app_port) as pod:
                await act.set_endpoints(http, HELLO, [Endpoint("127.0.0.1", pod.port)])

                async def pod_ready() -> bool:
                    return metric_value(await act.metrics(http), contract.ACTIVATOR_READY_PODS) == 1

                await wait_for(pod_ready)
                later = await RawH2Client.connect(act.port)
                await later.send(later.headers(1, authority="hello.default", path="/later"))
                await later.until(
                    lambda frame: isinstance(frame, HeadersFrame) and frame.stream_id == 1 and "END_STREAM" in frame.flags
                )
                await later.close()
                assert app.paths() == ["/later"]  # the abandoned request never reached the pod
