/* sk_skb.bpf.c - sk_skb stream verdict on pooled backend sockets (sm_poolsocks_v1).
 *
 * No stream parser: each skb arrives as the backend sent it, and a backend's FIN arrives as a
 * zero-length skb (with a parser neither holds).  Responses are framed by counting bytes:
 * the status line and headers byte by byte (status, Content-Length, Transfer-Encoding), then
 * the body in runs (Content-Length) or chunk by chunk; HEAD, 1xx, 204 and 304 carry none.
 * Every skb is redirected with BPF_F_INGRESS into the receive queue of the application socket
 * that sent the request; when the response is complete the slot goes back to idle and the
 * endpoint's active-request count drops.
 *
 * sm_sk_skb (attached) finds the slot and tail-calls sm_skb_frame, which frames
 * SM_RESP_STEPS steps per pass and calls itself until the skb is consumed.
 */
#include "sockmesh.h"
#include "http_parse.h"

static __always_inline int sm_hexval(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = sm_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* end of a response head: decide how its body is framed */
static __always_inline void sm_head_done(struct sm_resp *r)
{
	__u32 st = r->status;
	if (st >= 100 && st < 200) {
		/* interim response (100 Continue): the final one follows */
		r->phase = SM_P_STATUS;
		r->status = 0;
		r->flags &= SM_RF_HEAD;
		r->left = 0;
	} else if ((r->flags & SM_RF_HEAD) || st == 204 || st == 304) {
		r->phase = SM_P_DONE;
	} else if (r->flags & SM_RF_CHUNKED) {
		r->phase = SM_P_CSIZE;
		r->left = 0;
	} else if (r->flags & SM_RF_CL) {
		r->phase = r->left ? SM_P_BODY : SM_P_DONE;
	} else {
		r->phase = SM_P_DONE; /* close-delimited: not framed here, see SM_R_RESP_LOST */
		r->status = 0xffff;
	}
	r->line = 0;
	r->hash = SM_FNV_OFFSET;
}

static __always_inline void sm_resp_byte(struct sm_resp *r, __u8 c)
{
	__u32 ph = r->phase;
	if (ph == SM_P_STATUS) {
		/* "HTTP/1.1 200 OK": status digits at 9..11 */
		if (r->line >= 9 && r->line < 12 && c >= '0' && c <= '9')
			r->status = r->status * 10 + (c - '0');
		r->line += 1;
		if (c == '\n') {
			r->phase = SM_P_HNAME;
			r->line = 0;
			r->hash = SM_FNV_OFFSET;
		}
		return;
	}
	if (ph == SM_P_HNAME) {
		if (c == '\n') {
			if (r->line <= 1)
				sm_head_done(r);
			else
				r->line = 0; /* malformed header line without ':' */
			return;
		}
		r->line += 1;
		if (c == ':') {
			r->flags &= ~(SM_RF_IN_CL | SM_RF_IN_TE);
			if (r->hash == SM_HASH_CONTENT_LENGTH) {
				r->flags |= SM_RF_IN_CL | SM_RF_CL;
				r->left = 0;
			} else if (r->hash == SM_HASH_TRANSFER_ENCODING) {
				r->flags |= SM_RF_IN_TE;
			}
			r->phase = SM_P_HVAL;
			r->hash = SM_FNV_OFFSET;
		} else if (c != '\r') {
			r->hash = sm_fnv(r->hash, sm_lower(c));
		}
		return;
	}
	if (ph == SM_P_HVAL) {
		if (c == '\n') {
			if ((r->flags & SM_RF_IN_TE) && r->hash == SM_HASH_CHUNKED)
				r->flags |= SM_RF_CHUNKED;
			r->flags &= ~(SM_RF_IN_CL | SM_RF_IN_TE);
			r->phase = SM_P_HNAME;
			r->line = 0;
			r->hash = SM_FNV_OFFSET;
			return;
		}
		if (c == ' ' || c == '\t' || c == '\r')
			return;
		if ((r->flags & SM_RF_IN_CL) && c >= '0' && c <= '9')
			r->left = r->left * 10 + (c - '0');
		else if (r->flags & SM_RF_IN_TE)
			r->hash = sm_fnv(r->hash, sm_lower(c));
		return;
	}
	if (ph == SM_P_CSIZE) {
		if (c == '\n') {
			r->flags &= ~SM_RF_CSEXT;
			r->line = 0;
			r->phase = r->left ? SM_P_CDATA : SM_P_TRAILER;
			return;
		}
		if (c == ';')
			r->flags |= SM_RF_CSEXT;
		int v = sm_hexval(c);
		if (v >= 0 && !(r->flags & SM_RF_CSEXT))
			r->left = (r->left << 4) | v;
		return;
	}
	if (ph == SM_P_CCRLF) {
		if (c == '\n') {
			r->phase = SM_P_CSIZE;
			r->left = 0;
		}
		return;
	}
	if (ph == SM_P_TRAILER) {
		if (c == '\n') {
			if (r->line <= 1)
				r->phase = SM_P_DONE;
			r->line = 0;
		} else {
			r->line += 1;
		}
	}
}

/* releases a slot: the response is complete or the connection is gone */
static __always_inline void sm_slot_release(struct sm_slot *sl, __u64 state)
{
	__u32 ep_id = sl->ep_id;
	__u64 *active = sm_epactive_v1.lookup(&ep_id);
	if (active && *active)
		__sync_fetch_and_add(active, -1);
	sl->state = state;
}

static __always_inline struct sm_slot *sm_skb_slot(struct __sk_buff *skb)
{
	struct sm_sock_key pk = {.ip4 = skb->local_ip4, .port = skb->local_port};
	__u32 *sidp = sm_poolports_v1.lookup(&pk);
	if (!sidp)
		return 0;
	__u32 sid = *sidp;
	return sm_slots_v1.lookup(&sid);
}

int sm_sk_skb(struct __sk_buff *skb)
{
	struct sm_slot *sl = sm_skb_slot(skb);
	if (!sl)
		return SK_PASS;
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
	sm_skbprogs_v1.call(skb, SM_TAIL_FRAME);
	sm_slot_release(sl, SM_SLOT_DEAD);
	sm_count(SM_R_RESP_LOST);
	return SK_DROP;
}

int sm_skb_frame(struct __sk_buff *skb)
{
	struct sm_slot *sl = sm_skb_slot(skb);
	__u32 zero = 0;
	struct sm_win *s = sm_skbwin_v1.lookup(&zero);
	if (!sl || !s)
		return SK_DROP;
	struct sm_resp *r = &sl->resp;
	__u32 len = skb->len;
	__u32 off = r->off, wstart = 0, wlen = 0;
	for (__u32 step = 0; step < SM_RESP_STEPS; step++) {
		SM_OPAQUE(step); /* no trip-count rewrite: keep the bound */
		if (off >= len || r->phase == SM_P_DONE)
			break;
		__u32 ph = r->phase;
		if (ph == SM_P_BODY || ph == SM_P_CDATA) {
			__u64 take = len - off;
			if (take > r->left)
				take = r->left;
			off += take;
			r->left -= take;
			if (r->left == 0)
				r->phase = ph == SM_P_BODY ? SM_P_DONE : SM_P_CCRLF;
			continue;
		}
		if (wlen == 0 || off < wstart || off >= wstart + wlen) {
			wstart = off;
			wlen = len - off;
			if (wlen > SM_RESP_WIN)
				wlen = SM_RESP_WIN;
			SM_OPAQUE(wlen);
			wlen &= 2 * SM_RESP_WIN - 1;
			if (wlen < 1 || bpf_skb_load_bytes(skb, off, s->buf, wlen))
				break;
		}
		sm_resp_byte(r, s->buf[(off - wstart) & (SM_RESP_WIN - 1)]);
		off += 1;
	}
	r->off = off;
	if (off < len && r->phase != SM_P_DONE && r->passes < SM_RESP_PASSES) {
		r->passes += 1;
		sm_skbprogs_v1.call(skb, SM_TAIL_FRAME);
	}

	struct sm_sock_key client = sl->client;
	if (r->phase == SM_P_DONE) {
		if (r->status == 0xffff || off < len) {
			/* unframed or extra bytes: retire the connection rather than guess */
			sm_slot_release(sl, SM_SLOT_DEAD);
			sm_count(SM_R_RESP_LOST);
		} else {
			sm_slot_release(sl, SM_SLOT_IDLE);
			sm_count(SM_R_RESP_DONE);
		}
	} else if (off < len) {
		sm_slot_release(sl, SM_SLOT_DEAD); /* framing budget exhausted */
		sm_count(SM_R_RESP_LOST);
	}
	return sm_clsocks_v1.sk_redirect_hash(skb, &client, BPF_F_INGRESS);
}
