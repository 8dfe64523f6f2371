/* route.h - service -> virtual host -> rule (last match wins) -> cluster, for sk_msg.
 *
 * Works on what http_parse.h recorded.  Domain precedence is Envoy's: exact host, then the
 * longest "*X" suffix (X strictly shorter than the host), then the longest "X*" prefix, then
 * "*".  Only lengths the route table actually uses are probed (bitmaps in sm_rtables_v1).
 * Rules are walked in table order keeping the last match; a rule that matched on everything
 * the kernel can check but also carries a condition only user space can evaluate
 * (SM_RULE_USER) sends the request to user space if it is later than the last full match,
 * because it might be the one Envoy picks.
 */
#ifndef SOCKMESH_ROUTE_H
#define SOCKMESH_ROUTE_H

#include "sockmesh.h"
#include "http_parse.h"

static __always_inline int sm_bit(const __u64 *bits, __u32 n)
{
	return (bits[(n >> 6) & 1] >> (n & 63)) & 1;
}

static __always_inline __u32 sm_dom_lookup(__u32 rt_id, __u16 kind, __u32 len, __u64 hash)
{
	struct sm_dom_key k = {.rt_id = rt_id, .kind = kind, .len = len, .hash = hash};
	__u32 *vh = sm_domains_v1.lookup(&k);
	return vh ? *vh : 0;
}

/* Returns the virtual host id for this request's Host, 0 when none matches. */
static __always_inline __u32 sm_find_vhost(struct sm_scratch *s, __u32 rt_id,
					   struct sm_route_table *rt)
{
	struct sm_parse *p = &s->p;
	__u32 hlen = p->hlen;
	if ((rt->flags & SM_RT_IGNORE_PORT) && p->hcolon)
		hlen = p->hcolon;
	if (hlen > SM_HOST_MAX)
		return 0;
	SM_OPAQUE(hlen);
	__u32 vh = sm_dom_lookup(rt_id, SM_DOM_EXACT, hlen, s->hh[hlen & SM_HOST_MASK]);
	if (vh)
		return vh;
	volatile __u32 *best = &p->vh;
	*best = 0;
	/* "*X": hash X backwards from the host's end; longer suffixes overwrite shorter ones */
	if (rt->suffix_lens[0] | rt->suffix_lens[1]) {
		__u64 h = SM_FNV_OFFSET;
		__u32 hoff = p->hoff;
		for (__u32 l = 1; l < SM_HOST_MAX; l++) {
			SM_OPAQUE(l); /* no trip-count rewrite: keep the bound */
			if (l >= hlen)
				break;
			__u8 c = s->buf[SM_MASK(hoff + hlen - l)];
			h = sm_fnv(h, sm_lower(c));
			if (sm_bit(rt->suffix_lens, l)) {
				__u32 m = sm_dom_lookup(rt_id, SM_DOM_SUFFIX, l, h);
				if (m)
					*best = m;
			}
		}
		if (*best)
			return *best;
	}
	/* "X*": prefix hashes were recorded while parsing; longest wins */
	if (rt->prefix_lens[0] | rt->prefix_lens[1]) {
		for (__u32 l = 1; l < SM_HOST_MAX; l++) {
			SM_OPAQUE(l); /* no trip-count rewrite: keep the bound */
			if (l >= hlen)
				break;
			if (sm_bit(rt->prefix_lens, l)) {
				__u32 m = sm_dom_lookup(rt_id, SM_DOM_PREFIX, l, s->hh[l & SM_HOST_MASK]);
				if (m)
					*best = m;
			}
		}
		if (*best)
			return *best;
	}
	return rt->default_vh;
}

static __always_inline int sm_path_matches(struct sm_scratch *s, struct sm_rule *r)
{
	__u32 plen = s->p.plen;
	__u32 len = r->path_len;
	__u8 kind = r->path_kind;
	if (kind == SM_PATH_ANY)
		return 1;
	if (len > plen || len > SM_PATH_MAX)
		return 0;
	if (kind == SM_PATH_EXACT && len != plen)
		return 0;
	__u64 h = (r->flags & SM_RULE_NOCASE) ? s->phl[len & SM_PATH_MASK] : s->ph[len & SM_PATH_MASK];
	if (h != r->path_hash)
		return 0;
	if (kind == SM_PATH_SEP_PREFIX && len != plen && s->buf[SM_MASK(s->p.poff + len)] != '/')
		return 0; /* the prefix must end where a path segment ends */
	return 1;
}

/* 1 = all conditions hold, 0 = one fails, -1 = a header repeats (value join in user space) */
static __always_inline int sm_conds_match(struct sm_scratch *s, struct sm_rule *r)
{
	for (__u32 i = 0; i < SM_CONDS_PER_RULE; i++) {
		SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
		if (i >= r->n_conds)
			break;
		struct sm_cond *c = &r->conds[i];
		__u32 slot = c->slot & (SM_HDR_SLOTS - 1);
		__u32 seen = s->slot_seen[slot];
		int m;
		if (c->kind == SM_COND_PRESENT) {
			m = seen > 0;
		} else if (c->kind == SM_COND_ABSENT) {
			m = seen == 0;
		} else {
			/* Envoy: an absent header fails a value match, inverted or not; repeated
			 * headers are matched joined with ',' which user space does */
			if (seen == 0)
				return 0;
			if (seen > 1)
				return -1;
			m = s->slot_len[slot] == c->len && s->slot_hash[slot] == c->hash;
		}
		if (c->invert)
			m = !m;
		if (!m)
			return 0;
	}
	return 1;
}

/* Walks the virtual host's rules; returns the last fully matching rule index + 1 (0 = none)
 * or sets *reason when user space must decide. */
static __always_inline __u32 sm_match_rules(struct sm_scratch *s, struct sm_vhost *vh,
					    __u32 *reason)
{
	volatile __u32 *last = &s->p.last, *last_user = &s->p.last_user;
	*last = 0;
	*last_user = 0;
	__u32 n = vh->n_rules;
	if (n > SM_RULES_PER_VHOST) {
		*reason = SM_R_LIMIT;
		return 0;
	}
	SM_OPAQUE(n);
	for (__u32 i = 0; i < SM_RULES_PER_VHOST; i++) {
		SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
		if (i >= n)
			break;
		__u32 idx = vh->first_rule + i;
		struct sm_rule *r = sm_rules_v1.lookup(&idx);
		if (!r)
			break;
		if (!sm_path_matches(s, r))
			continue;
		int m = sm_conds_match(s, r);
		if (m == 0)
			continue;
		if (m < 0 || (r->flags & SM_RULE_USER))
			*last_user = idx + 1;
		else
			*last = idx + 1;
	}
	if (*last_user > *last) {
		*reason = SM_R_RULE_USER;
		return 0;
	}
	if (!*last)
		*reason = SM_R_NO_ROUTE;
	return *last;
}

/* The rule's cluster id, or 0 with *reason set. */
static __always_inline __u32 sm_rule_cluster(struct sm_rule *r, __u32 *reason)
{
	if (r->action == SM_ACT_CLUSTER)
		return r->action_id;
	if (r->action != SM_ACT_WEIGHTED || r->total_weight == 0 ||
	    r->n_weighted > SM_WEIGHTED_PER_RULE) {
		*reason = r->action == SM_ACT_WEIGHTED ? SM_R_LIMIT : SM_R_ROUTE_USER;
		return 0;
	}
	__u32 pick = bpf_get_prandom_u32() % r->total_weight;
	__u32 n = r->n_weighted;
	SM_OPAQUE(n);
	for (__u32 i = 0; i < SM_WEIGHTED_PER_RULE; i++) {
		SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
		if (i >= n)
			break;
		__u32 k = r->action_id + i;
		struct sm_weighted *w = sm_weighted_v1.lookup(&k);
		if (!w)
			break;
		if (pick < w->cum_weight)
			return w->cluster_id;
	}
	*reason = SM_R_LIMIT;
	return 0;
}

#endif /* SOCKMESH_ROUTE_H */
