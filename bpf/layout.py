"""ctypes twins of the structs in sockmesh.h (checked against the compiled header in
tests/kernel/test_layout.py).  Field names match the C names."""

from __future__ import annotations

import ctypes as C

from bpf.limits import limit

u8, u16, u32, u64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64


class SockKey(C.Structure):
    _fields_ = [("ip4", u32), ("port", u32)]


class SvcKey(C.Structure):
    _fields_ = [("vip", u32), ("port", u16), ("pad", u16)]


class Service(C.Structure):
    _fields_ = [("kind", u32), ("id", u32)]


class OrigDst(C.Structure):
    _fields_ = [("vip", u32), ("port", u16), ("pad", u16), ("rt_id", u32), ("pad2", u32)]


class RouteTable(C.Structure):
    _fields_ = [
        ("flags", u32), ("default_vh", u32), ("suffix_lens", u64 * 2), ("prefix_lens", u64 * 2),
    ]


class DomKey(C.Structure):
    _fields_ = [("rt_id", u32), ("kind", u16), ("len", u16), ("hash", u64)]


class VHost(C.Structure):
    _fields_ = [("first_rule", u32), ("n_rules", u32)]


class Cond(C.Structure):
    _fields_ = [
        ("hash", u64), ("len", u16), ("slot", u8), ("kind", u8), ("invert", u8), ("pad", u8 * 3),
    ]


class Rule(C.Structure):
    _fields_ = [
        ("path_hash", u64), ("path_len", u16), ("path_kind", u8), ("flags", u8),
        ("n_conds", u8), ("action", u8), ("n_weighted", u16), ("action_id", u32),
        ("total_weight", u32), ("rule_id", u32), ("pad", u32),
        ("conds", Cond * limit("CONDS_PER_RULE")),
    ]


class Weighted(C.Structure):
    _fields_ = [("cluster_id", u32), ("cum_weight", u32)]


class Cluster(C.Structure):
    _fields_ = [
        ("policy", u32), ("flags", u32), ("n_hosts", u32), ("choices", u32), ("bias", u32),
        ("pad", u32),
    ]


class Host(C.Structure):
    _fields_ = [("ep_id", u32), ("weight", u32)]


class Endpoint(C.Structure):
    _fields_ = [("ip4", u32), ("port", u16), ("pad", u16)]


class Resp(C.Structure):
    _fields_ = [
        ("left", u64), ("hash", u64), ("phase", u32), ("line", u32), ("status", u32),
        ("flags", u32), ("off", u32), ("passes", u32),
    ]


class Client(C.Structure):
    _fields_ = [
        ("vip", u32), ("port", u16), ("pad", u16), ("rt_id", u32), ("user", u32),
        ("body_left", u64), ("body_slot", u32), ("last_rule", u32), ("last_cluster", u32),
        ("requests", u32), ("body_chunked", u32), ("pad2", u32), ("chunk", Resp),
    ]


class Slot(C.Structure):
    _fields_ = [("state", u64), ("client", SockKey), ("ep_id", u32), ("gen", u32), ("resp", Resp)]


class Config(C.Structure):
    _fields_ = [("splice_ip", u32), ("splice_port", u16), ("pad", u16), ("build", u64),
                ("agent_cgroup", u64)]


class SlotRoute(C.Structure):
    _fields_ = [("rule_id", u32), ("cluster_id", u32)]


class ReqStatKey(C.Structure):
    _fields_ = [("rule_id", u32), ("cluster_id", u32), ("ep_id", u32), ("resp_class", u32)]


# struct name in C -> ctypes class; test_layout checks every one of them
STRUCTS: dict[str, type[C.Structure]] = {
    "sm_sock_key": SockKey, "sm_svc_key": SvcKey, "sm_service": Service,
    "sm_orig_dst": OrigDst, "sm_client": Client, "sm_route_table": RouteTable,
    "sm_dom_key": DomKey, "sm_vhost": VHost, "sm_cond": Cond, "sm_rule": Rule,
    "sm_weighted": Weighted, "sm_cluster": Cluster, "sm_host": Host, "sm_endpoint": Endpoint,
    "sm_resp": Resp, "sm_slot": Slot, "sm_config": Config,
    "sm_slot_route": SlotRoute, "sm_reqstat_key": ReqStatKey,
}


# the loader's settings for the programs (index 0): sm_config
CONFIG_MAP = "sm_config_v2"
# per-connection state (sockops, sk_msg, the slow path): application socket -> Client
CLIENTS_MAP = "sm_clients_v2"
# completed responses per (rule, cluster, endpoint, status class), per CPU
REQSTATS_MAP = "sm_reqstats_v1"

# pinned hash maps user space reads besides the encoder's: name -> (key type, value type).
# Import this instead of retyping map names (they carry a layout version).
PINNED_HASH_MAPS: dict[str, tuple[type, type]] = {
    "sm_services_v1": (SvcKey, Service),
    "sm_domains_v1": (DomKey, C.c_uint32),
    "sm_hdrslots_v1": (C.c_uint64, C.c_uint32),
    CLIENTS_MAP: (SockKey, Client),
    "sm_origdst_v1": (C.c_uint64, OrigDst),
    "sm_poolports_v1": (SockKey, C.c_uint32),
    REQSTATS_MAP: (ReqStatKey, C.c_uint64),
}
