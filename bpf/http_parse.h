/* http_parse.h - the HTTP/1.1 request-head parser used by sk_msg.
 *
 * One byte at a time over the head copied into per-CPU scratch.  All parser state lives in
 * that map value: the verifier then sees one state per byte offset instead of one per value
 * of every counter, which keeps a SM_REQ_BUF-byte loop well inside its budget.
 * It records what routing needs and nothing else: FNV-1a hashes of every path prefix (plain
 * and lower-cased, for prefix/exact matches), of every host prefix (for "X*" domains), the
 * host's position (for "*X" domains), the hash of each header value whose name the encoder
 * registered in sm_hdrslots_v1, Content-Length and Transfer-Encoding.  Well-known hashes
 * (SM_HASH_*) are computed by the loader with the same function the encoder uses.
 */
#ifndef SOCKMESH_HTTP_PARSE_H
#define SOCKMESH_HTTP_PARSE_H

#include "sockmesh.h"

#define SM_MASK(x) ((x) & (SM_REQ_BUF - 1))

static __always_inline __u64 sm_fnv(__u64 h, __u8 c)
{
	return (h ^ c) * SM_FNV_PRIME;
}

static __always_inline __u8 sm_lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static __always_inline void sm_slot_set(struct sm_scratch *s, __u32 slot, __u64 hash, __u32 len)
{
	slot &= SM_HDR_SLOTS - 1;
	s->slot_hash[slot] = hash;
	s->slot_len[slot] = len;
	s->slot_seen[slot] += 1;
}

static __always_inline void sm_header_name_done(struct sm_scratch *s)
{
	struct sm_parse *p = &s->p;
	__u64 h = p->nhash;
	p->cur = SM_H_OTHER;
	if (h == SM_HASH_HOST)
		p->cur = SM_H_HOST;
	else if (h == SM_HASH_CONTENT_LENGTH)
		p->cur = SM_H_CL;
	else if (h == SM_HASH_TRANSFER_ENCODING)
		p->cur = SM_H_TE;
	if (p->cur == SM_H_CL && p->has_cl)
		p->bad = SM_R_NOT_HTTP; /* a second Content-Length: user space refuses it */
	if (p->cur == SM_H_OTHER) {
		__u32 *slot = sm_hdrslots_v1.lookup(&h);
		if (slot)
			p->cur = SM_H_SLOT | (*slot & (SM_HDR_SLOTS - 1));
	}
	p->vhash = SM_FNV_OFFSET;
	p->vlen = 0;
	p->hhash = SM_FNV_OFFSET;
	p->st = SM_S_HLWS;
}

/* i: the offset of the '\r' that ends the value */
static __always_inline void sm_header_value_done(struct sm_scratch *s, __u32 i)
{
	struct sm_parse *p = &s->p;
	__u32 cur = p->cur;
	if (p->vlen && (cur == SM_H_HOST || (cur & SM_H_SLOT))) {
		/* Envoy drops spaces and tabs after a value; the hashes include them, so a value
		 * the kernel matches on must not end in one: user space trims and decides */
		__u8 last = s->buf[SM_MASK(i - 1)];
		if (last == ' ' || last == '\t')
			p->bad = SM_R_PARSE_LIMIT;
	}
	if (cur == SM_H_HOST) {
		if (p->hlen)
			p->bad = SM_R_PIPELINED; /* two Host headers: let user space answer */
		p->hlen = p->vlen;
		sm_slot_set(s, SM_SLOT_AUTHORITY, p->vhash, p->vlen);
	} else if (cur == SM_H_TE) {
		p->chunked = p->vhash == SM_HASH_CHUNKED ? 1 : 2;
	} else if (cur & SM_H_SLOT) {
		sm_slot_set(s, cur & (SM_HDR_SLOTS - 1), p->vhash, p->vlen);
	}
	p->st = SM_S_LF;
}

static __always_inline void sm_parse_byte(struct sm_scratch *s, __u32 i, __u8 c)
{
	struct sm_parse *p = &s->p;
	__u32 st = p->st;

	if (st == SM_S_METHOD) {
		if (c == ' ') {
			__u64 m = p->mhash;
			if (p->mlen == 0)
				p->bad = SM_R_NOT_HTTP;
			/* unknown methods (and CONNECT) go to user space, which refuses them */
			if (m != SM_HASH_M_GET && m != SM_HASH_HEAD && m != SM_HASH_M_POST &&
			    m != SM_HASH_M_PUT && m != SM_HASH_M_DELETE && m != SM_HASH_M_OPTIONS &&
			    m != SM_HASH_M_PATCH && m != SM_HASH_M_TRACE)
				p->bad = SM_R_NOT_HTTP;
			sm_slot_set(s, SM_SLOT_METHOD, p->mhash, p->mlen);
			p->poff = i + 1;
			p->st = SM_S_PATH;
		} else if (c >= 'A' && c <= 'Z' && p->mlen < 16) {
			p->mhash = sm_fnv(p->mhash, c);
			p->mlen += 1;
		} else {
			p->bad = SM_R_NOT_HTTP;
		}
		return;
	}
	if (st == SM_S_PATH) {
		if (c == ' ') {
			if (p->flen == 0)
				p->bad = SM_R_NOT_HTTP;
			sm_slot_set(s, SM_SLOT_PATH, p->fhash, p->flen - p->fraglen);
			p->vhash = SM_FNV_OFFSET;
			p->vlen = 0;
			p->st = SM_S_VERSION;
			return;
		}
		if (p->flen == 0 && c != '/') {
			p->bad = SM_R_NOT_HTTP; /* absolute-form, authority-form, '*': user space */
			return;
		}
		if (p->flen >= SM_PATH_MAX || c < 0x21 || c > 0x7e) {
			p->bad = p->flen >= SM_PATH_MAX ? SM_R_PARSE_LIMIT : SM_R_NOT_HTTP;
			return;
		}
		p->flen += 1;
		if (p->inquery == 2 || c == '#')
			p->fraglen += 1;
		if (c == '#')
			p->inquery = 2; /* fragment: not part of any match (Envoy strips it) */
		if (p->inquery < 2)
			p->fhash = sm_fnv(p->fhash, c);
		if (c == '?' && !p->inquery)
			p->inquery = 1;
		if (!p->inquery) {
			__u32 n = p->plen + 1;
			SM_OPAQUE(n);
			p->phash = sm_fnv(p->phash, c);
			p->phashl = sm_fnv(p->phashl, sm_lower(c));
			s->ph[n & SM_PATH_MASK] = p->phash;
			s->phl[n & SM_PATH_MASK] = p->phashl;
			p->plen = n;
		}
		return;
	}
	if (st == SM_S_VERSION) {
		if (c == '\r') {
			if (p->vhash != SM_HASH_HTTP11)
				p->bad = SM_R_NOT_HTTP; /* HTTP/1.0, HTTP/2.0 preface, ... */
			p->st = SM_S_LF;
		} else {
			p->vhash = sm_fnv(p->vhash, c);
			p->vlen += 1;
			if (p->vlen > 8)
				p->bad = SM_R_NOT_HTTP;
		}
		return;
	}
	if (st == SM_S_LF || st == SM_S_ENDLF) {
		if (c != '\n') {
			p->bad = SM_R_NOT_HTTP;
			return;
		}
		if (st == SM_S_ENDLF) {
			p->end = i + 1;
			p->st = SM_S_DONE;
			return;
		}
		p->nhash = SM_FNV_OFFSET;
		p->nlen = 0;
		p->st = SM_S_HNAME;
		return;
	}
	if (st == SM_S_HNAME) {
		if (c == '\r' && p->nlen == 0) {
			p->st = SM_S_ENDLF;
		} else if (c == ':' && p->nlen > 0) {
			sm_header_name_done(s);
		} else if (c > 0x20 && c < 0x7f) {
			p->nhash = sm_fnv(p->nhash, sm_lower(c));
			p->nlen += 1;
		} else {
			p->bad = SM_R_NOT_HTTP;
		}
		return;
	}
	if (st == SM_S_HLWS) {
		if (c == ' ' || c == '\t')
			return;
		p->st = SM_S_HVAL;
		if (p->cur == SM_H_HOST)
			p->hoff = i;
		/* fall through: c is the first value byte */
	}
	if (c == '\r') {
		sm_header_value_done(s, i);
		return;
	}
	if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) {
		p->bad = SM_R_NOT_HTTP; /* control characters in a value: user space refuses them */
		return;
	}
	/* header values compare case-sensitively, except Transfer-Encoding's token */
	p->vhash = sm_fnv(p->vhash, p->cur == SM_H_TE ? sm_lower(c) : c);
	p->vlen += 1;
	if (p->cur == SM_H_HOST) {
		__u32 n = p->vlen;
		if (n > SM_HOST_MAX) {
			p->bad = SM_R_PARSE_LIMIT;
			return;
		}
		if (c == ':')
			p->hcolon = n - 1;
		if (c == '[')
			p->bad = SM_R_PARSE_LIMIT; /* IPv6 literal: user space */
		SM_OPAQUE(n);
		p->hhash = sm_fnv(p->hhash, sm_lower(c));
		s->hh[n & SM_HOST_MASK] = p->hhash;
	} else if (p->cur == SM_H_CL) {
		if (c < '0' || c > '9' || p->vlen > 12)
			p->bad = SM_R_NOT_HTTP;
		p->cl = p->cl * 10 + (c - '0');
		p->has_cl = 1;
	}
}

#endif /* SOCKMESH_HTTP_PARSE_H */
