/* sockops.bpf.c - sock_ops on the mesh cgroup.
 *
 * When an application's connection to the splice listener is established, move its original
 * destination (recorded by connect4) into the per-connection state, raise its receive buffer
 * (large responses stall on the default one), and put the socket into the client sockhash so
 * that sk_msg sees its requests and sk_skb can deliver responses into it.
 */
#include "sockmesh.h"

#ifndef SOL_SOCKET
#define SOL_SOCKET 1
#endif
#ifndef SO_RCVBUF
#define SO_RCVBUF 8
#endif
#ifndef AF_INET
#define AF_INET 2
#endif

int sm_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET || skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct sm_orig_dst *od = sm_origdst_v1.lookup(&cookie);
	if (!od)
		return 1;
	struct sm_sock_key key = {.ip4 = skops->local_ip4, .port = skops->local_port};
	struct sm_client c = {};
	c.vip = od->vip;
	c.port = od->port;
	c.rt_id = od->rt_id;
	sm_clients_v2.update(&key, &c);
	sm_origdst_v1.delete(&cookie);
	int rcvbuf = SM_RCVBUF;
	bpf_setsockopt(skops, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	sm_clsocks_v1.sock_hash_update(skops, &key, BPF_NOEXIST);
	return 1;
}
