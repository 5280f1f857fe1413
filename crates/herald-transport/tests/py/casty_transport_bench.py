"""Runs only the transport-level TCP measurement of ../shared/peers/casty_bench.py
(casty 0.21.0, two processes, one-way throughput and ping-pong latency) and prints one
line `CASTY <json>`. Used by `cargo xtask bench transport`; PYTHONPATH must include
../shared/peers.

usage: casty_transport_bench.py <serializer> <n> <runs> <pings>
"""
import json
import sys

import casty_bench

if __name__ == "__main__":
    ser, n, runs, pings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    res = casty_bench.bench_transport(ser, n, runs, pings)
    print("CASTY " + json.dumps(res), flush=True)
