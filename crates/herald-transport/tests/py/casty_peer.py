"""A real casty 0.21.0 node (json serializer) for Herald's interop tests.

Starts ActorSystem + tcp_transport + RemoteTransport on 127.0.0.1 (port 0), the layout
casty's own tests use, and registers two paths:

  /echo  on WithRef(reply_to, value): replies Ping(value + 1) to reply_to (a casty ref
         rebuilt from the {"__ref__": uri} tag, so the reply goes over TCP);
  /sink  on anything: prints it.

Every received message is printed as a line `GOT <path> <repr>`; the first line printed is
`PORT <port>`. The process exits when its stdin closes (the test that started it is gone)
or after --lifetime seconds.

Needs PYTHONPATH to include ../shared/peers (module casty_vec_msgs).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading

HOST = "127.0.0.1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", default="casty")
    ap.add_argument("--lifetime", type=float, default=120.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    async def run() -> None:
        import casty_vec_msgs as m
        from casty.core.system import ActorSystem
        from casty.core.transport import LocalTransport
        from casty.remote.serialization import JsonSerializer, TypeRegistry
        from casty.remote.tcp_transport import (
            GetPort,
            InboundMessageHandler,
            RemoteTransport,
            TcpTransportConfig,
            tcp_transport,
        )

        ser = JsonSerializer(TypeRegistry())
        system = ActorSystem(name=args.system)
        await system.__aenter__()
        local = LocalTransport()
        inbound = InboundMessageHandler(local=local, serializer=ser, system_name=args.system)
        tcp = system.spawn(
            tcp_transport(TcpTransportConfig(host=HOST, port=0), inbound, serializer=ser), "_tcp"
        )
        port = await system.ask(tcp, lambda r: GetPort(reply_to=r), timeout=5.0)
        remote = RemoteTransport(
            local=local, tcp=tcp, local_host=HOST, local_port=port, system_name=args.system
        )
        inbound.ref_factory = remote.make_ref

        def on_echo(msg):
            print(f"GOT /echo {msg!r}", flush=True)
            if isinstance(msg, m.WithRef):
                msg.reply_to.tell(m.Ping(value=msg.value + 1))

        def on_sink(msg):
            print(f"GOT /sink {msg!r}", flush=True)

        local.register("/echo", on_echo)
        local.register("/sink", on_sink)
        print(f"PORT {port}", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def watch_stdin() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
        try:
            await asyncio.wait_for(stop.wait(), args.lifetime)
        except asyncio.TimeoutError:
            pass
        await system.shutdown()

    asyncio.run(run())


if __name__ == "__main__":
    main()
