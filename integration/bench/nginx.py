"""nginx backends for the benchmark: each its own nginx (one worker) on a loopback port.

Configs go to a temp dir; nginx is started by path in the foreground (``daemon off``) so the
PID we hold is its master, and it is stopped by that PID (SIGTERM, then SIGKILL).  Every
backend answers ``200`` with the same small fixed body and an ``x-backend`` header naming it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from integration.bench.system import pin_to_cpu
from integration.processes import end

BODY = "sockmesh bench\n"
START_TIMEOUT_S = 10.0


class NginxError(RuntimeError):
    """nginx is missing or did not start."""


def nginx_binary() -> str:
    """The nginx binary (Debian puts it in /usr/sbin)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
    if found is None:
        raise NginxError("nginx not found (apt-get install nginx-light)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(workdir: Path, name: str, port: int) -> str:
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      add_header x-backend {name} always;
      return 200 "{BODY.strip()}\\n";
    }}
  }}
}}
"""


@dataclass
class Nginx:
    """One running nginx backend."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def pids(self) -> list[int]:
        """Master and worker PIDs (the workers are the master's children)."""
        out = [self.proc.pid]
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            out += [int(k) for k in kids.split()]
        except OSError:
            pass
        return out

    def stop(self) -> None:
        """Terminate the master by PID (it stops its workers) and reap it."""
        end(self.proc)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            err = (workdir / "error.log")
            raise NginxError(f"nginx exited ({proc.returncode}): "
                             f"{err.read_text()[-500:] if err.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise NginxError(f"nginx did not listen on 127.0.0.1:{port} in "
                                 f"{START_TIMEOUT_S:g} s") from None
            time.sleep(0.02)


def start(workdir: Path, name: str, cpu: str | None = None) -> Nginx:
    """Start one nginx backend named ``name`` under ``workdir`` (pinned to ``cpu``)."""
    binary = nginx_binary()
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = _free_port()
        conf = wd / "nginx.conf"
        conf.write_text(_config(wd, name, port))
        proc = subprocess.Popen([binary, "-p", str(wd), "-e", str(wd / "error.log"), "-c",
                                 str(conf)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc, wd)
        except NginxError:
            end(proc)
            if attempt == 4:
                raise
            continue  # the port was taken between probing and binding: try another
        n = Nginx(name, port, proc, wd)
        if cpu is not None:
            for pid in n.pids:
                pin_to_cpu(pid, cpu)
        return n
    raise AssertionError("unreachable")
