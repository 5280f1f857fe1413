"""A real nuropb 0.1.8 service for Herald's interop tests (Herald client -> Python service).

usage: nuropb_service.py AMQP_URL SERVICE_NAME PRIVATE_KEY_PEM [EVENT_BINDING...]

Declares nuropb's exchanges with nuropb's own ``configure_nuropb_rmq`` (as a nuropb deployment
does), connects an ``RMQAPI`` service, prints one line ``READY <instance_id>`` and then serves
until its standard input closes (the test holds the pipe; when the test ends or dies, the
service exits instead of lingering).

Methods: add(a, b); echo(ctx, **params) -> {"params", "context"}; fail(message, kind) where kind
"handling" raises NuropbHandlingError and anything else a plain ValueError; slow(seconds);
emit(topic, payload) -> publishes the event through NuropbSuccess; events_seen(); and
secret_echo(text), marked requires_encryption.
"""
import asyncio
import logging
import sys
import threading
import uuid

from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives import serialization
from nuropb.contexts.context_manager_decorator import nuropb_context
from nuropb.contexts.describe import publish_to_mesh
from nuropb.interface import NuropbHandlingError, NuropbSuccess
from nuropb.rmq_api import RMQAPI
from nuropb.rmq_lib import configure_nuropb_rmq

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


class InteropService:
    """nuropb interop peer for Herald"""

    _version = "1.0.0"

    def __init__(self, name: str, private_key) -> None:
        self._service_name = name
        self._private_key = private_key
        self._events = []

    def add(self, a: int, b: int) -> int:
        return a + b

    @nuropb_context
    def echo(self, ctx, **params):
        return {"params": params, "context": ctx.context}

    def fail(self, message: str, kind: str = "handling"):
        if kind == "handling":
            raise NuropbHandlingError(description=message)
        raise ValueError(message)

    async def slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def emit(self, topic: str, payload):
        raise NuropbSuccess(
            result={"emitted": topic},
            events=[{"topic": topic, "payload": payload, "target": None}],
        )

    def events_seen(self):
        return list(self._events)

    @publish_to_mesh(requires_encryption=True)
    def secret_echo(self, text: str) -> str:
        return text

    def _handle_event_(self, topic, event, target, context):
        # nuropb calls this synchronously (an async handler would never be awaited).
        self._events.append({"topic": topic, "event": event, "context": context})


async def main() -> None:
    url, name, pem_path = sys.argv[1], sys.argv[2], sys.argv[3]
    bindings = sys.argv[4:]
    with open(pem_path, "rb") as f:
        private_key = serialization.load_pem_private_key(
            f.read(), password=None, backend=default_backend()
        )
    configure_nuropb_rmq(
        url,
        "nuropb-events-exchange",
        "nuropb-rpc-exchange",
        "nuropb-dl-exchange",
        f"nuropb-{name}-dl",
    )
    instance_id = uuid.uuid4().hex
    api = RMQAPI(
        amqp_url=url,
        service_name=name,
        instance_id=instance_id,
        service_instance=InteropService(name, private_key),
        transport_settings={"event_bindings": bindings},
    )
    await api.connect()
    print(f"READY {instance_id}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    await stop.wait()
    await api.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
