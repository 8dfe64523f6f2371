/* Minimal reproducer: bcc 0.26 does not relocate the callback of bpf_loop (kernel >= 5.17),
 * so the verifier sees a scalar where it expects a function ("R2 type=scalar expected=func").
 * Used by scripts/repro_verifier_limits.py. */
struct repro_ctx {
	__u64 acc;
};

static long repro_cb(__u32 i, void *c)
{
	((struct repro_ctx *)c)->acc += i;
	return 0;
}

int repro_loop(struct __sk_buff *skb)
{
	struct repro_ctx c = {};
	bpf_loop(100, repro_cb, &c, 0);
	return c.acc ? 1 : 0;
}
