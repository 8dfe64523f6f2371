"""The socket keeper: bpf's Datapath in a process that outlives the agent.

Why: the kernel programs and maps are pinned and survive an agent killed with SIGKILL, but
the splice listener (where connect4 sends L7 connections), the accepted application
connections and the pooled backend connections are sockets, and sockets die with the process
that owns them.  If the agent owned them, a SIGKILL would close every spliced connection and
refuse new ones until a new agent started.  So the agent runs ``bpf.datapath.Datapath``
(loader, encoder, splice listener with the slow path, pools: all of it, unchanged) in this
process, started in its own session, and sends it what changed in the tables (a TablesDiff;
the keeper rebuilds its tables from the ones it holds).  A restarted agent finds the keeper
by its control socket and adopts it; nothing is dropped.

Lifetime: ``stop`` from the agent (SIGTERM path: detach and unpin, or keep pinned), or the
pin dir disappearing (checked every second), ends it.  Control: multiprocessing.connection
over a root-only unix socket ``/run/sockmesh/<pin dir name>.sock`` with a random key next to
it.  At start it prints one JSON line: ``{"ok": true}`` or ``{"error": "why"}``.

Memory: the keeper never loads bcc's compiler; a child process it starts compiles, loads,
attaches and pins the programs and exits, and the keeper opens the pinned programs.

    python -m integration.socket_keeper --pin-dir PATH --cgroup PATH...  (started by the agent)
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
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
from translator.table_builder import TablesDiff, apply_diff
from translator.tables import Tables

log = logging.getLogger(__name__)
RUN_DIR = Path("/run/sockmesh")
PKG_ROOT = str(Path(integration.__file__).resolve().parents[1])
START_TIMEOUT = 180.0  # compiling four programs with bcc on a busy 2-core machine


def control_paths(pin_dir: Path) -> tuple[Path, Path]:
    """(control socket, key file) of the keeper serving ``pin_dir``."""
    name = Path(pin_dir).name
    return RUN_DIR / f"{name}.sock", RUN_DIR / f"{name}.key"


class KeeperError(RuntimeError):
    """The keeper could not be started, could not load the datapath, or did not answer."""


class KeeperClient:
    """The agent's handle on a running keeper."""

    def __init__(self, conn: Connection, proc: subprocess.Popen[str] | None = None) -> None:
        self.conn = conn
        self.proc = proc  # set when this agent started the keeper (to reap it)
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The keeper's PID."""
        return int(self.info.get("pid", 0))

    def call(self, *msg: Any, timeout: float = 60.0) -> Any:
        """Send one request and wait for its reply; KeeperError on an error reply."""
        with self._lock:
            try:
                self.conn.send(msg)
                if not self.conn.poll(timeout):
                    raise KeeperError(f"socket keeper (pid {self.pid}) did not answer "
                                      f"{msg[0]!r} within {timeout:g} s")
                reply = self.conn.recv()
            except (OSError, EOFError) as exc:
                raise KeeperError(f"socket keeper (pid {self.pid}) gone: {exc}") from exc
        if isinstance(reply, dict) and "error" in reply:
            raise KeeperError(f"socket keeper: {msg[0]}: {reply['error']}")
        return reply

    def close(self) -> None:
        """Drop the connection (the keeper keeps running unless it was told to stop)."""
        self.conn.close()

    def wait_exit(self, timeout: float = 10.0) -> None:
        """After ``stop``: wait for the keeper process to end."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def connect(pin_dir: Path, timeout: float = 5.0) -> KeeperClient | None:
    """The running keeper of ``pin_dir``, or None when there is none."""
    sock, key = control_paths(pin_dir)
    if not sock.exists() or not key.exists():
        return None
    try:
        conn = Client(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    except (OSError, EOFError) as exc:
        log.info("no socket keeper answering on %s (%s)", sock, exc)
        return None
    client = KeeperClient(conn)
    try:
        client.info = client.call("hello", timeout=timeout)
    except KeeperError:
        conn.close()
        return None
    return client


def spawn(cgroups: list[Path], pin_dir: Path, splice_addr: str | None = None) -> KeeperClient:
    """Start a keeper that loads the datapath (its splice listener on ``splice_addr``, None:
    bpf's loopback default); connect to it.  KeeperError says why not."""
    try:
        return _spawn(cgroups, pin_dir, splice_addr)
    except BaseException:
        for path in control_paths(pin_dir):
            path.unlink(missing_ok=True)
        raise


def _spawn(cgroups: list[Path], pin_dir: Path, splice_addr: str | None) -> KeeperClient:
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock, key = control_paths(pin_dir)
    sock.unlink(missing_ok=True)
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "integration.socket_keeper", "--pin-dir", str(pin_dir)]
    if splice_addr is not None:
        argv += ["--splice-addr", splice_addr]
    for cg in cgroups:
        argv += ["--cgroup", str(cg)]
    proc = subprocess.Popen(argv, cwd=PKG_ROOT, env=env, text=True,
                            start_new_session=True,  # survives the agent and its Ctrl-C
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    # the keeper prints one line once the datapath is loaded (or why it is not)
    timer = threading.Timer(START_TIMEOUT, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
        proc.stdout.close()
    try:
        status = json.loads(line)
    except ValueError:
        proc.wait(5)
        raise KeeperError(f"socket keeper exited without loading the datapath "
                          f"(status {proc.returncode}): {line.strip()!r}") from None
    if "error" in status:
        proc.wait(10)
        raise KeeperError(status["error"])
    client = connect(pin_dir, timeout=30)
    if client is None:
        proc.kill()
        proc.wait(5)
        raise KeeperError("socket keeper loaded the datapath but does not answer")
    client.proc = proc
    return client


# ---- the keeper process ----------------------------------------------------------------------

class Keeper:
    """Owns one bpf Datapath; obeys the agent."""

    def __init__(self, cgroups: list[Path], pin_dir: Path,
                 splice_addr: str | None = None) -> None:
        from bpf.datapath import Datapath

        self.pin_dir = pin_dir
        self.dp = Datapath(cgroups, pin_dir, splice_addr=splice_addr)
        self.stopping = threading.Event()
        self.detach = True
        self.compiled = False  # its child compiled the programs (else they were pinned)
        # which tables dp holds: the agent's diffs name the generation they start from
        self._generations = itertools.count(1)
        self.generation: int | None = None
        self.applies = {"tables": 0, "diffs": 0}  # what the agent sent, by kind
        self._apply_lock = threading.RLock()

    def _apply(self, tables: Tables, diff: TablesDiff | None) -> dict[str, Any]:
        with self._apply_lock:
            self.generation = None  # not known if this one fails half way
            stats = dict(self.dp.apply(tables, diff))
            self.generation = next(self._generations)
            self.applies["tables" if diff is None else "diffs"] += 1
            if diff is None:
                release_freed_memory()  # the previous whole tables were just dropped
            return {**stats, "generation": self.generation}

    def handle(self, msg: tuple[Any, ...]) -> Any:
        """One request from the agent -> its reply."""
        from integration import datapath_info as info

        op = msg[0]
        dp = self.dp
        if op == "hello":
            return {"pid": os.getpid(), "splice": list(dp.splice.addr) if dp.splice else None,
                    "reused_pins": bool(dp.loader and dp.loader.reused) and not self.compiled}
        if op == "apply":  # ("apply", tables)
            return self._apply(msg[1], None)
        if op == "apply_diff":  # ("apply_diff", generation it starts from, diff)
            with self._apply_lock:
                if msg[1] != self.generation:
                    return {"resend": f"holds generation {self.generation}, not {msg[1]}"}
                return self._apply(apply_diff(dp.tables, msg[2]), msg[2])
        if op == "names":
            return info.names(dp.encoder)
        if op == "map_fill":
            return info.map_fill(self.pin_dir, dp.encoder)
        if op == "endpoint_stats":
            return info.endpoint_stats(dp)
        if op == "dump":
            return dp.dump()
        if op == "stats":
            return {"slow_path": dict(dp.splice.stats) if dp.splice else {},
                    "pool_replaced": dp.pools.replaced if dp.pools else 0,
                    "pool_grown": dp.pools.grown if dp.pools else 0,
                    "applies": dict(self.applies)}
        if op == "stop":
            # close before answering, so the agent knows the programs are detached (or
            # deliberately left pinned) when the reply arrives
            self.detach = bool(msg[1]) if len(msg) > 1 else True
            dp.close(detach=self.detach)
            self.stopping.set()
            return "ok"
        return {"error": f"unknown request {op!r}"}


def release_freed_memory() -> None:
    """Give the heap memory malloc holds free back to the system (glibc's malloc_trim);
    after whole tables are replaced, tens of MB of it stay resident otherwise."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


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
            try:
                conn.send(reply)
            except (OSError, EOFError):
                return


def load_programs_in_child(cgroups: list[Path], pin_dir: Path) -> bool:
    """Compile, load, attach and pin the programs (bpf.loader) in a short-lived child
    process, so that bcc's compiler (libbcc with LLVM and clang, ~80 MB resident) never
    lives in the keeper, which then opens the pinned programs without compiling.  Returns
    whether the child compiled (False: the pins were there already); KeeperError says why
    the programs are not loaded."""
    argv = [sys.executable, "-m", "integration.socket_keeper", "--programs-only",
            "--pin-dir", str(pin_dir)]
    for cg in cgroups:
        argv += ["--cgroup", str(cg)]
    try:
        r = subprocess.run(argv, cwd=PKG_ROOT, capture_output=True, text=True,
                           timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise KeeperError(f"loading the programs took over {START_TIMEOUT:g} s") from None
    lines = r.stdout.strip().splitlines()
    try:
        status = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise KeeperError(f"loading the programs failed (status {r.returncode}): "
                          f"{(r.stderr or r.stdout).strip()[-2000:]!r}") from None
    if "error" in status:
        raise KeeperError(status["error"])
    return bool(status["compiled"])


def _programs_only(cgroups: list[Path], pin_dir: Path) -> int:
    from bpf.loader import Loader

    try:
        loader = Loader(cgroups, pin_dir)
        loader.load()
        loader.close(detach=False)  # attached and pinned: they outlive this process
    except Exception as exc:  # noqa: BLE001 - the keeper reports it
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return 1
    print(json.dumps({"ok": True, "compiled": not loader.reused}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Load the datapath, then serve the agent until told to stop or the pins disappear."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pin-dir", type=Path, required=True)
    p.add_argument("--cgroup", type=Path, action="append", required=True)
    p.add_argument("--splice-addr", default=None)
    p.add_argument("--programs-only", action="store_true",
                   help="load, attach and pin the programs, then exit (the keeper's child)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s socket-keeper: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's
    if args.programs_only:
        return _programs_only(args.cgroup, args.pin_dir)
    keeper = Keeper(args.cgroup, args.pin_dir, args.splice_addr)
    try:
        keeper.compiled = load_programs_in_child(args.cgroup, args.pin_dir)
        keeper.dp.load()  # opens the pinned programs
    except Exception as exc:  # noqa: BLE001 - the agent fails open with this reason
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return 1
    release_freed_memory()
    sock, key = control_paths(args.pin_dir)
    listener = Listener(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    sock.chmod(0o600)
    signal.signal(signal.SIGTERM, lambda *_: keeper.stopping.set())
    threading.Thread(target=_serve, args=(keeper, listener), daemon=True).start()
    print(json.dumps({"ok": True}), flush=True)
    sys.stdout.close()
    try:
        while not keeper.stopping.wait(1.0):
            if not (args.pin_dir / "sm_services_v1").exists():
                log.warning("pin dir %s is gone; exiting", args.pin_dir)
                break
    finally:
        keeper.dp.close(detach=keeper.detach)
        listener.close()
        sock.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
