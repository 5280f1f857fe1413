"""Runs rpyc 6.0.2's own registry server (the baseline Herald's client must work with).

usage: rpyc_server.py udp|tcp PORT PRUNE_SECONDS LISTING(0|1)
Prints READY, then serves on 127.0.0.1:PORT until killed.
"""
import logging
import sys

from rpyc.utils.registry import TCPRegistryServer, UDPRegistryServer


def main():
    mode, port, prune, listing = sys.argv[1:]
    cls = UDPRegistryServer if mode == "udp" else TCPRegistryServer
    server = cls(host="127.0.0.1", port=int(port), pruning_timeout=float(prune),
                 allow_listing=listing == "1", logger=logging.getLogger("null"))
    print("READY", flush=True)
    server.start()


if __name__ == "__main__":
    main()
