"""A real grpcio xDS client: unary calls over an ``xds:///`` target.

Usage: python tests/peers/grpcio_xds_client.py TARGET METHOD COUNT TIMEOUT_S
The xDS bootstrap comes from GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG, which must be
set before grpc starts, hence a separate process.  Prints one JSON line
{"ok": n, "replies": [...]} when every call succeeded, then keeps its xDS stream open until
stdin closes (at most TIMEOUT_S), so the test can wait for the client's last ACKs; exits 0.
Exits 1 at once when a call fails.
"""

from __future__ import annotations

import json
import select
import sys

import grpc


def main(argv: list[str]) -> int:
    """Make COUNT unary calls over TARGET; every call waits for the xDS config (bounded)."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    target, method, count, timeout = argv[0], argv[1], int(argv[2]), float(argv[3])
    if not 0 < count <= 1000:
        print("COUNT must be 1-1000", file=sys.stderr)
        return 2
    replies = []
    # grpcio resolves xds:/// targets with its built-in xDS client (plaintext to backends).
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for i in range(count):
            try:
                reply = call(f"grpcio-{i}".encode(), timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as exc:
                print(f"call {i} failed: {exc.code()} {exc.details()}", file=sys.stderr)
                return 1
            replies.append(reply.decode())
        print(json.dumps({"ok": len(replies), "replies": replies}), flush=True)
        # ACKs race the RPCs inside grpc; stay subscribed until the test has seen them.
        select.select([sys.stdin], [], [], timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
