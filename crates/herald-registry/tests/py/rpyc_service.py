"""A real rpyc 6.0.2 ThreadedServer that auto-registers with a registry.

usage: rpyc_service.py udp|tcp REGISTRY_PORT
Prints "PORT <n>" once listening; on a line "close" on stdin closes the server
(which sends UNREGISTER) and prints CLOSED.
"""
import sys
import threading

import rpyc
from rpyc.utils.registry import TCPRegistryClient, UDPRegistryClient
from rpyc.utils.server import ThreadedServer


class EchoService(rpyc.Service):
    ALIASES = ["echo", "Parrot"]

    def exposed_echo(self, text):
        return text


def main():
    mode, registry_port = sys.argv[1], int(sys.argv[2])
    if mode == "tcp":
        registrar = TCPRegistryClient("127.0.0.1", port=registry_port, timeout=2)
    else:
        registrar = UDPRegistryClient(ip="127.0.0.1", port=registry_port, timeout=2)
    server = ThreadedServer(EchoService, hostname="127.0.0.1", port=0,
                            registrar=registrar, auto_register=True)
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    print(f"PORT {server.port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            break
    server.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    main()
