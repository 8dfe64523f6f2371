/* bare_relay.bpf.c - the sockmap mechanism sockmesh uses, without sockmesh's work.
 *
 * The benchmark's floor for the kernel path (integration/bench/floor.py): each client
 * connection is paired for its whole life with one pooled connection to a backend; its
 * writes are redirected to that connection's egress (sk_msg, as sm_sk_msg does after
 * routing), and every response skb is redirected into the client's receive queue (sk_skb
 * with BPF_F_INGRESS, as sm_skb_frame does after framing).  No parsing, routing, slot claim,
 * framing or counters: what is left is the cost of the two redirects themselves.
 *
 * fl_sockops (cgroup sock_ops, on the floor's own child cgroup): an established client
 * connection enters fl_cl and is paired with the next pooled connection (round robin over
 * the pooled connections the harness put in fl_ctl[1]), and gets the receive buffer
 * sockmesh's sockops gives its clients (FL_RCVBUF = SM_RCVBUF, from the harness).  Without
 * a cgroup the harness pairs a client itself (floor.BareRelay.pair).
 */

/* client local port (host order) -> client socket; carries fl_msg, redirect target of fl_skb */
BPF_SOCKHASH(fl_cl, u32, 1024);
/* pool index -> pooled connection to the backend; carries fl_skb, redirect target of fl_msg */
BPF_SOCKHASH(fl_pool, u32, 64);
/* client local port -> pool index (written by fl_sockops) */
BPF_ARRAY(fl_pair, u32, 65536);
/* pooled connection's local port -> client local port (written by fl_sockops) */
BPF_ARRAY(fl_back, u32, 65536);
/* pool index -> pooled connection's local port (written by the harness) */
BPF_ARRAY(fl_poolport, u32, 64);
/* [0]: next pool index to hand out, [1]: pooled connections in fl_pool (the harness) */
BPF_ARRAY(fl_ctl, u32, 2);

int fl_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != 2 /* AF_INET */ || skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	u32 k0 = 0, k1 = 1;
	u32 *next = fl_ctl.lookup(&k0), *npool = fl_ctl.lookup(&k1);
	if (!next || !npool || *npool == 0)
		return 1;
	/* not atomic (bcc's target has no fetch-and-add with a result): wrk opens its
	 * connections one after another from one thread */
	u32 idx = *next % *npool;
	*next += 1;
	u32 cport = skops->local_port;
	u32 *pport = fl_poolport.lookup(&idx);
	if (!pport)
		return 1;
	u32 pp = *pport;
	fl_pair.update(&cport, &idx);
	fl_back.update(&pp, &cport);
	int rcvbuf = FL_RCVBUF;
	bpf_setsockopt(skops, 1 /* SOL_SOCKET */, 8 /* SO_RCVBUF */, &rcvbuf, sizeof(rcvbuf));
	fl_cl.sock_hash_update(skops, &cport, BPF_ANY);
	return 1;
}

int fl_msg(struct sk_msg_md *msg)
{
	u32 cport = msg->local_port;
	u32 *idx = fl_pair.lookup(&cport);
	if (!idx)
		return SK_PASS;
	return fl_pool.msg_redirect_hash(msg, idx, 0);
}

int fl_skb(struct __sk_buff *skb)
{
	if (skb->len == 0)
		return SK_PASS; /* the backend closed the pooled connection */
	u32 pport = skb->local_port;
	u32 *cport = fl_back.lookup(&pport);
	if (!cport)
		return SK_DROP;
	return fl_cl.sk_redirect_hash(skb, cport, BPF_F_INGRESS);
}

/* The pass programs of scripts/latency_floor.py: a socket straight to the backend, in a
 * sockhash whose sk_msg (fl_pass_cl) or sk_skb verdict (fl_pass_pool) only returns SK_PASS:
 * the cost of having a psock at all, without a redirect. */
BPF_SOCKHASH(fl_pass_cl, u32, 4);
BPF_SOCKHASH(fl_pass_pool, u32, 4);

int fl_pass_msg(struct sk_msg_md *msg)
{
	return SK_PASS;
}

int fl_pass_skb(struct __sk_buff *skb)
{
	return SK_PASS;
}

/* stream parser for the parser-and-verdict variant (analysis only): each skb is one message */
int fl_parse(struct __sk_buff *skb)
{
	return skb->len;
}
