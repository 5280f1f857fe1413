"""A real nuropb 0.1.8 client for Herald's interop tests (Python client -> Herald service).

usage: nuropb_client.py AMQP_URL

Connects a client-only ``RMQAPI``, prints ``READY``, then answers one JSON line per JSON
command line on stdin until stdin closes:

  {"op": "request", "service", "method", "params", "context", "ttl"?, "trace_id"?,
   "encrypted"?, "rpc_response"?, "timeout"?}
  {"op": "command", "service", "method", "params", "context", "ttl"?}
  {"op": "publish_event", "topic", "event", "context"}
  {"op": "describe", "service"} / {"op": "requires_encryption", "service", "method"}
  {"op": "has_public_key", "service"}

Answers are {"ok": value} or {"error": {"type": exception class, "description": str}}, or
{"timeout": seconds} when nothing came back in time (nuropb itself would wait forever).
"""
import asyncio
import json
import logging
import sys
import uuid

from nuropb.rmq_api import RMQAPI

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_op(api: RMQAPI, cmd: dict):
    op = cmd["op"]
    if op == "request":
        return await api.request(
            cmd["service"],
            cmd["method"],
            cmd.get("params", {}),
            cmd.get("context", {}),
            ttl=cmd.get("ttl"),
            trace_id=cmd.get("trace_id"),
            rpc_response=cmd.get("rpc_response", True),
            encrypted=cmd.get("encrypted", False),
        )
    if op == "command":
        api.command(
            cmd["service"],
            cmd["method"],
            cmd.get("params", {}),
            cmd.get("context", {}),
            ttl=cmd.get("ttl"),
            encrypted=cmd.get("encrypted", False),
        )
        return None
    if op == "publish_event":
        api.publish_event(cmd["topic"], cmd["event"], cmd.get("context", {}))
        return None
    if op == "describe":
        return await api.describe_service(cmd["service"])
    if op == "requires_encryption":
        return await api.requires_encryption(cmd["service"], cmd["method"])
    if op == "has_public_key":
        return await api.has_public_key(cmd["service"])
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    url = sys.argv[1]
    api = RMQAPI(amqp_url=url, instance_id=uuid.uuid4().hex)
    await api.connect()
    reply({"ready": True, "response_queue": api.transport.response_queue})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        timeout = float(cmd.get("timeout", 20.0))
        try:
            value = await asyncio.wait_for(run_op(api, cmd), timeout)
            reply({"ok": value})
        except asyncio.TimeoutError:
            reply({"timeout": timeout})
        except Exception as err:  # report everything to the test
            reply(
                {
                    "error": {
                        "type": type(err).__name__,
                        "description": getattr(err, "description", None) or str(err),
                    }
                }
            )
    await api.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
