"""Pinned BPF maps opened by path and read/written through libbpf (ctypes).

User space never needs the compiling bcc module to reach a map: a restarted agent, `dump`
and the encoder all open the pins.  This also covers SOCKHASH maps, which bcc 0.26's table
wrapper does not know.
"""

from __future__ import annotations

import ctypes as C
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_lib = C.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
_lib.bpf_obj_get.argtypes = [C.c_char_p]
_lib.bpf_obj_pin.argtypes = [C.c_int, C.c_char_p]
_lib.bpf_map_lookup_elem.argtypes = [C.c_int, C.c_void_p, C.c_void_p]
_lib.bpf_map_delete_elem.argtypes = [C.c_int, C.c_void_p]
_lib.bpf_map_update_elem.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_uint64]
_lib.bpf_map_get_next_key.argtypes = [C.c_int, C.c_void_p, C.c_void_p]
_lib.bpf_prog_attach.argtypes = [C.c_int, C.c_int, C.c_int, C.c_uint]
_lib.bpf_prog_detach2.argtypes = [C.c_int, C.c_int, C.c_int]
_lib.bpf_map_create.argtypes = [C.c_int, C.c_char_p, C.c_uint32, C.c_uint32, C.c_uint32,
                                C.c_void_p]

BPF_ANY, BPF_NOEXIST = 0, 1


class BpfError(OSError):
    """A libbpf call failed; the message names the call and the object."""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = C.get_errno() or -rc
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def obj_get(path: str | Path) -> int:
    """Open a pinned map or program; returns a new fd."""
    return _check(_lib.bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")


def fdinfo(fd: int) -> dict[str, str]:
    """The kernel's ``/proc/self/fdinfo`` fields of a BPF object fd."""
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def obj_pin(fd: int, path: str | Path) -> None:
    """Pin fd at path in bpffs."""
    _check(_lib.bpf_obj_pin(fd, str(path).encode()), f"bpf_obj_pin({path})")


class _MapCreateOpts(C.Structure):
    # the head of libbpf's struct bpf_map_create_opts up to map_flags (libbpf >= 0.7)
    _fields_ = [("sz", C.c_size_t), ("btf_fd", C.c_uint32), ("btf_key_type_id", C.c_uint32),
                ("btf_value_type_id", C.c_uint32), ("btf_vmlinux_value_type_id", C.c_uint32),
                ("inner_map_fd", C.c_uint32), ("map_flags", C.c_uint32)]


MAP_HASH, MAP_ARRAY = 1, 2
BPF_F_NO_PREALLOC = 1


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               flags: int = 0) -> int:
    """Create a map (no program needed); returns its fd.  Tests pin such maps to run the
    encoder without a loaded datapath."""
    opts = _MapCreateOpts(sz=C.sizeof(_MapCreateOpts), map_flags=flags)
    return _check(_lib.bpf_map_create(map_type, name[:15].encode(), key_size, value_size,
                                      max_entries, C.byref(opts)), f"bpf_map_create({name})")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach a program to a cgroup or a sockmap/sockhash."""
    _check(_lib.bpf_prog_attach(prog_fd, target_fd, attach_type, flags), "bpf_prog_attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """Detach a program from a cgroup or a sockmap/sockhash."""
    _check(_lib.bpf_prog_detach2(prog_fd, target_fd, attach_type), "bpf_prog_detach2")


def _ncpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    last = text.split(",")[-1].split("-")[-1]
    return int(last) + 1


class PinnedMap:
    """A map opened from its pin.  ``percpu`` maps return a list of per-CPU values."""

    def __init__(self, path: str | Path, key_type: Any, value_type: Any, percpu: bool = False):
        self.path = Path(path)
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        self.fd = obj_get(self.path)
        self._ncpu = _ncpus() if percpu else 1
        self._vsize = C.sizeof(value_type)
        if percpu:
            self._vsize = (self._vsize + 7) // 8 * 8

    @property
    def max_entries(self) -> int:
        """The map's capacity as the kernel created it."""
        return int(fdinfo(self.fd)["max_entries"])

    def close(self) -> None:
        """Close the fd (the pin keeps the map)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: Any) -> Any:
        return key if isinstance(key, C._SimpleCData | C.Structure) else self.key_type(key)

    def get(self, key: Any) -> Any:
        """The value for key, or None."""
        buf = C.create_string_buffer(self._vsize * self._ncpu)
        k = self._key(key)
        if _lib.bpf_map_lookup_elem(self.fd, C.byref(k), buf) < 0:
            return None
        if not self.percpu:
            return self.value_type.from_buffer_copy(buf.raw[: C.sizeof(self.value_type)])
        return [
            self.value_type.from_buffer_copy(buf.raw[i * self._vsize : i * self._vsize + C.sizeof(self.value_type)])
            for i in range(self._ncpu)
        ]

    def set(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Write one entry (for a sockhash the value is a socket fd, as a u64; for a per-CPU
        map a sequence of one value per CPU)."""
        k = self._key(key)
        if self.percpu:
            if len(value) != self._ncpu:
                raise ValueError(f"{self.path.name}: {len(value)} values for {self._ncpu} CPUs")
            buf = C.create_string_buffer(self._vsize * self._ncpu)
            for i, x in enumerate(value):
                v = x if isinstance(x, C._SimpleCData | C.Structure) else self.value_type(x)
                C.memmove(C.addressof(buf) + i * self._vsize, C.byref(v), C.sizeof(v))
            _check(_lib.bpf_map_update_elem(self.fd, C.byref(k), buf, flags),
                   f"update {self.path.name}")
            return
        v = value if isinstance(value, C._SimpleCData | C.Structure) else self.value_type(value)
        _check(_lib.bpf_map_update_elem(self.fd, C.byref(k), C.byref(v), flags),
               f"update {self.path.name}")

    def delete(self, key: Any) -> bool:
        """Delete key; False when it was absent."""
        return _lib.bpf_map_delete_elem(self.fd, C.byref(self._key(key))) == 0

    def keys(self) -> Iterator[Any]:
        """All keys (hash maps)."""
        prev = None
        nxt = self.key_type()
        while True:
            rc = _lib.bpf_map_get_next_key(self.fd, C.byref(prev) if prev is not None else None,
                                           C.byref(nxt))
            if rc < 0:
                return
            cur = self.key_type.from_buffer_copy(bytes(nxt))
            yield cur
            prev = cur
            nxt = self.key_type()

    def items(self) -> Iterator[tuple[Any, Any]]:
        """All (key, value) pairs that can be read back."""
        for k in list(self.keys()):
            v = self.get(k)
            if v is not None:
                yield k, v
