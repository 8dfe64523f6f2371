/* lb.h - endpoint choice with Envoy's load-balancer semantics, shared by sk_msg (per request)
 * and connect4 (L4 services).
 *
 * User space (bpf/lb.py) already did what need not run per request: it computed Envoy's
 * priority load (overprovisioning factor, degraded hosts, panic) and kept the hosts that can
 * get traffic; for weighted ROUND_ROBIN, and for ROUND_ROBIN/RANDOM traffic spilling over
 * several priority levels, it wrote a smooth weighted round-robin ring whose entries are in
 * exact proportion to each host's share, so one pass of the ring (or a uniform index into
 * it) gives Envoy's split.  A LEAST_REQUEST spill ring has host weights 0: sk_msg hands it
 * to user space, connect4 samples it.  The kernel only indexes the ring or samples the host
 * list.
 */
#ifndef SOCKMESH_LB_H
#define SOCKMESH_LB_H

#include "sockmesh.h"

/* LEAST_REQUEST with unequal weights scales weight / (active + 1) by this before dividing */
#define SM_LR_SCALE 1048576ULL

static __always_inline __u64 sm_active(__u32 ep_id)
{
	__u64 *a = sm_epactive_v1.lookup(&ep_id);
	return a ? *a : 0;
}

static __always_inline __u32 sm_host_ep(__u32 base, __u32 idx)
{
	__u32 k = base + idx;
	struct sm_host *h = sm_hosts_v1.lookup(&k);
	return h ? h->ep_id : 0;
}

/* endpoint id meaning "weighted least request: scan with sm_lr_total + sm_lr_pick" */
#define SM_PICK_SCAN 0xffffffffU

/* Returns the endpoint id for a request to cluster_id, SM_PICK_SCAN, or 0 with *reason set. */
static __always_inline __u32 sm_pick_endpoint(__u32 cluster_id, __u32 *reason)
{
	struct sm_cluster *c = sm_clusters_v1.lookup(&cluster_id);
	if (!c || !(c->flags & SM_CL_USABLE) || c->n_hosts == 0) {
		*reason = SM_R_NO_HOST;
		return 0;
	}
	if ((c->flags & SM_CL_USER) || c->n_hosts > SM_HOSTS_PER_CLUSTER) {
		*reason = SM_R_LIMIT;
		return 0;
	}
	__u32 n = c->n_hosts;
	SM_OPAQUE(n);
	__u32 base = cluster_id * SM_HOSTS_PER_CLUSTER;

	if (c->policy == SM_LB_ROUND_ROBIN) {
		__u64 *pos = sm_rr_v1.lookup(&cluster_id);
		if (!pos)
			return 0;
		__u64 p = __sync_fetch_and_add(pos, 1);
		return sm_host_ep(base, (__u32)(p % n));
	}
	if (c->policy == SM_LB_RANDOM)
		return sm_host_ep(base, bpf_get_prandom_u32() % n);

	/* LEAST_REQUEST */
#ifdef SM_LB_PER_REQUEST
	/* host weight 0: a ring of a traffic spill over priority levels (bpf/lb.py plan).
	 * Envoy picks the level before it compares active requests, which sampling the ring
	 * cannot do: hand the request to user space.  connect4 (no SM_LB_PER_REQUEST; L4 has
	 * no live request counts) samples the ring, each host at its exact share. */
	struct sm_host *h0 = sm_hosts_v1.lookup(&base);
	if (h0 && h0->weight == 0) {
		*reason = SM_R_LIMIT;
		return 0;
	}
#endif
	if (c->flags & SM_CL_EQUAL_WEIGHTS) {
		/* Envoy: sample choice_count hosts with replacement, keep the first least loaded */
		__u32 best = 0;
		__u64 best_active = 0;
		__u32 choices = c->choices;
		for (__u32 i = 0; i < SM_LR_CHOICES_MAX; i++) {
			SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
			if (i >= choices)
				break;
			__u32 ep = sm_host_ep(base, bpf_get_prandom_u32() % n);
			__u64 a = sm_active(ep);
			if (best == 0 || a < best_active) {
				best = ep;
				best_active = a;
			}
		}
		return best;
	}
	/* unequal weights: two scans of the hosts, see sm_lr_total / sm_lr_pick */
	return SM_PICK_SCAN;
}

/* LEAST_REQUEST with unequal weights: effective weight = weight / (active + 1)^bias
 * (bias 0 or 1 in kernel), sampled proportionally.  Two loops, run as separate passes in
 * sk_msg because one program cannot hold both for the verifier. */
static __always_inline __u64 sm_lr_weight(struct sm_cluster *c, struct sm_host *h)
{
	__u64 w = h->weight * SM_LR_SCALE;
	if (c->bias)
		w /= sm_active(h->ep_id) + 1;
	return w;
}

static __always_inline __u64 sm_lr_total(__u32 cluster_id)
{
	struct sm_cluster *c = sm_clusters_v1.lookup(&cluster_id);
	if (!c)
		return 0;
	__u32 n = c->n_hosts;
	SM_OPAQUE(n);
	__u32 base = cluster_id * SM_HOSTS_PER_CLUSTER;
	__u64 total = 0;
	for (__u32 i = 0; i < SM_HOSTS_PER_CLUSTER; i++) {
		SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
		if (i >= n)
			break;
		__u32 k = base + i;
		struct sm_host *h = sm_hosts_v1.lookup(&k);
		if (!h)
			break;
		total += sm_lr_weight(c, h);
	}
	return total;
}

static __always_inline __u32 sm_lr_pick(__u32 cluster_id, __u64 total)
{
	struct sm_cluster *c = sm_clusters_v1.lookup(&cluster_id);
	if (!c)
		return 0;
	__u32 n = c->n_hosts;
	SM_OPAQUE(n);
	__u32 base = cluster_id * SM_HOSTS_PER_CLUSTER;
	if (total == 0)
		return sm_host_ep(base, 0);
	__u64 r = (((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32()) % total;
	for (__u32 i = 0; i < SM_HOSTS_PER_CLUSTER; i++) {
		SM_OPAQUE(i); /* no trip-count rewrite: keep the bound */
		if (i >= n)
			break;
		__u32 k = base + i;
		struct sm_host *h = sm_hosts_v1.lookup(&k);
		if (!h)
			break;
		__u64 w = sm_lr_weight(c, h);
		if (r < w)
			return h->ep_id;
		r -= w;
	}
	return sm_host_ep(base, n - 1);
}

#endif /* SOCKMESH_LB_H */
