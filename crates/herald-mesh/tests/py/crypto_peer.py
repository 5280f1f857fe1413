"""nuropb encryption peer for Herald's crypto interop tests.

Uses nuropb 0.1.8's own ``Encryptor`` (nuropb/encodings/encryption.py) so that the bytes
are exactly what a nuropb client or service puts on the wire. Line protocol on
stdin/stdout (every wire body is ASCII without newlines):

  keygen OUT_PEM                 write a PKCS#8 RSA-2048 private key, print its public PEM
                                 path-free as one JSON line {"public_pem": ...}
  client PUBLIC_PEM_FILE BODY    print the encrypted request wire line, read the reply wire
                                 line, print the decrypted reply
  service PRIVATE_PEM_FILE REPLY read a request wire line, print the decrypted request, then
                                 print the encrypted REPLY wire line
"""
import json
import sys
from uuid import uuid4

from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nuropb.encodings.encryption import Encryptor


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def read_line() -> bytes:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("peer: stdin closed")
    return line.strip().encode("ascii")


def main() -> None:
    mode = sys.argv[1]
    if mode == "keygen":
        key = rsa.generate_private_key(
            public_exponent=65537, key_size=2048, backend=default_backend()
        )
        pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        with open(sys.argv[2], "wb") as f:
            f.write(pem)
        public = key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        out(json.dumps({"public_pem": public.decode("ascii")}))
    elif mode == "client":
        with open(sys.argv[2], "rb") as f:
            public_key = serialization.load_pem_public_key(f.read(), default_backend())
        body = sys.argv[3].encode()
        enc = Encryptor()
        enc.add_public_key("herald-svc", public_key)
        cid = uuid4().hex
        wire = enc.encrypt_payload(body, correlation_id=cid, service_name="herald-svc")
        out(wire.decode("ascii"))
        reply = enc.decrypt_payload(read_line(), correlation_id=cid)
        out(reply.decode())
    elif mode == "service":
        with open(sys.argv[2], "rb") as f:
            private_key = serialization.load_pem_private_key(
                f.read(), password=None, backend=default_backend()
            )
        enc = Encryptor(service_name="py-svc", private_key=private_key)
        cid = uuid4().hex
        request = enc.decrypt_payload(read_line(), correlation_id=cid)
        out(request.decode())
        wire = enc.encrypt_payload(sys.argv[3].encode(), correlation_id=cid)
        out(wire.decode("ascii"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
