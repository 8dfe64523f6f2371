/* connect4.bpf.c - cgroup/connect4 on the mesh cgroup.
 *
 * A connect() to a known service VIP:port is rewritten here, before the SYN:
 *  - L7 (HTTP) services go to the agent's splice listener; the original destination is kept
 *    by socket cookie for sockops, which moves it to the per-connection state;
 *  - L4 (TCP) services go straight to an endpoint picked by the cluster's LB policy;
 *  - BLACKHOLE entries (Istio's BlackHoleCluster; with vip 0 and port 0 the REGISTRY_ONLY
 *    policy for destinations no other entry matches) refuse the connect: connect() fails
 *    with EPERM, except to 127.0.0.1 (Istio's iptables never redirect it) and to the splice
 *    listener.
 * Anything else (UDP included) is left alone, and so is every connect made by a process in
 * the agent's own cgroup (sm_config.agent_cgroup): the datapath's pooled and slow-path
 * upstream connects must reach the endpoints they name, never the splice listener or a
 * REGISTRY_ONLY refusal, when the agent runs inside an attached cgroup's subtree.
 */
#include "sockmesh.h"
#include "lb.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SM_LOCALHOST_NET 0x0100007fU /* 127.0.0.1, network order */
#else
#define SM_LOCALHOST_NET 0x7f000001U
#endif

/* 0: refuse the connect (EPERM); 1: leave it alone (an exempt destination) */
static __always_inline int sm_blackhole(struct bpf_sock_addr *ctx, struct sm_config *cfg)
{
	if (ctx->user_ip4 == SM_LOCALHOST_NET)
		return 1;
	if (cfg && ctx->user_ip4 == cfg->splice_ip && (__u16)ctx->user_port == cfg->splice_port)
		return 1;
	sm_count(SM_R_BLACKHOLE);
	return 0;
}

int sm_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	__u32 zero = 0;
	struct sm_config *cfg = sm_config_v2.lookup(&zero);
	if (cfg && cfg->agent_cgroup && bpf_get_current_cgroup_id() == cfg->agent_cgroup)
		return 1;
	struct sm_svc_key key = {.vip = ctx->user_ip4, .port = (__u16)ctx->user_port};
	struct sm_service *svc = sm_services_v1.lookup(&key);
	if (!svc) {
		key.vip = 0; /* Istio's 0.0.0.0_PORT listeners */
		svc = sm_services_v1.lookup(&key);
	}
	if (!svc) {
		key.port = 0; /* destinations no entry matches: virtualOutbound's catch-all */
		svc = sm_services_v1.lookup(&key);
		if (!svc)
			return 1;
	}
	if (svc->kind == SM_SVC_BLACKHOLE)
		return sm_blackhole(ctx, cfg);
	if (svc->kind == SM_SVC_HTTP) {
		if (!cfg || cfg->splice_port == 0)
			return 1;
		struct sm_orig_dst od = {.vip = ctx->user_ip4, .port = (__u16)ctx->user_port,
					 .rt_id = svc->id};
		__u64 cookie = bpf_get_socket_cookie(ctx);
		sm_origdst_v1.update(&cookie, &od);
		ctx->user_ip4 = cfg->splice_ip;
		ctx->user_port = cfg->splice_port;
		return 1;
	}
	if (svc->kind == SM_SVC_TCP) {
		__u32 reason = 0;
		__u32 ep_id = sm_pick_endpoint(svc->id, &reason);
		if (ep_id == SM_PICK_SCAN)
			ep_id = sm_lr_pick(svc->id, sm_lr_total(svc->id));
		struct sm_endpoint *ep = ep_id ? sm_endpoints_v1.lookup(&ep_id) : 0;
		if (!ep || ep->port == 0) {
			/* nothing to pick: leave the connect alone so the app sees the failure */
			sm_count(reason ? reason : SM_R_NO_HOST);
			return 1;
		}
		ctx->user_ip4 = ep->ip4;
		ctx->user_port = ep->port;
		sm_count(SM_R_L4);
	}
	return 1;
}
