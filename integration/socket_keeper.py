"""The socket keeper: the datapath's user-space sockets in a process that outlives the agent.

Why: the kernel programs and maps are pinned and survive an agent killed with SIGKILL, but
the splice listener (where connect4 sends L7 connections), the accepted application
connections and the pooled backend connections are sockets, and sockets die with the process
that owns them.  If the agent owned them, a SIGKILL would close every spliced connection and
refuse new ones until a new agent started.  So the agent starts this keeper in its own
session; it holds bpf's SpliceListener (with the slow path) and Pools, and the agent tells it
the tables and endpoints after each apply.  A restarted agent finds the keeper by its control
socket and adopts it together with the pinned programs; nothing is dropped.

Lifetime: ``stop`` from the agent (SIGTERM path: the agent detaches and unpins), or the pin
dir disappearing (checked every second), ends it.  Control: multiprocessing.connection over a
root-only unix socket ``/run/sockmesh/<pin dir name>.sock`` with a random key next to it.

    python -m integration.socket_keeper --pin-dir PATH   (started by the agent)
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import integration

log = logging.getLogger(__name__)
RUN_DIR = Path("/run/sockmesh")
PKG_ROOT = str(Path(integration.__file__).resolve().parents[1])
START_TIMEOUT = 30.0


def control_paths(pin_dir: Path) -> tuple[Path, Path]:
    """(control socket, key file) of the keeper serving ``pin_dir``."""
    name = Path(pin_dir).name
    return RUN_DIR / f"{name}.sock", RUN_DIR / f"{name}.key"


class KeeperError(RuntimeError):
    """The keeper could not be started or reached."""


class KeeperClient:
    """The agent's handle on a running keeper."""

    def __init__(self, conn: Connection, info: dict[str, Any]) -> None:
        self.conn = conn
        self.info = info
        self._lock = threading.Lock()

    @property
    def splice(self) -> tuple[str, int]:
        """Where connect4 must send L7 connections."""
        host, port = self.info["splice"]
        return str(host), int(port)

    @property
    def pid(self) -> int:
        """The keeper's PID."""
        return int(self.info["pid"])

    def call(self, *msg: Any, timeout: float = 30.0) -> Any:
        """Send one request and wait for its reply."""
        with self._lock:
            self.conn.send(msg)
            if not self.conn.poll(timeout):
                raise KeeperError(f"socket keeper (pid {self.pid}) did not answer {msg[0]!r}")
            reply = self.conn.recv()
        if isinstance(reply, dict) and "error" in reply:
            raise KeeperError(f"socket keeper: {msg[0]}: {reply['error']}")
        return reply

    def close(self) -> None:
        """Drop the connection (the keeper keeps running)."""
        self.conn.close()


def connect(pin_dir: Path, timeout: float = 2.0) -> KeeperClient | None:
    """The running keeper of ``pin_dir``, or None when there is none."""
    sock, key = control_paths(pin_dir)
    if not sock.exists() or not key.exists():
        return None
    try:
        conn = Client(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    except (OSError, EOFError) as exc:
        log.info("no socket keeper answering on %s (%s)", sock, exc)
        return None
    client = KeeperClient(conn, {"splice": ("127.0.0.1", 0), "pid": 0})
    try:
        client.info = client.call("hello", timeout=timeout)
    except (KeeperError, OSError, EOFError):
        conn.close()
        return None
    return client


def spawn(pin_dir: Path, host: str = "127.0.0.1", warm: int = 2) -> KeeperClient:
    """Start a keeper for ``pin_dir`` in its own session and connect to it."""
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock, key = control_paths(pin_dir)
    sock.unlink(missing_ok=True)
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "integration.socket_keeper", "--pin-dir", str(pin_dir),
         "--host", host, "--warm", str(warm)],
        cwd=PKG_ROOT, env=env, start_new_session=True,  # survives the agent and its Ctrl-C
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KeeperError(f"socket keeper exited at start (status {proc.returncode})")
        client = connect(pin_dir) if sock.exists() else None
        if client is not None:
            return client
        time.sleep(0.02)
    proc.kill()
    raise KeeperError(f"socket keeper did not come up within {START_TIMEOUT:g} s")


# ---- the keeper process ----------------------------------------------------------------------

class Keeper:
    """Holds the splice listener (slow path) and the pools; obeys the agent."""

    def __init__(self, pin_dir: Path, host: str, warm: int) -> None:
        from bpf.pools import Pools
        from bpf.splice import SpliceListener

        self.pin_dir = pin_dir
        self.rt_names: dict[int, str] = {}
        self.splice = SpliceListener(pin_dir, host, route_table_name=self.rt_names.get)
        self.pools = Pools(pin_dir, warm=warm)
        self.stopping = threading.Event()

    def start(self) -> None:
        self.splice.start()
        self.pools.start()

    def handle(self, msg: tuple[Any, ...]) -> Any:
        """One request from the agent -> its reply."""
        op = msg[0]
        if op == "hello":
            return {"splice": list(self.splice.addr), "pid": os.getpid()}
        if op == "tables":
            # the slow path sees new tables (and their ids) before the kernel maps change
            _, tables, rt_names = msg
            self.rt_names.clear()
            self.rt_names.update(rt_names)
            self.splice.tables = tables
            return "ok"
        if op == "endpoints":
            self.pools.set_endpoints(msg[1])
            self.pools.maintain()
            return "ok"
        if op == "stats":
            return {"slow_path": dict(self.splice.stats), "pool_replaced": self.pools.replaced,
                    "pool_grown": self.pools.grown}
        if op == "stop":
            self.stopping.set()
            return "ok"
        return {"error": f"unknown request {op!r}"}

    def close(self) -> None:
        self.pools.close()
        self.splice.close()


def _serve(keeper: Keeper, listener: Listener) -> None:
    while not keeper.stopping.is_set():
        try:
            conn = listener.accept()
        except (OSError, EOFError):
            if keeper.stopping.is_set():
                return
            continue
        threading.Thread(target=_conversation, args=(keeper, conn), daemon=True).start()


def _conversation(keeper: Keeper, conn: Connection) -> None:
    with conn:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # the agent went away (maybe killed); keep serving traffic
            try:
                reply = keeper.handle(msg)
            except Exception as exc:  # noqa: BLE001 - report to the agent, keep running
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            conn.send(reply)


def main(argv: list[str] | None = None) -> int:
    """Run the keeper until told to stop or its pin dir disappears."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pin-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--warm", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s socket-keeper: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's
    keeper = Keeper(args.pin_dir, args.host, args.warm)
    keeper.start()
    sock, key = control_paths(args.pin_dir)
    listener = Listener(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    sock.chmod(0o600)
    signal.signal(signal.SIGTERM, lambda *_: keeper.stopping.set())
    threading.Thread(target=_serve, args=(keeper, listener), daemon=True).start()
    try:
        while not keeper.stopping.wait(1.0):
            if not (args.pin_dir / "sm_services_v1").exists():
                log.warning("pin dir %s is gone; exiting", args.pin_dir)
                break
    finally:
        keeper.close()
        listener.close()
        sock.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
