"""argparse types the subcommands share: addresses, ports, paths, numbers of seconds.

Each one turns the text of an option into its value or raises ``ArgumentTypeError`` with a
message naming what is wrong, so a bad flag exits 2 with that message.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from integration.preflight import BPFFS, CGROUP2_ROOT

N = TypeVar("N", int, float)


def number(text: str, convert: Callable[[str], N], error: str) -> N:
    """``convert(text)``, or an argparse error: ``error`` with ``{text!r}`` filled in."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(error.format(text=text)) from None


def host_port(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT`` (``[v6]:PORT`` too) with a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 1..65535)")
    return host.strip("[]"), int(port)


def server_addr(text: str) -> str:
    """argparse type: an xDS server ``HOST:PORT`` kept as text for gRPC."""
    host_port(text)
    return text


def listen_addr(text: str) -> tuple[str, int] | None:
    """argparse type: ``IP:PORT`` to listen on (port 0 = any), or ``off``."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not an IP address") from None
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    return host.strip("[]"), int(port)


def ipv4_addr(text: str) -> str:
    """argparse type: an IPv4 address (connect4 rewrites IPv4 connects only)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def cgroup_path(text: str) -> Path:
    """argparse type: an existing child cgroup v2 directory (never the root)."""
    path = Path(text)
    if not path.is_absolute():
        path = CGROUP2_ROOT / path
    path = path.resolve()
    if path == CGROUP2_ROOT:
        raise argparse.ArgumentTypeError(f"{text}: refusing the cgroup v2 root; give the "
                                         "child cgroup that holds the mesh's workloads")
    if CGROUP2_ROOT not in path.parents:
        raise argparse.ArgumentTypeError(f"{text}: not under the cgroup v2 root {CGROUP2_ROOT}")
    if not (path / "cgroup.procs").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such cgroup v2 directory")
    return path


def pin_dir(text: str) -> Path:
    """argparse type: a directory under bpffs."""
    path = Path(text).resolve()
    if BPFFS not in path.parents:
        raise argparse.ArgumentTypeError(f"{text}: the pin dir must be under {BPFFS}")
    return path


def positive(text: str) -> float:
    """argparse type: a positive number of seconds."""
    value = number(text, float, "{text!r} is not a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def listen_port(text: str) -> int:
    """argparse type: a port to listen on, 0 (any) to 65535."""
    value = number(text, int, "not a port number: {text!r}")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def poll_interval(text: str) -> float:
    """argparse type: a poll interval, 0.05 to 3600 seconds."""
    value = number(text, float, "not a number of seconds: {text!r}")
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"poll interval out of range 0.05-3600 s: {value}")
    return value


def existing_path(text: str) -> Path:
    """argparse type: a file or directory that exists."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return p
