"""Fail open: a datapath that cannot load says why and leaves nothing attached or pinned."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from bpf import loader as loader_mod
from bpf.loader import DatapathError, Loader
from tests.support.cgroup import CGROUP2_ROOT, pin_dir_for, test_cgroup


def _attached(cgroup: Path) -> list:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def test_refuses_root_cgroup_and_non_bpffs_pins(tmp_path: Path) -> None:
    with pytest.raises(DatapathError, match="not a child cgroup"):
        Loader(CGROUP2_ROOT, Path("/sys/fs/bpf/sockmesh-test-x"))
    with test_cgroup() as cg, pytest.raises(DatapathError, match="not under"):
        Loader(cg, tmp_path)


def test_failure_mid_attach_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # attaching connect4 (the last program) fails: sk_msg, sk_skb and sockops are attached
    # by then, and must all be detached again
    real_attach = loader_mod.maps.prog_attach
    attached_before_failure = []

    def attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
        if attach_type == loader_mod.ATTACH_CGROUP_INET4_CONNECT:
            raise loader_mod.maps.BpfError(1, "injected: connect4 attach refused")
        real_attach(prog_fd, target_fd, attach_type, flags)
        attached_before_failure.append(attach_type)

    monkeypatch.setattr(loader_mod.maps, "prog_attach", attach)
    with test_cgroup() as cg:
        pins = pin_dir_for(cg)
        ld = Loader(cg, pins)
        with pytest.raises(DatapathError, match="attach sm_connect4 to cgroup: .*injected"):
            ld.load()
        assert len(attached_before_failure) == 3
        assert _attached(cg) == []
        assert not pins.exists()


def test_unknown_function_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = list(loader_mod.PROGRAMS)
    broken[0] = dataclasses.replace(broken[0], func="sm_no_such_function")
    monkeypatch.setattr(loader_mod, "PROGRAMS", tuple(broken))
    with test_cgroup() as cg:
        pins = pin_dir_for(cg)
        with pytest.raises(DatapathError, match="load sm_no_such_function"):
            Loader(cg, pins).load()
        assert _attached(cg) == []
        assert not pins.exists()
