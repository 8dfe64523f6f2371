"""Compile, load, attach, pin and detach the four datapath programs.

Lifecycle (each step commented where it happens):
  open     - pin dir in bpffs; reuse pinned programs when they were built from the same
             sources and flags (a restarted agent keeps established connections flowing);
  compile  - one bcc module per attach-point file; their maps are BPF_TABLE_PINNED under the
             pin dir, so the four modules share one set of maps;
  attach   - sk_msg to the client sockhash and sk_skb to the pool sockhash first (programs
             apply only to sockets inserted after the attach), then sockops, then connect4
             last, so no connection is redirected before the rest is in place;
  pin      - programs under <pin dir>/prog_*; maps are pinned by bcc at creation;
  close    - detach=True: detach everything and remove the pin dir; detach=False: just
             drop our handles (restart).
Fail open: any failure rolls back what this call attached and pinned and raises
DatapathError naming the step and the kernel's reason; the application's connects are then
not redirected at all.
"""

from __future__ import annotations

import ctypes as C
import hashlib
import logging
import os
import re
import shutil
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from bpf import maps
from bpf.cgroup2 import cgroup2_root
from bpf.hashing import WELL_KNOWN, fnv1a64
from bpf.layout import CONFIG_MAP, Config
from bpf.limits import limit

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
CGROUP2_ROOT = cgroup2_root()
BPFFS = Path("/sys/fs/bpf")

# enum bpf_attach_type values from the kernel uapi (stable ABI)
ATTACH_CGROUP_SOCK_OPS = 3
# sk_skb is attached as a stream verdict with no stream parser.  Without a parser the kernel
# (>= 5.13) runs it exactly as a verdict-only BPF_SK_SKB_VERDICT (38) program: both start
# sk_psock_start_verdict and read through tcp_read_skb, no strparser.  Either way a
# redirect to another socket is queued to the target's sk_psock backlog worker; an
# interleaved A/B of the two attach types here showed no difference in added latency.
ATTACH_SK_SKB_STREAM_VERDICT = 5
ATTACH_SK_MSG_VERDICT = 7
ATTACH_CGROUP_INET4_CONNECT = 10


class DatapathError(RuntimeError):
    """The datapath could not be loaded or attached; nothing of this attempt is left behind."""


@dataclass(frozen=True)
class ProgSpec:
    name: str  # short name, also the pin name prog_<name>
    source: str  # file in bpf/
    func: str  # C function
    prog_type: str  # bcc BPF.<prog_type>
    attach_type: int
    target: str  # "cgroup" or the sockhash map it attaches to
    # (prog array, index, function) for the passes this program tail-calls
    tails: tuple[tuple[str, int, str], ...] = ()


# attach order matters: see the module docstring
PROGRAMS: tuple[ProgSpec, ...] = (
    ProgSpec("sk_msg", "sk_msg.bpf.c", "sm_sk_msg", "SK_MSG", ATTACH_SK_MSG_VERDICT,
             "sm_clsocks_v1", (("sm_msgprogs_v1", limit("TAIL_PARSE"), "sm_msg_parse"),
                               ("sm_msgprogs_v1", limit("TAIL_ROUTE"), "sm_msg_route"),
                               ("sm_msgprogs_v1", limit("TAIL_RULES"), "sm_msg_rules"),
                               ("sm_msgprogs_v1", limit("TAIL_DISPATCH"), "sm_msg_dispatch"),
                               ("sm_msgprogs_v1", limit("TAIL_LRSUM"), "sm_msg_lr_sum"),
                               ("sm_msgprogs_v1", limit("TAIL_LRPICK"), "sm_msg_lr_pick"),
                               ("sm_msgprogs_v1", limit("TAIL_CHUNKS"), "sm_msg_chunks"))),
    ProgSpec("sk_skb", "sk_skb.bpf.c", "sm_sk_skb", "SK_SKB", ATTACH_SK_SKB_STREAM_VERDICT,
             "sm_poolsocks_v1", (("sm_skbprogs_v1", limit("TAIL_FRAME"), "sm_skb_frame"),)),
    ProgSpec("sockops", "sockops.bpf.c", "sm_sockops", "SOCK_OPS", ATTACH_CGROUP_SOCK_OPS,
             "cgroup"),
    ProgSpec("connect4", "connect4.bpf.c", "sm_connect4", "CGROUP_SOCK_ADDR",
             ATTACH_CGROUP_INET4_CONNECT, "cgroup"),
)


def cflags(pin_dir: Path) -> list[str]:
    """Compiler flags: where maps are pinned, and the well-known hashes the parsers compare."""
    flags = [f'-DSM_PIN_DIR="{pin_dir}"', f"-I{HERE}"]
    for name, text in WELL_KNOWN.items():
        flags.append(f"-DSM_HASH_{name}={fnv1a64(text):#x}ULL")
    return flags


_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)


def expand_local_includes(path: Path, seen: set[str] | None = None) -> str:
    """The source with its ``#include "x.h"`` lines replaced by those files.

    bcc rewrites map method calls (``m.lookup(&k)``) only in the main file, so the shared
    headers are spliced in textually; each is included once (they have guards anyway).
    """
    seen = set() if seen is None else seen

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return expand_local_includes(HERE / name, seen)

    return _LOCAL_INCLUDE.sub(sub, path.read_text())


def build_id(pin_dir: Path) -> int:
    """A 64-bit id of everything that shapes the programs: sources and flags."""
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update("\0".join(cflags(pin_dir)).encode())
    return struct.unpack("<Q", h.digest()[:8])[0] or 1


def check_cgroup(path: Path, root: Path | None = None) -> Path:
    """Refuse anything but an existing child cgroup of the cgroup v2 root (``root``, by
    default the mount point bpf.cgroup2 found)."""
    root = CGROUP2_ROOT if root is None else root
    path = Path(path).resolve()
    if path == root or root not in path.parents:
        raise DatapathError(f"refusing to attach to {path}: not a child cgroup of {root}")
    if not (path / "cgroup.procs").exists():
        raise DatapathError(f"{path} is not a cgroup v2 directory")
    return path


OWN_CGROUP_SEARCH_LIMIT = 20000  # cgroup directories own_cgroup looks at, at most


def own_cgroup(root: Path | None = None) -> Path | None:
    """This process's cgroup v2 directory under ``root`` (the cgroup v2 mount), or None.

    The ``0::`` line of /proc/self/cgroup names it relative to the cgroup namespace's root;
    when that path does not hold this process (a container in its own cgroup namespace with
    the node's hierarchy mounted), the directory whose cgroup.procs lists it is looked up.
    """
    root = CGROUP2_ROOT if root is None else root
    pid = str(os.getpid())

    def holds_me(path: Path) -> bool:
        try:
            return pid in (path / "cgroup.procs").read_text().split()
        except OSError:
            return False

    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            path = root / line[3:].strip().lstrip("/")
            if holds_me(path):
                return path
    for n, (dirpath, _, _) in enumerate(os.walk(root)):
        if n >= OWN_CGROUP_SEARCH_LIMIT:
            break
        if holds_me(Path(dirpath)):
            return Path(dirpath)
    return None


class Loader:
    """Owns the programs of one datapath instance: load(), then close()."""

    def __init__(self, cgroups: list[Path] | Path, pin_dir: Path,
                 splice: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.cgroups = [check_cgroup(c) for c in (cgroups if isinstance(cgroups, list) else [cgroups])]
        self.pin_dir = Path(pin_dir)
        if BPFFS not in self.pin_dir.parents:
            raise DatapathError(f"pin dir {pin_dir} is not under {BPFFS}")
        self.splice = splice
        self.build = build_id(self.pin_dir)
        self.agent_cgroup = 0  # cgroup v2 id connect4 exempts: this process's, set at load
        self.prog_fds: dict[str, int] = {}
        self.reused = False
        self._modules: list[object] = []
        self._attached: list[tuple[int, int, int]] = []  # (prog fd, target fd, type)
        self._cg_fds: list[int] = []

    # ---- paths ---------------------------------------------------------------------------
    def map_path(self, name: str) -> Path:
        return self.pin_dir / name

    def prog_path(self, name: str) -> Path:
        return self.pin_dir / f"prog_{name}"

    # ---- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Open or compile, attach and pin; raises DatapathError and leaves nothing behind."""
        created_dir = not self.pin_dir.exists()
        try:
            self.pin_dir.mkdir(mode=0o700, exist_ok=True)  # open
            self._cg_fds = [os.open(c, os.O_RDONLY | os.O_DIRECTORY) for c in self.cgroups]
            if self._pinned_build() == self.build and all(
                self.prog_path(p.name).exists() for p in PROGRAMS
            ):
                self._reuse()
            else:
                self._drop_stale_programs()
                self._compile_and_attach()
            self.agent_cgroup = self._exempt_own_cgroup()
            self._write_config()
        except Exception as exc:
            self._rollback(created_dir)
            if isinstance(exc, DatapathError):
                raise
            raise DatapathError(f"datapath not loaded: {exc}") from exc

    def _pinned_build(self) -> int:
        path = self.map_path(CONFIG_MAP)
        if not path.exists():
            return 0
        m = maps.PinnedMap(path, C.c_uint32, Config)
        try:
            cfg = m.get(0)
            return cfg.build if cfg is not None else 0
        finally:
            m.close()

    def _reuse(self) -> None:
        # restart: the map-attached programs are held by their maps; re-attaching the same
        # program to the cgroup is a no-op for the kernel and covers a new cgroup path
        for spec in PROGRAMS:
            self.prog_fds[spec.name] = maps.obj_get(self.prog_path(spec.name))
        for spec in PROGRAMS:
            if spec.target == "cgroup":
                for cg in self._cg_fds:
                    maps.prog_attach(self.prog_fds[spec.name], cg, spec.attach_type)
        self.reused = True

    def _drop_stale_programs(self) -> None:
        # programs pinned by another build: detach them from our cgroups and unpin; maps stay
        for spec in PROGRAMS:
            path = self.prog_path(spec.name)
            if not path.exists():
                continue
            fd = maps.obj_get(path)
            try:
                targets = self._cg_fds if spec.target == "cgroup" else [self._map_fd(spec.target)]
                for t in targets:
                    try:
                        maps.prog_detach(fd, t, spec.attach_type)
                    except maps.BpfError:
                        pass  # not attached there
            finally:
                os.close(fd)
            path.unlink()

    def _map_fd(self, name: str) -> int:
        fd = maps.obj_get(self.map_path(name))
        self._keep_fd(fd)
        return fd

    _extra_fds: list[int]

    def _keep_fd(self, fd: int) -> None:
        if not hasattr(self, "_extra_fds"):
            self._extra_fds = []
        self._extra_fds.append(fd)

    def _compile_and_attach(self) -> None:
        from bcc import BPF  # imported late: only compiling needs bcc

        flags = cflags(self.pin_dir)
        for spec in PROGRAMS:  # compile + load
            try:
                mod = BPF(text=expand_local_includes(HERE / spec.source).encode(), cflags=flags)
            except Exception as exc:
                raise DatapathError(f"compile {spec.source}: {exc}") from exc
            self._modules.append(mod)
            prog_type = getattr(BPF, spec.prog_type)
            try:
                if spec.prog_type == "CGROUP_SOCK_ADDR":
                    # sock_addr programs must name their attach type at load time
                    fn = mod.load_func(spec.func.encode(), prog_type, attach_type=spec.attach_type)
                else:
                    fn = mod.load_func(spec.func.encode(), prog_type)
            except Exception as exc:
                raise DatapathError(f"load {spec.func} ({spec.source}): {exc}") from exc
            self.prog_fds[spec.name] = fn.fd
            for array, index, func in spec.tails:  # tail-called passes, same program type
                try:
                    tail = mod.load_func(func.encode(), prog_type)
                except Exception as exc:
                    raise DatapathError(f"load {func} ({spec.source}): {exc}") from exc
                pa = maps.PinnedMap(self.map_path(array), C.c_uint32, C.c_uint32)
                try:
                    pa.set(index, tail.fd)
                finally:
                    pa.close()
        for spec in PROGRAMS:  # attach, in order
            fd = self.prog_fds[spec.name]
            targets = self._cg_fds if spec.target == "cgroup" else [self._map_fd(spec.target)]
            for t in targets:
                try:
                    maps.prog_attach(fd, t, spec.attach_type)
                except maps.BpfError as exc:
                    raise DatapathError(f"attach {spec.func} to {spec.target}: {exc}") from exc
                self._attached.append((fd, t, spec.attach_type))
        for spec in PROGRAMS:  # pin
            maps.obj_pin(self.prog_fds[spec.name], self.prog_path(spec.name))

    def _exempt_own_cgroup(self) -> int:
        """The cgroup id of this process, which owns the datapath's pooled and slow-path
        sockets: connect4 leaves that cgroup's connects alone (0: none found)."""
        mine = own_cgroup()
        if mine is None:
            log.warning("cgroup v2 directory of this process (pid %d) not found under %s: "
                        "connect4 does not exempt the datapath's own connects",
                        os.getpid(), CGROUP2_ROOT)
            return 0
        if mine.resolve() in self.cgroups:
            log.warning("this process (pid %d, owner of the datapath's sockets: the socket "
                        "keeper) is in cgroup %s, which is one of the attached cgroups %s: "
                        "every process in it is exempt from connect4 (neither redirected nor "
                        "refused); run the agent in a cgroup of its own", os.getpid(), mine,
                        ", ".join(map(str, self.cgroups)))
        return os.stat(mine).st_ino

    def _write_config(self) -> None:
        m = maps.PinnedMap(self.map_path(CONFIG_MAP), C.c_uint32, Config)
        try:
            ip, port = self.splice
            cfg = Config()
            cfg.splice_ip = struct.unpack("=I", socket.inet_aton(ip))[0]
            cfg.splice_port = socket.htons(port)
            cfg.build = self.build
            cfg.agent_cgroup = self.agent_cgroup
            m.set(0, cfg)
        finally:
            m.close()

    def set_splice(self, ip: str, port: int) -> None:
        """Point connect4 at the agent's splice listener."""
        self.splice = (ip, port)
        self._write_config()

    def _rollback(self, created_dir: bool) -> None:
        for prog_fd, target_fd, atype in reversed(self._attached):
            try:
                maps.prog_detach(prog_fd, target_fd, atype)
            except maps.BpfError:
                pass
        self._attached.clear()
        if created_dir and self.pin_dir.exists():
            shutil.rmtree(self.pin_dir, ignore_errors=True)
        self._close_fds()

    def _close_fds(self) -> None:
        for mod in self._modules:
            try:
                mod.cleanup()  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - best effort on teardown
                log.debug("bcc module cleanup: %s", exc)
        self._modules.clear()
        if not self.reused:
            self.prog_fds.clear()  # owned by the bcc modules
        for fd in list(self.prog_fds.values()) + self._cg_fds + getattr(self, "_extra_fds", []):
            try:
                os.close(fd)
            except OSError:
                pass
        self.prog_fds.clear()
        self._cg_fds = []
        self._extra_fds = []

    def close(self, detach: bool = True) -> None:
        """detach=True: detach all programs and remove the pin dir; else keep them running."""
        if detach:
            for spec in PROGRAMS:
                path = self.prog_path(spec.name)
                fd = self.prog_fds.get(spec.name)
                own = fd is None and path.exists()
                if own:
                    fd = maps.obj_get(path)
                if fd is None:
                    continue
                targets = self._cg_fds if spec.target == "cgroup" else []
                if spec.target != "cgroup" and self.map_path(spec.target).exists():
                    targets = [self._map_fd(spec.target)]
                for t in targets:
                    try:
                        maps.prog_detach(fd, t, spec.attach_type)
                    except maps.BpfError:
                        pass
                if own:
                    os.close(fd)
            self._attached.clear()
        self._close_fds()
        if detach and self.pin_dir.exists():
            shutil.rmtree(self.pin_dir, ignore_errors=True)
