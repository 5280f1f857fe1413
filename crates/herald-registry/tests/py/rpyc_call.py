"""One rpyc 6.0.2 registry client call against a registry; prints the result as JSON.

usage: rpyc_call.py udp|tcp|bcast HOST PORT ACTION [ARGS...]
actions: register PORT ALIAS...; discover NAME; list [FILTER]; unregister PORT;
         rpyc_discover NAME (rpyc.discover); list_services [FILTER] (rpyc.list_services)
"""
import json
import sys

import rpyc
from rpyc.utils.registry import TCPRegistryClient, UDPRegistryClient


def main():
    mode, host, port, action, *args = sys.argv[1:]
    port = int(port)
    if mode == "tcp":
        client = TCPRegistryClient(host, port=port, timeout=3)
    elif mode == "bcast":
        client = UDPRegistryClient(ip=host, port=port, timeout=3, bcast=True)
    else:
        client = UDPRegistryClient(ip=host, port=port, timeout=3)
    if action == "register":
        out = client.register(tuple(args[1:]), int(args[0]), interface="127.0.0.1" if mode != "tcp" else "")
    elif action == "discover":
        out = [list(x) for x in client.discover(args[0])]
    elif action == "list":
        res = client.list(args[0] if args else None)
        out = None if res is None else list(res)
    elif action == "unregister":
        out = client.unregister(int(args[0]))
    elif action == "rpyc_discover":
        try:
            out = [list(x) for x in rpyc.discover(args[0], registrar=client, timeout=3)]
        except rpyc.utils.factory.DiscoveryError as e:
            out = "DiscoveryError"
    elif action == "list_services":
        try:
            out = sorted(rpyc.list_services(registrar=client, filter_host=args[0] if args else None, timeout=3))
        except rpyc.utils.factory.ForbiddenError:
            out = "ForbiddenError"
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
