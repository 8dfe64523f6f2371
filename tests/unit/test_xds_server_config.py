"""Loading resource files for the embedded server, reload, and the CLI's argument errors.

Every error must name the file and, for a bad resource, the resource and the field; the
watcher keeps the last good snapshot when a file breaks.  No network.  Runtime: < 1 s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from integration.commands import xds_server as command
from integration.xds_server import AdsServer, ConfigError, ConfigWatcher, load_config
from translator.resources import CLUSTER, LISTENER, ROUTE_CONFIGURATION

CLUSTER_YAML = f"'@type': {CLUSTER}\nname: {{name}}\nconnect_timeout: 1s\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_directory_of_yaml_json_lists_and_resources_key(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CLUSTER_YAML.format(name="a"))
    write(tmp_path / "b.yml", CLUSTER_YAML.format(name="b") + "---\n"
          + CLUSTER_YAML.format(name="c"))
    write(tmp_path / "list.json", json.dumps([
        {"@type": ROUTE_CONFIGURATION, "name": "r1"}, {"@type": ROUTE_CONFIGURATION, "name": "r2"}]))
    write(tmp_path / "wrapped.json", json.dumps({"resources": [
        {"@type": LISTENER, "name": "l", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 1}}}]}))
    write(tmp_path / "notes.txt", "ignored: not a resource file")
    rs = load_config(tmp_path)
    assert sorted(rs.clusters) == ["a", "b", "c"]
    assert sorted(rs.route_configs) == ["r1", "r2"]
    assert list(rs.listeners) == ["l"]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.json", '{"@type": "x", ', r"bad\.json: invalid JSON at line 1 column"),
    ("bad.yaml", "name: [oops\n", r"bad\.yaml: invalid YAML at line 2 column 1"),
    ("bad.yaml", CLUSTER_YAML.format(name="c") + "colour: red\n",
     r"bad\.yaml Cluster 'c': .*no field named \"colour\""),
    ("bad.yaml", CLUSTER_YAML.format(name="c").replace("1s", "soon"),
     r"bad\.yaml Cluster 'c': .*connect_timeout"),
    ("bad.yaml", f"'@type': {CLUSTER}\nname: c\nper_connection_buffer_limit_bytes: lots\n",
     r"bad\.yaml Cluster 'c': .*per_connection_buffer_limit_bytes"),
    ("bad.yaml", "name: c\n", r"bad\.yaml: missing '@type'"),
    ("bad.yaml", "'@type': type.googleapis.com/envoy.config.core.v3.Node\nid: x\n",
     r"bad\.yaml: unsupported resource type"),
    ("bad.json", json.dumps([{"@type": CLUSTER, "name": "d"}, {"@type": CLUSTER, "name": "d"}]),
     r"bad\.json\[1\]: duplicate Cluster name 'd' \(first defined in .*bad\.json\[0\]\)"),
])
def test_broken_files_name_file_and_field(tmp_path: Path, name: str, text: str,
                                          expected: str) -> None:
    write(tmp_path / "good.yaml", CLUSTER_YAML.format(name="good"))
    write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=expected):
        load_config(tmp_path)


def test_duplicate_across_files_and_config_dump_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CLUSTER_YAML.format(name="same"))
    write(tmp_path / "b.yaml", CLUSTER_YAML.format(name="same"))
    with pytest.raises(ConfigError, match=r"b\.yaml: duplicate Cluster name 'same'.*a\.yaml"):
        load_config(tmp_path)
    dump = write(tmp_path / "dump.json", json.dumps({"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "dynamic_active_clusters": [{"cluster": {"@type": CLUSTER, "name": "x"}}]}]}))
    assert list(load_config(dump).clusters) == ["x"]
    with pytest.raises(ConfigError, match="not a config dump|missing '@type'"):
        load_config(write(tmp_path / "other.json", json.dumps({"configs": "nope"})))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty: no \*\.json"):
        load_config(empty)


def test_watcher_pushes_changes_and_keeps_last_good(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CLUSTER_YAML.format(name="a"))
    server = AdsServer()
    watcher = ConfigWatcher(server, tmp_path)
    assert watcher.poll() is True
    v1 = server.version
    assert watcher.poll() is False and server.version == v1  # unchanged files: no new version
    write(tmp_path / "b.yaml", CLUSTER_YAML.format(name="b"))
    assert watcher.poll() is True
    v2 = server.version
    assert v2 != v1 and [e.name for e in server.snapshot.get(CLUSTER).entries] == ["a", "b"]
    write(tmp_path / "b.yaml", "colour: [")
    assert watcher.poll() is False
    assert watcher.last_error is not None and "b.yaml" in watcher.last_error
    assert server.version == v2  # still serving the last good snapshot
    write(tmp_path / "b.yaml", CLUSTER_YAML.format(name="c"))
    assert watcher.poll() is True
    assert [e.name for e in server.snapshot.get(CLUSTER).entries] == ["a", "c"]
    assert watcher.last_error is None


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the following arguments are required: --config"),
    (["--config", "/nonexistent/sockmesh"], "no such file or directory"),
    (["--config", ".", "--port", "x"], "not a port number: 'x'"),
    (["--config", ".", "--port", "-1"], "port out of range"),
    (["--config", ".", "--port", "65536"], "port out of range"),
    (["--config", ".", "--poll-interval", "0"], "poll interval out of range"),
])
def test_cli_argument_errors_exit_2(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="sockmesh xds-server")
    command.add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_defaults() -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--config", "."])
    assert (args.host, args.port, args.poll_interval) == ("127.0.0.1", 18000, 0.5)
