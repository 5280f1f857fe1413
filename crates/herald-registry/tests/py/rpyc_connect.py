"""rpyc.connect_by_service through a registry, then one call on the service.

usage: rpyc_connect.py udp|tcp REGISTRY_PORT NAME TEXT
Prints the echoed text as JSON.
"""
import json
import sys

import rpyc
from rpyc.utils.registry import TCPRegistryClient, UDPRegistryClient


def main():
    mode, port, name, text = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "tcp":
        registrar = TCPRegistryClient("127.0.0.1", port=port, timeout=3)
    else:
        registrar = UDPRegistryClient(ip="127.0.0.1", port=port, timeout=3)
    conn = rpyc.connect_by_service(name, registrar=registrar)
    try:
        print(json.dumps(conn.root.echo(text)), flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
