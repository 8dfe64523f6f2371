/* sk_skb.bpf.c - sk_skb stream verdict on pooled backend sockets (sm_poolsocks_v1).
 *
 * No stream parser: each skb arrives as the backend sent it, and a backend's FIN arrives as a
 * zero-length skb (with a parser neither holds).  Responses are framed by counting bytes:
 * the head a line at a time (status code, Content-Length, Transfer-Encoding, Connection;
 * other lines skipped a word at a time, byte by byte where a line is cut by the skb's end:
 * http_frame.h), then the body in runs (Content-Length) or chunk by chunk; HEAD, 1xx, 204
 * and 304 carry none.
 * Every skb is redirected with BPF_F_INGRESS into the receive queue of the application socket
 * that sent the request; when the response is complete the slot goes back to idle and the
 * endpoint's active-request count drops.
 *
 * What the redirect costs, and why it stays: the kernel delivers every sk_skb redirect into
 * another socket from that socket's sk_psock backlog worker (a kworker wake-up per response),
 * not inline.  At a low request rate that hand-off alone adds about as much latency as the
 * issue's whole budget (a tenth of what Envoy adds); the bench measures it beside sockmesh
 * with trivial programs (integration/bench/bare_relay.bpf.c), and the alternative without
 * any redirect, the endpoint chosen at connect time (an L4 service), adds next to nothing
 * but cannot route each request of a keep-alive connection, which is the point of this
 * datapath.  So the design keeps the redirect; see bpf/README.md, "Measured here".
 *
 * sm_sk_skb (attached) finds the slot and frames a first pass of SM_RESP_STEPS steps (a
 * step: a line's first bytes, up to three words of a skipped line, a header value's word, a
 * byte, or a body run); sm_skb_frame (tail-called) frames the further passes an skb needs,
 * calling itself until the skb is consumed.
 */
#include "sockmesh.h"
#include "http_parse.h"
#include "http_frame.h"

/* releases a slot: the response is complete or the connection is gone */
static __always_inline void sm_slot_release(struct sm_slot *sl, __u64 state)
{
	__u32 ep_id = sl->ep_id;
	__u64 *active = sm_epactive_v1.lookup(&ep_id);
	if (active && *active)
		__sync_fetch_and_add(active, -1);
	sl->state = state;
}

/* counts a completed response by route, cluster, endpoint and status class */
static __always_inline void sm_count_request(struct sm_slot *sl, __u32 sid)
{
	struct sm_slot_route *sr = sm_slotroute_v1.lookup(&sid);
	if (!sr)
		return;
	struct sm_reqstat_key k = {.rule_id = sr->rule_id, .cluster_id = sr->cluster_id,
				   .ep_id = sl->ep_id};
	__u32 cls = sl->resp.status / 100;
	k.resp_class = (cls >= 1 && cls <= 5) ? cls : 0;
	__u64 zero = 0;
	__u64 *n = sm_reqstats_v1.lookup_or_try_init(&k, &zero);
	if (n)
		__sync_fetch_and_add(n, 1); /* sk_skb also runs from release_sock, interruptible */
}

static __always_inline struct sm_slot *sm_skb_slot(struct __sk_buff *skb, __u32 *sid)
{
	struct sm_sock_key pk = {.ip4 = skb->local_ip4, .port = skb->local_port};
	__u32 *sidp = sm_poolports_v1.lookup(&pk);
	if (!sidp)
		return 0;
	*sid = *sidp;
	return sm_slots_v1.lookup(sid);
}

/* Looks the counter up again rather than keeping sm_frame's pointer live across its loop,
 * which would add to what the verifier tracks in every step. */
static __always_inline void sm_depth_add(__s64 d)
{
	__u32 zero = 0;
	__u64 *depth = sm_skbdepth_v1.lookup(&zero);
	if (depth)
		__sync_fetch_and_add(depth, d);
}

/* Retires the slot and delivers the skb unframed: the client gets the bytes, the pooled
 * connection is not reused (nobody knows where its response ends). */
static __always_inline int sm_unframed(struct __sk_buff *skb, struct sm_slot *sl)
{
	struct sm_sock_key client = sl->client;
	sm_slot_release(sl, SM_SLOT_DEAD);
	sm_count(SM_R_RESP_LOST);
	return sm_clsocks_v1.sk_redirect_hash(skb, &client, BPF_F_INGRESS);
}

/* One framing pass over the skb from r->off (SM_RESP_STEPS steps), then the next pass (a
 * tail call) or the verdict: redirect to the client, release the slot when the response
 * is complete. */
static __always_inline int sm_frame(struct __sk_buff *skb, struct sm_slot *sl, __u32 sid)
{
	__u32 zero = 0;
	__u64 *depth = sm_skbdepth_v1.lookup(&zero);
	if (!depth)
		return SK_DROP;
	__u32 level = __sync_fetch_and_add(depth, 1); /* the window of this nesting level */
	struct sm_win *s = sm_skbwin_v2.lookup(&level);
	if (!s) {
		sm_depth_add(-1);
		return sm_unframed(skb, sl); /* nested deeper than SM_WIN_LEVELS */
	}
	struct sm_resp *r = &sl->resp;
	__u32 len = skb->len;
	__u32 wstart = 0, wlen = 0; /* skb bytes [wstart, wstart + wlen) are in s->buf */
	for (__u32 step = 0; step < SM_RESP_STEPS; step++) {
		SM_OPAQUE(step); /* no trip-count rewrite: keep the bound */
		/* the position lives in map memory: the verifier sees one unknown offset per
		 * step, not one value per path taken so far (each walked on its own) */
		__u32 off = *(volatile __u32 *)&r->off;
		if (off >= len || r->phase == SM_P_DONE)
			break;
		__u32 ph = r->phase;
		if (ph == SM_P_BODY || ph == SM_P_CDATA) {
			__u64 take = len - off;
			if (take > r->left)
				take = r->left;
			r->off = off + take;
			r->left -= take;
			if (r->left == 0)
				r->phase = ph == SM_P_BODY ? SM_P_DONE : SM_P_CCRLF;
			continue;
		}
		/* a window that holds SM_RESP_LOOK bytes from off where the skb has them; a
		 * reload is a step of its own: the verifier walks a step once, not once with
		 * and once without it */
		__u32 wend = wstart + wlen;
		if (wlen == 0 || off < wstart || off >= wend ||
		    (off + SM_RESP_LOOK > wend && wend < len)) {
			wstart = off;
			wlen = len - off;
			if (wlen > SM_RESP_WIN)
				wlen = SM_RESP_WIN;
			SM_OPAQUE(wlen);
			wlen &= 2 * SM_RESP_WIN - 1;
			if (wlen < 1 || bpf_skb_load_bytes(skb, off, s->buf, wlen))
				break;
			continue;
		}
		const __u8 *p = s->buf + ((off - wstart) & (SM_RESP_WIN - 1));
		r->off = off + sm_resp_step(r, p, wend - off, ph);
	}
	sm_depth_add(-1); /* the window is not carried into the next pass */
	__u32 off = r->off;
	if (off < len && r->phase != SM_P_DONE && r->passes < SM_RESP_PASSES) {
		r->passes += 1;
		sm_skbprogs_v1.call(skb, SM_TAIL_FRAME);
	}

	/* read before the release: a new dispatch may take the slot at once */
	struct sm_sock_key client = sl->client;
	if (r->phase == SM_P_DONE) {
		if (r->status == 0xffff || off < len)
			return sm_unframed(skb, sl); /* unframed or extra bytes: do not guess */
		/* counted before the release: a new dispatch may reuse the slot at once */
		sm_count_request(sl, sid);
		/* "connection: close": the backend is about to close it, do not reuse it */
		sm_slot_release(sl, (r->flags & SM_RF_CLOSE) ? SM_SLOT_DEAD : SM_SLOT_IDLE);
		sm_count(SM_R_RESP_DONE);
	} else if (off < len) {
		return sm_unframed(skb, sl); /* framing budget exhausted */
	}
	return sm_clsocks_v1.sk_redirect_hash(skb, &client, BPF_F_INGRESS);
}

int sm_sk_skb(struct __sk_buff *skb)
{
	__u32 sid;
	struct sm_slot *sl = sm_skb_slot(skb, &sid);
	if (!sl) {
		/* a pooled connection with no slot mapped to it (the mapping is written after the
		 * socket enters the sockhash, and a lost one is a bug): the bytes stay in its own
		 * queue; the count tells the agent, which finds the connection and retires it */
		if (skb->len)
			sm_count(SM_R_RESP_UNMAPPED);
		return SK_PASS;
	}
	if (skb->len == 0) {
		/* the backend closed this pooled connection: the agent replaces it */
		if (sl->state == SM_SLOT_BUSY) {
			sl->resp.flags |= SM_RF_LOST; /* nobody else will answer this client */
			sm_slot_release(sl, SM_SLOT_DEAD);
		} else {
			sl->state = SM_SLOT_DEAD;
		}
		sm_count(SM_R_POOL_FIN);
		return SK_PASS;
	}
	if (sl->state != SM_SLOT_BUSY) {
		sm_count(SM_R_RESP_LOST); /* bytes nobody asked for */
		return SK_DROP;
	}
	sl->resp.off = 0;
	sl->resp.passes = 0;
	return sm_frame(skb, sl, sid); /* the first pass runs here: no tail call for most */
}

int sm_skb_frame(struct __sk_buff *skb)
{
	__u32 sid;
	struct sm_slot *sl = sm_skb_slot(skb, &sid);
	if (!sl)
		return SK_DROP;
	return sm_frame(skb, sl, sid);
}
