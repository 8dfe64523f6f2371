"""The ctypes twins in bpf/layout.py match the structs the programs were compiled with,
read from the BTF the kernel holds for the loaded programs."""

from __future__ import annotations

import ctypes as C
import json
import subprocess

from bpf.layout import STRUCTS
from bpf.loader import PROGRAMS
from tests.kernel.conftest import Mesh


def _btf_structs(mesh: Mesh) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for spec in PROGRAMS:
        path = mesh.dp.loader.prog_path(spec.name)
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(path)],
                                         check=True, capture_output=True, text=True).stdout)
        dump = json.loads(subprocess.run(["bpftool", "-j", "btf", "dump", "id",
                                          str(info["btf_id"])],
                                         check=True, capture_output=True, text=True).stdout)
        for t in dump["types"]:
            if t.get("kind") == "STRUCT" and t.get("name") in STRUCTS:
                found[t["name"]] = t
    return found


def test_ctypes_layouts_match_compiled_structs(mesh: Mesh) -> None:
    btf = _btf_structs(mesh)
    assert set(btf) == set(STRUCTS), f"not in any program's BTF: {set(STRUCTS) - set(btf)}"
    for name, cls in STRUCTS.items():
        t = btf[name]
        assert C.sizeof(cls) == t["size"], name
        members = [(m["name"], m["bits_offset"] // 8) for m in t["members"]]
        ours = [(f[0], getattr(cls, f[0]).offset) for f in cls._fields_]
        assert ours == members, name


def test_pinned_hash_map_catalog_names_existing_maps(mesh: Mesh) -> None:
    from bpf.layout import PINNED_HASH_MAPS
    from bpf.maps import PinnedMap

    for name, (k, v) in PINNED_HASH_MAPS.items():
        path = mesh.dp.pin_dir / name
        assert path.exists(), name
        info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)],
                                         check=True, capture_output=True, text=True).stdout)
        assert (info["bytes_key"], info["bytes_value"]) == (C.sizeof(k), C.sizeof(v)), name
        PinnedMap(path, k, v).close()
