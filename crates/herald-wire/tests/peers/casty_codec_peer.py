"""Interop peer for herald-wire's tests: runs the real casty 0.21.0 codecs.

Reads one JSON document on stdin:
  {"envelopes": [{"hex": .., "target": .., "sender": .., "type_hint": .., "payload_hex": ..}],
   "greets": [{"name": .., "times": ..}], "inners": [{"x": .., "flag": ..}],
   "rust_payloads": [{"serializer": "json"|"msgpack", "hex": .., "repr": ..}]}
and writes one JSON document on stdout with what casty decoded and encoded.
Needs ../shared/peers on sys.path (module casty_vec_msgs).
"""
import json
import sys

from casty.remote.extras import MsgpackSerializer
from casty.remote.serialization import JsonSerializer, TypeRegistry
from casty.remote.tcp_transport import MessageEnvelope

import casty_vec_msgs as m

req = json.load(sys.stdin)
out = {"envelopes": [], "json_greets": [], "msgpack_greets": [], "json_inners": [], "rust_payloads": []}
for e in req["envelopes"]:
    env = MessageEnvelope.from_bytes(bytes.fromhex(e["hex"]))
    ok = (env.target, env.sender, env.type_hint, env.payload.hex()) == (
        e["target"], e["sender"], e["type_hint"], e["payload_hex"])
    again = MessageEnvelope(target=e["target"], sender=e["sender"], type_hint=e["type_hint"],
                            payload=bytes.fromhex(e["payload_hex"])).to_bytes()
    out["envelopes"].append({"decoded_equal": ok, "casty_hex": again.hex()})
js = JsonSerializer(TypeRegistry())
mp = MsgpackSerializer(TypeRegistry())
for g in req["greets"]:
    obj = m.Greet(name=g["name"], times=g["times"])
    out["json_greets"].append(js.serialize(obj).hex())
    out["msgpack_greets"].append(mp.serialize(obj).hex())
for i in req["inners"]:
    out["json_inners"].append(js.serialize(m.Inner(x=i["x"], flag=i["flag"])).hex())
for p in req["rust_payloads"]:
    ser = js if p["serializer"] == "json" else mp
    try:
        obj = ser.deserialize(bytes.fromhex(p["hex"]))
        out["rust_payloads"].append(repr(obj) == p["repr"] or f"{obj!r} != {p['repr']}")
    except Exception as exc:  # report, don't crash: the Rust side asserts
        out["rust_payloads"].append(f"error: {exc!r}")
json.dump(out, sys.stdout)
