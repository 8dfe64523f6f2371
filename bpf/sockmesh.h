/* sockmesh.h - the only contract between the kernel programs and the Python side in bpf/.
 *
 * Every struct here has a ctypes twin in bpf/layout.py; tests/kernel/test_layout.py reads the
 * BTF of the loaded programs and asserts sizes and member offsets match.
 * Limits are named SM_* constants; bpf/limits.py parses them from this file so Python never
 * retypes one.  Byte order: "net" = network order as the socket structs give it, "host" =
 * host order.  Every map lives pinned under SM_PIN_DIR (a -D flag from the loader), so the
 * four program files (one per attach point) share one set of maps and a restarted loader
 * finds them again.  Map names carry a layout version (_v1); bump it when a layout changes.
 */
#ifndef SOCKMESH_H
#define SOCKMESH_H

#include <uapi/linux/bpf.h>

#ifndef SM_PIN_DIR
#error "SM_PIN_DIR must be given by the loader (-DSM_PIN_DIR=\"/sys/fs/bpf/...\")"
#endif

/* ---- limits: sized for Istio's real configs; exceeding one goes to the slow path ---------- */
#define SM_MAX_SERVICES 16384        /* VIP:port entries incl. 0.0.0.0:port wildcards */
#define SM_MAX_ROUTE_TABLES 2048     /* flattened RouteConfigurations */
#define SM_MAX_VHOSTS 65536          /* Istio writes one virtual host per service and port */
#define SM_MAX_DOMAINS 262144        /* domain names over all virtual hosts */
#define SM_MAX_RULES 131072          /* rules over all virtual hosts (one global array; 2 per
                                        vhost at SM_MAX_VHOSTS; an Istio-sized config of 3,186
                                        clusters has 1,973) */
#define SM_RULES_PER_VHOST 256       /* rules walked per request; more -> slow path */
#define SM_CONDS_PER_RULE 4          /* header conditions per rule evaluated in kernel */
#define SM_MAX_WEIGHTED 65536        /* weighted_clusters entries over all rules */
#define SM_WEIGHTED_PER_RULE 16      /* weighted_clusters walked per request */
#define SM_MAX_CLUSTERS 4096
#define SM_HOSTS_PER_CLUSTER 256     /* hosts (or weighted round-robin ring) per cluster */
#define SM_MAX_ENDPOINTS 16384       /* distinct endpoint addresses */
#define SM_POOL_PER_ENDPOINT 16      /* pooled backend connections per endpoint */
#define SM_MAX_SLOTS (SM_MAX_ENDPOINTS * SM_POOL_PER_ENDPOINT)
#define SM_MAX_CLIENTS 65536         /* concurrently connected application sockets */
#define SM_LR_CHOICES_MAX 8          /* LEAST_REQUEST choice_count walked in kernel */
#define SM_HDR_SLOTS 8               /* distinct header names kernel conditions may use */

/* parse limits (bytes); SM_REQ_BUF must be a power of two (used as a mask) */
#define SM_REQ_BUF 1024              /* request head parsed in kernel */
#define SM_PATH_MAX 128              /* request path incl. query */
#define SM_HOST_MAX 64               /* Host header */
#define SM_PATH_MASK (2 * SM_PATH_MAX - 1)  /* index masks; SM_*_MAX are powers of two */
#define SM_HOST_MASK (2 * SM_HOST_MAX - 1)
#ifndef SM_PARSE_STEP                /* overridable only for scripts/repro_verifier_limits.py */
#define SM_PARSE_STEP 128            /* request bytes parsed per tail-called pass */
#endif
#define SM_RESP_STEPS 128            /* response framing steps per pass (head bytes + runs) */
#define SM_RESP_PASSES 30            /* passes per skb (tail calls; the kernel allows 33) */
#define SM_RESP_WIN 256              /* response bytes loaded per window; power of two */

#define SM_RCVBUF (4 << 20)          /* client SO_RCVBUF: large responses stall without it */
#define SM_FNV_OFFSET 0xcbf29ce484222325ULL
#define SM_FNV_PRIME 0x100000001b3ULL

/* ---- enums ---------------------------------------------------------------------------------- */
#define SM_SVC_HTTP 1
#define SM_SVC_TCP 2
#define SM_SVC_BLACKHOLE 3             /* connect refused (EPERM): Istio's BlackHoleCluster */

#define SM_DOM_EXACT 1
#define SM_DOM_SUFFIX 2                /* "*.foo.com": hash of ".foo.com" */
#define SM_DOM_PREFIX 3                /* "foo.*": hash of "foo." */

#define SM_PATH_PREFIX 1
#define SM_PATH_EXACT 2
#define SM_PATH_SEP_PREFIX 3
#define SM_PATH_ANY 4                  /* prefix "" */

#define SM_RULE_NOCASE 1               /* case_sensitive=false: compare lower-cased hashes */
#define SM_RULE_USER 2                 /* has a condition only user space can evaluate */

#define SM_COND_EXACT 1
#define SM_COND_PRESENT 2              /* present (hash/len ignored) */
#define SM_COND_ABSENT 3

#define SM_ACT_CLUSTER 1
#define SM_ACT_WEIGHTED 2
#define SM_ACT_USER 3                  /* direct_response, redirect, needs_slow_path, ... */

#define SM_LB_ROUND_ROBIN 1
#define SM_LB_RANDOM 2
#define SM_LB_LEAST_REQUEST 3

#define SM_CL_USABLE 1                 /* has hosts that can get traffic */
#define SM_CL_EQUAL_WEIGHTS 2
#define SM_CL_USER 4                   /* a limit was exceeded: route in user space */

/* header slots 0..3 are the pseudo-headers; encoder assigns 4.. to real header names */
#define SM_SLOT_METHOD 0
#define SM_SLOT_AUTHORITY 1
#define SM_SLOT_PATH 2
#define SM_SLOT_SCHEME 3

#define SM_SLOT_EMPTY 0                /* pool slot states (64-bit for cmpxchg) */
#define SM_SLOT_IDLE 1
#define SM_SLOT_BUSY 2
#define SM_SLOT_DEAD 3

/* why a request left the fast path; index into sm_counters_v2 */
#define SM_R_FAST 0                    /* routed and dispatched in kernel */
#define SM_R_NOT_HTTP 1                /* TLS ClientHello, h2 preface, garbage */
#define SM_R_PARSE_LIMIT 2             /* head, path or host over the parse limits; a matched
                                        * value (Host, header slot) ending in a space/tab */
#define SM_R_PIPELINED 3               /* bytes after the request in one write */
#define SM_R_POOL_EMPTY 4              /* no idle pooled connection to the endpoint */
#define SM_R_RULE_USER 5               /* a rule the kernel cannot evaluate might win */
#define SM_R_ROUTE_USER 6              /* route action needs user space (needs_slow_path...) */
#define SM_R_NO_ROUTE 7                /* no virtual host or no rule: local reply */
#define SM_R_LIMIT 8                   /* a table limit was exceeded */
#define SM_R_CHUNKED_REQ 9             /* Transfer-Encoding other than chunked, or with CL,
                                        * or a bad chunk size in the first write */
#define SM_R_NO_HOST 10                /* cluster has no usable endpoint */
#define SM_R_STICKY 11                 /* connection is in user-space mode (earlier hand-off) */
#define SM_R_CORKED 12                 /* partial head: waiting for more bytes (not a hand-off) */
#define SM_R_BODY 13                   /* request body continuation redirected in kernel */
#define SM_R_RESP_DONE 14              /* responses framed and completed in kernel */
#define SM_R_RESP_LOST 15              /* response framing failed: pool connection retired */
#define SM_R_POOL_FIN 16               /* a backend closed a pooled connection */
#define SM_R_L4 17                     /* L4 connect rewritten to an endpoint */
#define SM_R_SCRATCH 18                /* per-CPU scratch taken over by another task */
#define SM_R_BLACKHOLE 19              /* connect refused: BlackHoleCluster (REGISTRY_ONLY) */
#define SM_R_RESP_UNMAPPED 20          /* bytes on a pooled connection with no slot mapped to
					* it: left in its own queue, the agent retires it */
#define SM_R_MAX 21

/* ---- structs (explicit padding; ctypes twins in bpf/layout.py) ----------------------------- */

/* a socket as the other side of a splice sees it: the application's local address */
struct sm_sock_key {
	__u32 ip4;      /* net */
	__u32 port;     /* host */
};

struct sm_svc_key {
	__u32 vip;      /* net; 0 = any address on this port */
	__u16 port;     /* net; 0 with vip 0 = any destination no other entry matches */
	__u16 pad;
};

struct sm_service {
	__u32 kind;     /* SM_SVC_* */
	__u32 id;       /* route table id (HTTP) or cluster id (TCP); 0 = none (BLACKHOLE) */
};

struct sm_orig_dst {
	__u32 vip;      /* net */
	__u16 port;     /* net */
	__u16 pad;
	__u32 rt_id;
	__u32 pad2;
};

#define SM_RT_IGNORE_PORT 1            /* ignore_port_in_host_matching */
#define SM_RT_USER 2                   /* host matching exceeds kernel limits: user space */

struct sm_route_table {
	__u32 flags;        /* SM_RT_* */
	__u32 default_vh;   /* the "*" virtual host, 0 = none */
	__u64 suffix_lens[2]; /* bit L: some "*X" domain has len(X) == L */
	__u64 prefix_lens[2]; /* bit L: some "X*" domain has len(X) == L */
};

struct sm_dom_key {
	__u32 rt_id;
	__u16 kind;     /* SM_DOM_* */
	__u16 len;
	__u64 hash;     /* FNV-1a 64 of the lower-cased domain part */
};

struct sm_vhost {
	__u32 first_rule;   /* index into sm_rules_v1 */
	__u32 n_rules;      /* > SM_RULES_PER_VHOST: slow path */
};

struct sm_cond {
	__u64 hash;
	__u16 len;
	__u8 slot;
	__u8 kind;          /* SM_COND_* */
	__u8 invert;
	__u8 pad[3];
};

struct sm_rule {
	__u64 path_hash;
	__u16 path_len;
	__u8 path_kind;     /* SM_PATH_* */
	__u8 flags;         /* SM_RULE_* */
	__u8 n_conds;
	__u8 action;        /* SM_ACT_* */
	__u16 n_weighted;
	__u32 action_id;    /* cluster id, or first index into sm_weighted_v1 */
	__u32 total_weight;
	__u32 rule_id;      /* stable global id (encoder), reported back in sm_client */
	__u32 pad;
	struct sm_cond conds[SM_CONDS_PER_RULE];
};

struct sm_weighted {
	__u32 cluster_id;
	__u32 cum_weight;   /* running sum including this entry */
};

struct sm_cluster {
	__u32 policy;       /* SM_LB_* */
	__u32 flags;        /* SM_CL_* */
	__u32 n_hosts;      /* entries in sm_hosts_v1 (a ring for weighted round robin) */
	__u32 choices;      /* LEAST_REQUEST choice_count */
	__u32 bias;         /* LEAST_REQUEST active_request_bias: 0 or 1 in kernel */
	__u32 pad;
};

struct sm_host {
	__u32 ep_id;
	__u32 weight;
};

struct sm_endpoint {
	__u32 ip4;          /* net */
	__u16 port;         /* net */
	__u16 pad;
};

/* response framing state of one pooled connection (kernel only) */
struct sm_resp {
	__u64 left;         /* body bytes (Content-Length) or chunk bytes still to pass */
	__u64 hash;         /* header name / value hash being built */
	__u32 phase;        /* SM_P_* */
	__u32 line;         /* bytes in the current line */
	__u32 status;
	__u32 flags;        /* SM_RF_* */
	__u32 off;          /* framing position in the current skb (tail-called passes) */
	__u32 passes;       /* passes spent on the current skb */
};

#define SM_P_STATUS 0      /* status line */
#define SM_P_HNAME 1       /* header name */
#define SM_P_HVAL 2        /* header value */
#define SM_P_BODY 3        /* Content-Length body */
#define SM_P_CSIZE 4       /* chunk size line */
#define SM_P_CDATA 5       /* chunk data */
#define SM_P_CCRLF 6       /* CRLF after chunk data */
#define SM_P_TRAILER 7     /* trailer lines after the last chunk */
#define SM_P_DONE 8

#define SM_RF_HEAD 1       /* request was HEAD: no body */
#define SM_RF_CL 2         /* Content-Length seen */
#define SM_RF_CHUNKED 4
#define SM_RF_IN_CL 8      /* current header is content-length */
#define SM_RF_IN_TE 16     /* current header is transfer-encoding */
#define SM_RF_CSEXT 32     /* chunk extension: skip to end of line */
#define SM_RF_LOST 64      /* the backend closed before the response: the agent answers 503 */
#define SM_RF_IN_CONN 128  /* current header is connection */
#define SM_RF_CLOSE 256    /* "connection: close": retire the pooled connection after it */
#define SM_RF_CBAD 512     /* a malformed chunk size line (request: the slow path answers 400) */

/* per application socket; sockops creates it, sk_msg updates it, the slow path clears user */
struct sm_client {
	__u32 vip;          /* net: the service the application connected to */
	__u16 port;         /* net */
	__u16 pad;
	__u32 rt_id;
	__u32 user;         /* 1: bytes go to the agent's socket until the agent clears it */
	__u64 body_left;    /* request body bytes still to forward to body_slot */
	__u32 body_slot;
	__u32 last_rule;    /* for tests and dump: global rule id and cluster of the last */
	__u32 last_cluster; /* request routed in kernel (0 = none) */
	__u32 requests;     /* requests routed in kernel on this connection */
	__u32 body_chunked; /* 1: the request body in flight is chunked, framed by chunk */
	__u32 pad2;
	struct sm_resp chunk; /* chunk framing of that body (SM_P_CSIZE ... SM_P_DONE) */
};

struct sm_slot {
	__u64 state;        /* SM_SLOT_*: claimed with a 64-bit cmpxchg */
	struct sm_sock_key client;  /* whose response this connection carries */
	__u32 ep_id;
	__u32 gen;          /* bumped by the agent each time it puts a new socket here */
	struct sm_resp resp;
};

struct sm_config {
	__u32 splice_ip;    /* net: the agent's splice listener */
	__u16 splice_port;  /* net */
	__u16 pad;
	__u64 build;        /* hash of the sources and flags of the attached programs */
	__u64 agent_cgroup; /* cgroup v2 id of the process owning the datapath's own sockets
			     * (pools, slow path): connect4 leaves its connects alone; 0: none */
};

/* request parser state; kept in map memory so the verifier sees one state per byte */
struct sm_parse {
	__u64 mhash;        /* method */
	__u64 phash;        /* path without query */
	__u64 phashl;       /* the same, lower-cased */
	__u64 fhash;        /* full path incl. query (":path") */
	__u64 nhash;        /* header name being read */
	__u64 vhash;        /* header value being read */
	__u64 hhash;        /* host, lower-cased */
	__u64 cl;           /* Content-Length */
	__u32 st;           /* SM_S_* */
	__u32 mlen;
	__u32 plen;         /* path bytes before '?' */
	__u32 flen;         /* path bytes incl. query */
	__u32 poff;         /* offset of the path in buf */
	__u32 inquery;      /* 1 in the query, 2 in the fragment */
	__u32 fraglen;      /* fragment bytes (excluded from ":path") */
	__u32 nlen;
	__u32 vlen;
	__u32 hoff;         /* offset of the host value in buf */
	__u32 hlen;
	__u32 hcolon;       /* host bytes before its last ':' (0 = no port) */
	__u32 cur;          /* what the current header is: SM_H_* or 0x100 | slot */
	__u32 end;          /* offset just past the blank line; 0 while incomplete */
	__u32 bad;          /* SM_R_* reason when the head cannot be handled in kernel */
	__u32 chunked;
	__u32 has_cl;
	__u32 pos;          /* next byte to parse (tail-called passes) */
	__u32 n;            /* bytes copied into buf */
	__u32 cluster_id;   /* route -> dispatch */
	__u32 rule_id;
	/* loop results kept in map memory: the verifier then does not split states on them */
	__u32 vh;
	__u32 last;         /* last fully matching rule index + 1 */
	__u32 last_user;    /* last rule index + 1 that needs user space to decide */
	__u32 ep_id;        /* endpoint chosen by the weighted least-request passes */
	__u64 lr_total;     /* sum of effective weights (weighted least request) */
	/* the task that owns this CPU's scratch: a preemptible kernel could run another task's
	 * sk_msg on this CPU between two passes; every pass checks before it trusts the data */
	__u64 owner;
	__u32 coff;         /* chunked request body: scan position in the message */
	__u32 cpasses;
	__u32 cmode;        /* 0: first message (head + body start), 1: body continuation */
	__u32 cdone;        /* first message: 1 body complete in it, 2 body continues */
	__u32 cwstart;      /* window of message bytes in buf (loop state kept in memory so */
	__u32 cwlen;        /* the verifier does not track every value of it) */
};

#define SM_S_METHOD 0
#define SM_S_PATH 1
#define SM_S_VERSION 2
#define SM_S_LF 3
#define SM_S_HNAME 4
#define SM_S_HLWS 5
#define SM_S_HVAL 6
#define SM_S_ENDLF 7
#define SM_S_DONE 8

#define SM_H_OTHER 0
#define SM_H_HOST 1
#define SM_H_CL 2
#define SM_H_TE 3
#define SM_H_SLOT 0x100

/* per-CPU scratch for one request (too big for the 512-byte stack) */
struct sm_scratch {
	struct sm_parse p;
	__u8 buf[SM_REQ_BUF];
	__u64 ph[SM_PATH_MASK + 1];      /* FNV of the first i path bytes (no query) */
	__u64 phl[SM_PATH_MASK + 1];     /* the same, lower-cased */
	__u64 hh[SM_HOST_MASK + 1];      /* FNV of the first i host bytes, lower-cased */
	__u64 slot_hash[SM_HDR_SLOTS];
	__u32 slot_len[SM_HDR_SLOTS];
	__u32 slot_seen[SM_HDR_SLOTS];   /* times the header appeared */
};

/* hides a value from the compiler so it keeps the masks and loop bounds the verifier needs
 * (it would otherwise drop a bound it can prove from an earlier check the verifier cannot) */
#define SM_OPAQUE(v) asm volatile("" : "=r"(v) : "0"(v))

/* ---- maps ----------------------------------------------------------------------------------- */
#define SM_PIN(name) SM_PIN_DIR "/" #name
/* hash maps take memory per entry in use, not for max_entries up front (LRU and sockhash
 * maps cannot: they stay preallocated).  Arrays are always preallocated. */
#define SM_HASH_FLAGS BPF_F_NO_PREALLOC

/* a pinned sockhash with the socket helper methods bcc offers for BPF_SOCKHASH; the value is
 * 8 bytes because user-space lookups of a 4-byte sockhash value fail with ENOSPC */
#define SM_SOCKHASH(_name, _key, _max)                                                     \
	struct _name##_table_t {                                                             \
		_key key;                                                                    \
		__u64 leaf;                                                                  \
		int (*update)(_key *, __u64 *);                                              \
		int (*delete)(_key *);                                                       \
		int (*sock_hash_update)(void *, void *, __u64);                              \
		int (*msg_redirect_hash)(void *, void *, __u64);                             \
		int (*sk_redirect_hash)(void *, void *, __u64);                              \
		__u32 max_entries;                                                           \
	};                                                                                   \
	__attribute__((section("maps/sockhash:" SM_PIN(_name)))) struct _name##_table_t _name = \
		{.max_entries = (_max)};                                                     \
	BPF_ANNOTATE_KV_PAIR(_name, _key, __u64)

/* client sock key -> application socket.  Writer: sockops.  sk_msg program attached. */
SM_SOCKHASH(sm_clsocks_v1, struct sm_sock_key, SM_MAX_CLIENTS);
/* slot id -> pooled backend socket.  Writer: agent (bpf/pools.py).  sk_skb verdict attached. */
SM_SOCKHASH(sm_poolsocks_v1, __u32, SM_MAX_SLOTS);

/* 0 -> struct sm_config.  Writer: loader. */
BPF_TABLE_PINNED("array", __u32, struct sm_config, sm_config_v2, 1, SM_PIN(sm_config_v2));
/* VIP:port -> service.  Writer: encoder. */
BPF_TABLE_PINNED("hash", struct sm_svc_key, struct sm_service, sm_services_v1, SM_MAX_SERVICES,
		 SM_PIN(sm_services_v1), SM_HASH_FLAGS);
/* socket cookie -> original destination.  Writer: connect4; reader: sockops. */
BPF_TABLE_PINNED("lru_hash", __u64, struct sm_orig_dst, sm_origdst_v1, SM_MAX_CLIENTS,
		 SM_PIN(sm_origdst_v1));
/* client sock key -> per-connection state.  Writers: sockops (create), sk_msg, agent (user). */
BPF_TABLE_PINNED("lru_hash", struct sm_sock_key, struct sm_client, sm_clients_v2, SM_MAX_CLIENTS,
		 SM_PIN(sm_clients_v2));
/* route table id -> host-matching summary.  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_route_table, sm_rtables_v1, SM_MAX_ROUTE_TABLES,
		 SM_PIN(sm_rtables_v1));
/* (route table, kind, len, hash) -> virtual host id.  Writer: encoder. */
BPF_TABLE_PINNED("hash", struct sm_dom_key, __u32, sm_domains_v1, SM_MAX_DOMAINS,
		 SM_PIN(sm_domains_v1), SM_HASH_FLAGS);
/* virtual host id -> its range in sm_rules_v1.  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_vhost, sm_vhosts_v1, SM_MAX_VHOSTS, SM_PIN(sm_vhosts_v1));
/* rule index -> rule, ranges per virtual host in last-match-wins order.  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_rule, sm_rules_v1, SM_MAX_RULES, SM_PIN(sm_rules_v1));
/* weighted entry index -> (cluster, cumulative weight).  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_weighted, sm_weighted_v1, SM_MAX_WEIGHTED,
		 SM_PIN(sm_weighted_v1));
/* FNV of a lower-cased header name -> header slot (4..SM_HDR_SLOTS-1).  Writer: encoder. */
BPF_TABLE_PINNED("hash", __u64, __u32, sm_hdrslots_v1, 256, SM_PIN(sm_hdrslots_v1),
		 SM_HASH_FLAGS);
/* cluster id -> LB policy and host count.  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_cluster, sm_clusters_v1, SM_MAX_CLUSTERS,
		 SM_PIN(sm_clusters_v1));
/* cluster id * SM_HOSTS_PER_CLUSTER + i -> host (bpf/lb.py plan: the hosts that get traffic;
 * a smooth weighted round-robin ring for weighted ROUND_ROBIN or a priority spill).
 * Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_host, sm_hosts_v1,
		 SM_MAX_CLUSTERS * SM_HOSTS_PER_CLUSTER, SM_PIN(sm_hosts_v1));
/* cluster id -> round-robin position.  Writer: sk_msg and connect4 (atomic add). */
BPF_TABLE_PINNED("array", __u32, __u64, sm_rr_v1, SM_MAX_CLUSTERS, SM_PIN(sm_rr_v1));
/* endpoint id -> address.  Writer: encoder. */
BPF_TABLE_PINNED("array", __u32, struct sm_endpoint, sm_endpoints_v1, SM_MAX_ENDPOINTS,
		 SM_PIN(sm_endpoints_v1));
/* endpoint id -> pool slots set up (slots ep*SM_POOL_PER_ENDPOINT + [0, n)).  Writer: agent. */
BPF_TABLE_PINNED("array", __u32, __u32, sm_eppool_v1, SM_MAX_ENDPOINTS, SM_PIN(sm_eppool_v1));
/* endpoint id -> active requests.  Writers: sk_msg (+1 on dispatch), sk_skb (-1 on done). */
BPF_TABLE_PINNED("array", __u32, __u64, sm_epactive_v1, SM_MAX_ENDPOINTS, SM_PIN(sm_epactive_v1));
/* endpoint id -> times no idle slot was found.  Writer: sk_msg; reader: agent (pool growth). */
BPF_TABLE_PINNED("array", __u32, __u64, sm_epmiss_v1, SM_MAX_ENDPOINTS, SM_PIN(sm_epmiss_v1));
/* slot id -> pooled connection state.  Writers: agent (fill/replace), sk_msg (claim), sk_skb. */
BPF_TABLE_PINNED("array", __u32, struct sm_slot, sm_slots_v1, SM_MAX_SLOTS, SM_PIN(sm_slots_v1));
/* pooled socket's local address -> slot id.  Writer: agent.  Reader: sk_skb. */
BPF_TABLE_PINNED("hash", struct sm_sock_key, __u32, sm_poolports_v1, SM_MAX_SLOTS,
		 SM_PIN(sm_poolports_v1), SM_HASH_FLAGS);
/* SM_TAIL_* -> program.  Writer: loader.  The parser and framer run as tail-called passes
 * because the verifier's branch stack (8192) cannot hold one long byte loop. */
BPF_TABLE_PINNED("prog", __u32, __u32, sm_msgprogs_v1, 8, SM_PIN(sm_msgprogs_v1));
BPF_TABLE_PINNED("prog", __u32, __u32, sm_skbprogs_v1, 4, SM_PIN(sm_skbprogs_v1));
#define SM_TAIL_PARSE 0    /* sm_msgprogs_v1: sm_msg_parse */
#define SM_TAIL_ROUTE 1    /* sm_msgprogs_v1: sm_msg_route */
#define SM_TAIL_DISPATCH 2 /* sm_msgprogs_v1: sm_msg_dispatch */
#define SM_TAIL_RULES 3    /* sm_msgprogs_v1: sm_msg_rules */
#define SM_TAIL_LRSUM 4    /* sm_msgprogs_v1: sm_msg_lr_sum */
#define SM_TAIL_LRPICK 5   /* sm_msgprogs_v1: sm_msg_lr_pick */
#define SM_TAIL_CHUNKS 6   /* sm_msgprogs_v1: sm_msg_chunks */
#define SM_TAIL_FRAME 0    /* sm_skbprogs_v1: sm_skb_frame */

/* reason -> count (per CPU).  Writers: all programs. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, sm_counters_v2, SM_R_MAX, SM_PIN(sm_counters_v2));
/* nesting level -> response bytes being framed.  Writer: sk_skb.  Separate from
 * sm_scratch_v1 because sk_skb runs in softirq and can interrupt an sk_msg pass on the same
 * CPU.  sk_skb itself runs in softirq and also in process context, when a pooled socket's
 * backlog is processed at release_sock with softirqs enabled: a softirq (or, preemptible, a
 * task) can then run sk_skb for another pooled socket on the same CPU mid-pass, so each
 * nesting level (sm_skbdepth_v1) frames in a window of its own. */
#define SM_WIN_LEVELS 4              /* sk_skb runs nested on one CPU; deeper ones retire */
struct sm_win {
	__u8 buf[2 * SM_RESP_WIN]; /* the length mask lets the verifier see up to 2x */
};
BPF_TABLE_PINNED("percpu_array", __u32, struct sm_win, sm_skbwin_v2, SM_WIN_LEVELS,
		 SM_PIN(sm_skbwin_v2));
/* 0 -> sk_skb framing passes running on this CPU (the next one's window level). */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, sm_skbdepth_v1, 1, SM_PIN(sm_skbdepth_v1));
/* 0 -> scratch for the request being parsed.  Writer: sk_msg (process context only). */
BPF_TABLE_PINNED("percpu_array", __u32, struct sm_scratch, sm_scratch_v1, 1, SM_PIN(sm_scratch_v1));

/* Per-route request counts.  sk_msg records the rule and cluster of each dispatch beside the
 * slot (a map of its own, so struct sm_slot and sm_slots_v1 keep their layout); sk_skb counts
 * the request when its response is complete, by the response's status class. */
#define SM_MAX_REQSTATS 65536        /* (rule, cluster, endpoint, class) combinations counted */
struct sm_slot_route {
	__u32 rule_id;      /* global rule id (index in sm_rules_v1 + 1); 0 = none */
	__u32 cluster_id;
};
struct sm_reqstat_key {
	__u32 rule_id;      /* global rule id; the agent maps it to route config/vhost/route */
	__u32 cluster_id;
	__u32 ep_id;
	__u32 resp_class;   /* response status / 100 (1..5); 0 = outside 100..599 */
};
/* slot id -> route of the request it carries.  Writer: sk_msg (dispatch).  Reader: sk_skb. */
BPF_TABLE_PINNED("array", __u32, struct sm_slot_route, sm_slotroute_v1, SM_MAX_SLOTS,
		 SM_PIN(sm_slotroute_v1));
/* (rule, cluster, endpoint, status class) -> completed responses (per CPU).  Writer: sk_skb. */
BPF_TABLE_PINNED("percpu_hash", struct sm_reqstat_key, __u64, sm_reqstats_v1, SM_MAX_REQSTATS,
		 SM_PIN(sm_reqstats_v1), SM_HASH_FLAGS);

static __always_inline void sm_count(__u32 reason)
{
	__u64 *c = sm_counters_v2.lookup(&reason);
	if (c)
		*c += 1;
}

#endif /* SOCKMESH_H */
