/* sk_msg.bpf.c - sk_msg verdict on application sockets (sm_clsocks_v1).
 *
 * Runs inside the application's sendmsg().  For each HTTP/1.1 request: parse the head, route
 * it (route.h), pick an endpoint (lb.h), claim an idle pooled connection to it with a 64-bit
 * compare-and-swap, remember which client the response belongs to, and redirect the bytes to
 * the pooled socket's egress.  Whatever cannot be done here is passed (SK_PASS without a
 * redirect) to the agent's end of the connection, and the connection stays with the agent
 * until it has answered (sm_client.user).  sm_counters_v2 says how often and why.
 *
 * Five programs, chained by tail calls through sm_msgprogs_v1: sm_sk_msg (attached: body
 * continuation, copy of the head) -> sm_msg_parse (SM_PARSE_STEP bytes per pass, calls
 * itself) [-> sm_msg_chunks for a chunked body] -> sm_msg_route (virtual host) -> sm_msg_rules (rules, cluster) -> sm_msg_dispatch (endpoint by LB
 * policy, claim a pooled connection, redirect).
 */
#include "sockmesh.h"
#include "http_parse.h"
#include "http_frame.h"
#include "route.h"
#define SM_LB_PER_REQUEST 1 /* lb.h: LEAST_REQUEST spill rings go to user space */
#include "lb.h"


static __always_inline int sm_scratch_mine(struct sm_scratch *s)
{
	return s->p.owner == bpf_get_current_pid_tgid();
}

static __always_inline int sm_to_user(struct sm_client *cl, __u32 reason)
{
	cl->user = 1;
	sm_count(reason);
	return SK_PASS;
}

/* Claims an idle pooled connection to ep_id; returns slot id + 1, or 0. */
static __always_inline __u32 sm_claim_slot(__u32 ep_id)
{
	__u32 *np = sm_eppool_v1.lookup(&ep_id);
	__u32 n = np ? *np : 0;
	for (__u32 j = 0; j < SM_POOL_PER_ENDPOINT; j++) {
		SM_OPAQUE(j); /* no trip-count rewrite: keep the bound */
		if (j >= n)
			break;
		__u32 sid = ep_id * SM_POOL_PER_ENDPOINT + j;
		struct sm_slot *sl = sm_slots_v1.lookup(&sid);
		if (!sl)
			break;
		if (sl->state != SM_SLOT_IDLE)
			continue;
		if (__sync_val_compare_and_swap(&sl->state, SM_SLOT_IDLE, SM_SLOT_BUSY) ==
		    SM_SLOT_IDLE)
			return sid + 1;
	}
	__u64 *miss = sm_epmiss_v1.lookup(&ep_id);
	if (miss)
		__sync_fetch_and_add(miss, 1);
	return 0;
}

static __always_inline struct sm_client *sm_msg_client(struct sk_msg_md *msg,
							 struct sm_sock_key *key)
{
	key->ip4 = msg->local_ip4;
	key->port = msg->local_port;
	return sm_clients_v2.lookup(key);
}

/* sm_to_user for the passes that do not need the connection's state to go on (parse, rules,
 * the least-request passes): they look it up only to hand the connection over, which keeps
 * an LRU hash lookup per pass off the path of every request the kernel routes */
static __always_inline int sm_msg_to_user(struct sk_msg_md *msg, __u32 reason)
{
	struct sm_sock_key key = {};
	struct sm_client *cl = sm_msg_client(msg, &key);
	if (!cl)
		return SK_PASS;
	return sm_to_user(cl, reason);
}

int sm_sk_msg(struct sk_msg_md *msg)
{
	struct sm_sock_key key = {};
	struct sm_client *cl = sm_msg_client(msg, &key);
	if (!cl)
		return SK_PASS;
	if (cl->user) {
		sm_count(SM_R_STICKY);
		return SK_PASS;
	}
	__u32 size = msg->size;

	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!s)
		return SK_PASS;

	/* chunked body of a request already dispatched: frame it, same pooled connection */
	if (cl->body_chunked) {
		s->p.owner = bpf_get_current_pid_tgid();
		s->p.coff = 0;
		s->p.cpasses = 0;
		s->p.cmode = 1;
		sm_msgprogs_v1.call(msg, SM_TAIL_CHUNKS);
		return SK_DROP; /* cannot happen: the program array is filled before attach */
	}

	/* body of a request already dispatched: same pooled connection */
	if (cl->body_left) {
		__u32 sid = cl->body_slot;
		if (size > cl->body_left) {
			bpf_msg_apply_bytes(msg, cl->body_left); /* the rest runs as a new request */
			cl->body_left = 0;
		} else {
			cl->body_left -= size;
		}
		sm_count(SM_R_BODY);
		return sm_poolsocks_v1.msg_redirect_hash(msg, &sid, 0);
	}

	__u32 n = size;
	if (n > SM_REQ_BUF)
		n = SM_REQ_BUF;
	if (n == 0 || bpf_msg_pull_data(msg, 0, n, 0))
		return sm_to_user(cl, SM_R_PARSE_LIMIT);
	void *data = (void *)(long)msg->data;
	void *data_end = (void *)(long)msg->data_end;
	if (data + n > data_end)
		return sm_to_user(cl, SM_R_PARSE_LIMIT);
	if (bpf_probe_read_kernel(s->buf, n & (2 * SM_REQ_BUF - 1), data))
		return sm_to_user(cl, SM_R_NOT_HTTP);

	__builtin_memset(&s->p, 0, sizeof(s->p));
	s->p.owner = bpf_get_current_pid_tgid();
	s->p.n = n;
	s->p.mhash = SM_FNV_OFFSET;
	s->p.phash = SM_FNV_OFFSET;
	s->p.phashl = SM_FNV_OFFSET;
	s->p.fhash = SM_FNV_OFFSET;
	s->ph[0] = SM_FNV_OFFSET;
	s->phl[0] = SM_FNV_OFFSET;
	s->hh[0] = SM_FNV_OFFSET;
	for (__u32 k = 0; k < SM_HDR_SLOTS; k++)
		s->slot_seen[k] = 0;
	sm_msgprogs_v1.call(msg, SM_TAIL_PARSE);
	return sm_to_user(cl, SM_R_LIMIT); /* tail call failed */
}

int sm_msg_parse(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_msg_to_user(msg, SM_R_SCRATCH);
	__u32 start = s->p.pos;
	__u32 n = s->p.n;
	for (__u32 k = 0; k < SM_PARSE_STEP; k++) {
		SM_OPAQUE(k); /* no trip-count rewrite: keep the bound */
		__u32 i = start + k;
		if (i >= n || s->p.bad || s->p.st == SM_S_DONE)
			break;
		sm_parse_byte(s, i, s->buf[SM_MASK(i)]);
		s->p.pos = i + 1;
	}
	if (s->p.bad)
		return sm_msg_to_user(msg, s->p.bad);
	if (s->p.st != SM_S_DONE) {
		if (s->p.pos < n) {
			sm_msgprogs_v1.call(msg, SM_TAIL_PARSE);
			return sm_msg_to_user(msg, SM_R_LIMIT);
		}
		if (msg->size >= SM_REQ_BUF)
			return sm_msg_to_user(msg, SM_R_PARSE_LIMIT);
		/* head spans writes: hold the bytes and run again when more arrive */
		bpf_msg_cork_bytes(msg, msg->size + 1);
		sm_count(SM_R_CORKED);
		return SK_PASS;
	}
	if (s->p.chunked) {
		/* RFC 9112: only "chunked" is framed here, and never together with a length */
		if (s->p.chunked != 1 || s->p.has_cl)
			return sm_msg_to_user(msg, SM_R_CHUNKED_REQ);
		struct sm_sock_key key = {};
		struct sm_client *cl = sm_msg_client(msg, &key);
		if (!cl)
			return SK_PASS;
		__builtin_memset(&cl->chunk, 0, sizeof(cl->chunk));
		cl->chunk.phase = SM_P_CSIZE;
		s->p.coff = s->p.end;
		s->p.cpasses = 0;
		s->p.cmode = 0;
		sm_msgprogs_v1.call(msg, SM_TAIL_CHUNKS);
		return sm_msg_to_user(msg, SM_R_LIMIT);
	}
	sm_msgprogs_v1.call(msg, SM_TAIL_ROUTE);
	return sm_msg_to_user(msg, SM_R_LIMIT);
}

/* Frames a chunked request body: in the first message from the end of the head (then
 * routes), in later messages from their start (then forwards to the same connection). */
int sm_msg_chunks(struct sk_msg_md *msg)
{
	struct sm_sock_key key = {};
	struct sm_client *cl = sm_msg_client(msg, &key);
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!cl || !s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_to_user(cl, SM_R_SCRATCH);
	struct sm_resp *r = &cl->chunk;
	__u32 size = msg->size;
	volatile __u32 *offp = &s->p.coff, *wsp = &s->p.cwstart, *wlp = &s->p.cwlen;
	*wlp = 0;
	for (__u32 step = 0; step < SM_RESP_STEPS; step++) {
		SM_OPAQUE(step);
		__u32 off = *offp;
		if (off >= size || r->phase == SM_P_DONE)
			break;
		if (r->phase == SM_P_CDATA) {
			__u64 take = size - off;
			if (take > r->left)
				take = r->left;
			*offp = off + take;
			r->left -= take;
			if (r->left == 0)
				r->phase = SM_P_CCRLF;
			continue;
		}
		__u32 wstart = *wsp, wlen = *wlp;
		if (wlen == 0 || off < wstart || off >= wstart + wlen) {
			wstart = off;
			wlen = size - off;
			if (wlen > SM_RESP_WIN)
				wlen = SM_RESP_WIN;
			if (bpf_msg_pull_data(msg, off, off + wlen, 0))
				break;
			void *data = (void *)(long)msg->data;
			void *data_end = (void *)(long)msg->data_end;
			SM_OPAQUE(wlen);
			wlen &= 2 * SM_RESP_WIN - 1;
			if (wlen < 1 || data + wlen > data_end ||
			    bpf_probe_read_kernel(s->buf, wlen, data))
				break;
			*wsp = wstart;
			*wlp = wlen;
		}
		sm_chunk_byte(r, s->buf[(off - wstart) & (SM_RESP_WIN - 1)]);
		*offp = off + 1;
	}
	__u32 off = *offp;
	if (off < size && r->phase != SM_P_DONE && s->p.cpasses < SM_RESP_PASSES) {
		s->p.cpasses += 1;
		sm_msgprogs_v1.call(msg, SM_TAIL_CHUNKS);
	}
	int done = r->phase == SM_P_DONE;
	if (s->p.cmode == 0) {
		/* first message: decide before anything is dispatched */
		if (r->flags & SM_RF_CBAD)
			return sm_to_user(cl, SM_R_CHUNKED_REQ); /* the slow path answers 400 */
		if (!done && off < size)
			return sm_to_user(cl, SM_R_LIMIT); /* more chunk lines than the passes frame */
		if (done && off < size)
			return sm_to_user(cl, SM_R_PIPELINED);
		s->p.cdone = done ? 1 : 2;
		sm_msgprogs_v1.call(msg, SM_TAIL_ROUTE);
		return sm_to_user(cl, SM_R_LIMIT);
	}
	/* continuation: the bytes belong to the request already on body_slot */
	__u32 sid = cl->body_slot;
	if (done) {
		cl->body_chunked = 0;
		if (off < size)
			bpf_msg_apply_bytes(msg, off); /* the rest runs as a new request */
	} else if (off < size) {
		/* framing budget exhausted mid-message: forward, and stop framing this body */
		cl->body_chunked = 0;
		sm_count(SM_R_LIMIT);
	}
	sm_count(SM_R_BODY);
	return sm_poolsocks_v1.msg_redirect_hash(msg, &sid, 0);
}

int sm_msg_route(struct sk_msg_md *msg)
{
	struct sm_sock_key key = {};
	struct sm_client *cl = sm_msg_client(msg, &key);
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!cl || !s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_to_user(cl, SM_R_SCRATCH);
	__u32 size = msg->size;
	__u64 total = s->p.chunked ? size : (__u64)s->p.end + s->p.cl; /* chunked: framed above */
	if (size > total)
		return sm_to_user(cl, SM_R_PIPELINED);
	sm_slot_set(s, SM_SLOT_SCHEME, SM_HASH_SCHEME_HTTP, 4);

	/* route: service's table -> virtual host -> last matching rule -> cluster */
	__u32 reason = SM_R_NO_ROUTE;
	__u32 rt_id = cl->rt_id;
	struct sm_route_table *rt = sm_rtables_v1.lookup(&rt_id);
	if (!rt || s->p.hlen == 0)
		return sm_to_user(cl, SM_R_NO_ROUTE);
	if (rt->flags & SM_RT_USER)
		return sm_to_user(cl, SM_R_LIMIT);
	__u32 vh_id = sm_find_vhost(s, rt_id, rt);
	if (!vh_id)
		return sm_to_user(cl, SM_R_NO_ROUTE);
	s->p.vh = vh_id;
	sm_msgprogs_v1.call(msg, SM_TAIL_RULES);
	return sm_to_user(cl, SM_R_LIMIT);
}

int sm_msg_rules(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_msg_to_user(msg, SM_R_SCRATCH);
	__u32 reason = SM_R_NO_ROUTE;
	__u32 vh_id = s->p.vh;
	struct sm_vhost *vh = sm_vhosts_v1.lookup(&vh_id);
	if (!vh)
		return sm_msg_to_user(msg, SM_R_NO_ROUTE);
	__u32 ridx = sm_match_rules(s, vh, &reason);
	if (!ridx)
		return sm_msg_to_user(msg, reason);
	ridx -= 1;
	struct sm_rule *r = sm_rules_v1.lookup(&ridx);
	if (!r)
		return sm_msg_to_user(msg, SM_R_NO_ROUTE);
	__u32 cluster_id = sm_rule_cluster(r, &reason);
	if (!cluster_id)
		return sm_msg_to_user(msg, reason);
	s->p.cluster_id = cluster_id;
	s->p.rule_id = r->rule_id;
	sm_msgprogs_v1.call(msg, SM_TAIL_DISPATCH);
	return sm_msg_to_user(msg, SM_R_LIMIT);
}

int sm_msg_dispatch(struct sk_msg_md *msg)
{
	struct sm_sock_key key = {};
	struct sm_client *cl = sm_msg_client(msg, &key);
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!cl || !s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_to_user(cl, SM_R_SCRATCH);
	__u32 size = msg->size;
	__u64 total = s->p.chunked ? size : (__u64)s->p.end + s->p.cl;
	__u32 reason = SM_R_NO_HOST;
	__u32 cluster_id = s->p.cluster_id;
	__u32 ep_id = s->p.ep_id;
	if (!ep_id) {
		ep_id = sm_pick_endpoint(cluster_id, &reason);
		if (ep_id == SM_PICK_SCAN) {
			sm_msgprogs_v1.call(msg, SM_TAIL_LRSUM);
			return sm_to_user(cl, SM_R_LIMIT);
		}
	}
	if (!ep_id)
		return sm_to_user(cl, reason);

	/* dispatch on an idle pooled connection */
	__u32 sid = sm_claim_slot(ep_id);
	if (!sid)
		return sm_to_user(cl, SM_R_POOL_EMPTY);
	sid -= 1;
	struct sm_slot *sl = sm_slots_v1.lookup(&sid);
	if (!sl)
		return sm_to_user(cl, SM_R_POOL_EMPTY);
	sl->client = key;
	sl->ep_id = ep_id;
	__builtin_memset(&sl->resp, 0, sizeof(sl->resp));
	if (s->p.mhash == SM_HASH_HEAD)
		sl->resp.flags = SM_RF_HEAD;
	__u64 *active = sm_epactive_v1.lookup(&ep_id);
	if (active)
		__sync_fetch_and_add(active, 1);
	if (total > size) {
		cl->body_left = total - size;
		cl->body_slot = sid;
	}
	if (s->p.chunked && s->p.cdone == 2) {
		cl->body_chunked = 1; /* later messages are framed by sm_msg_chunks */
		cl->body_slot = sid;
	}
	if (!sm_scratch_mine(s)) {
		if (active)
			__sync_fetch_and_add(active, -1);
		sl->state = SM_SLOT_IDLE;
		return sm_to_user(cl, SM_R_SCRATCH);
	}
	cl->last_rule = s->p.rule_id;
	cl->last_cluster = cluster_id;
	cl->requests += 1;
	struct sm_slot_route *sr = sm_slotroute_v1.lookup(&sid);
	if (sr) {
		sr->rule_id = s->p.rule_id;
		sr->cluster_id = cluster_id;
	}
	if (sm_poolsocks_v1.msg_redirect_hash(msg, &sid, 0) != SK_PASS) {
		/* the pooled socket vanished: retire the slot, let user space answer */
		if (active)
			__sync_fetch_and_add(active, -1);
		sl->state = SM_SLOT_DEAD;
		cl->body_left = 0;
		cl->body_chunked = 0;
		return sm_to_user(cl, SM_R_POOL_EMPTY);
	}
	sm_count(SM_R_FAST);
	return SK_PASS;
}

int sm_msg_lr_sum(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_msg_to_user(msg, SM_R_SCRATCH);
	s->p.lr_total = sm_lr_total(s->p.cluster_id);
	sm_msgprogs_v1.call(msg, SM_TAIL_LRPICK);
	return sm_msg_to_user(msg, SM_R_LIMIT);
}

int sm_msg_lr_pick(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct sm_scratch *s = sm_scratch_v1.lookup(&zero);
	if (!s)
		return SK_PASS;
	if (!sm_scratch_mine(s))
		return sm_msg_to_user(msg, SM_R_SCRATCH);
	__u32 ep = sm_lr_pick(s->p.cluster_id, s->p.lr_total);
	if (!ep)
		return sm_msg_to_user(msg, SM_R_NO_HOST);
	s->p.ep_id = ep;
	sm_msgprogs_v1.call(msg, SM_TAIL_DISPATCH);
	return sm_msg_to_user(msg, SM_R_LIMIT);
}
