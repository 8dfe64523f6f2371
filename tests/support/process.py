"""Test peers run as child processes: started by path, awaited with a deadline, stopped by PID.

    class MyPeer(PeerProcess):
        label = "my-peer"                 # names the process in errors
        error = MyPeerError               # raised when it is absent or died
        def __init__(self, workdir): self.set_up(peer_binary(ENV, BUILT), why, workdir)
        def start(self): self.proc = subprocess.Popen(...); return self.started(self.wait)
        def log_tail(self, lines=40): ...

:class:`PeerProcess` (the product's, in ``integration.processes``; re-exported here) carries
what Envoy, istiod and the go-control-plane server share: the binary and work dir, the
``proc`` handle, stop by PID (``integration.processes.end``: SIGTERM, SIGKILL after a
timeout, reap), the context manager, the alive check with the log tail in its message.
:func:`peer_binary` and :func:`peer_missing` find a built peer (env override, build
stamp); :func:`poll_until` is the deadline loop every wait uses; :func:`http_get` the GET
of an admin or debug endpoint (both also the product's).
"""

from __future__ import annotations

import os
from pathlib import Path

from integration.processes import PeerProcess, http_get, poll_until
from tests.support.capabilities import ROOT

__all__ = ["PeerProcess", "http_get", "peer_binary", "peer_missing", "poll_until"]


def peer_binary(env_var: str, built: Path) -> Path | None:
    """A peer's binary: ``$env_var`` when set, else ``built`` (where its build.sh puts it)
    when it exists, else None."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    return built if built.exists() else None


def peer_missing(env_var: str, built: Path, build_script: str, version: str,
                 stale: str) -> str | None:
    """Why a peer's binary cannot run here, or None.

    Missing: neither ``$env_var`` nor ``built`` exists.  Stale: ``built`` (not an override)
    is stamped (``<binary>.version``, written by ``build_script``) with another ``version``
    than the sources now give; ``stale`` says so.
    """
    found = peer_binary(env_var, built)
    if found is None or not found.exists():
        return f"{built.relative_to(ROOT)} not built ({build_script}, run by scripts/setup.sh)"
    if env_var not in os.environ:
        stamp = built.with_name(built.name + ".version")
        if not stamp.exists() or stamp.read_text().strip() != version:
            return f"{stale}; run {build_script}"
    return None
