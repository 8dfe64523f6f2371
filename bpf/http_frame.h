/* http_frame.h - HTTP/1.1 message framing by counting bytes: a response head (status,
 * Content-Length, Transfer-Encoding; no body for HEAD, 1xx, 204, 304) and chunked bodies.
 * sk_skb frames responses with it; sk_msg frames chunked request bodies with the same
 * chunk states.  One byte per call; data runs (SM_P_BODY, SM_P_CDATA) are skipped by the
 * caller in bulk.
 */
#ifndef SOCKMESH_HTTP_FRAME_H
#define SOCKMESH_HTTP_FRAME_H

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

/* chunk size line state in r->line: SM_CS_DIGITS once a hex digit was read, SM_CS_END once
 * white space (or CR) followed them.  A line other than [WS] 1*HEXDIG [WS] [";" ext] CRLF
 * with a size under 2^64 sets SM_RF_CBAD (sk_msg hands such a request to the slow path). */
#define SM_CS_DIGITS 1
#define SM_CS_END 2

/* one byte of chunk framing: size line, CRLF after data, trailers */
static __always_inline void sm_chunk_byte(struct sm_resp *r, __u8 c)
{
	__u32 ph = r->phase;
	if (ph == SM_P_CSIZE) {
		if (c == '\n') {
			if (!(r->line & SM_CS_DIGITS))
				r->flags |= SM_RF_CBAD; /* no size */
			r->flags &= ~SM_RF_CSEXT;
			r->line = 0;
			r->phase = r->left ? SM_P_CDATA : SM_P_TRAILER;
			return;
		}
		if (r->flags & SM_RF_CSEXT)
			return;
		if (c == ';') {
			if (!(r->line & SM_CS_DIGITS))
				r->flags |= SM_RF_CBAD;
			r->flags |= SM_RF_CSEXT;
			return;
		}
		if (c == ' ' || c == '\t' || c == '\r') {
			if (r->line & SM_CS_DIGITS)
				r->line |= SM_CS_END;
			return;
		}
		int v = sm_hexval(c);
		if (v < 0 || (r->line & SM_CS_END) || (r->left >> 60)) {
			r->flags |= SM_RF_CBAD; /* "-2", "zz", "1 2", 2^64 or more */
			return;
		}
		r->left = (r->left << 4) | v;
		r->line |= SM_CS_DIGITS;
		return;
	}
	if (ph == SM_P_CCRLF) {
		if (c == '\n') {
			r->phase = SM_P_CSIZE;
			r->left = 0;
			r->line = 0;
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
			r->flags &= ~(SM_RF_IN_CL | SM_RF_IN_TE | SM_RF_IN_CONN);
			if (r->hash == SM_HASH_CONTENT_LENGTH) {
				r->flags |= SM_RF_IN_CL | SM_RF_CL;
				r->left = 0;
			} else if (r->hash == SM_HASH_TRANSFER_ENCODING) {
				r->flags |= SM_RF_IN_TE;
			} else if (r->hash == SM_HASH_CONNECTION) {
				r->flags |= SM_RF_IN_CONN;
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
			if ((r->flags & SM_RF_IN_CONN) && r->hash == SM_HASH_CLOSE)
				r->flags |= SM_RF_CLOSE;
			r->flags &= ~(SM_RF_IN_CL | SM_RF_IN_TE | SM_RF_IN_CONN);
			r->phase = SM_P_HNAME;
			r->line = 0;
			r->hash = SM_FNV_OFFSET;
			return;
		}
		if (c == ' ' || c == '\t' || c == '\r')
			return;
		if ((r->flags & SM_RF_IN_CL) && c >= '0' && c <= '9')
			r->left = r->left * 10 + (c - '0');
		else if (r->flags & (SM_RF_IN_TE | SM_RF_IN_CONN))
			r->hash = sm_fnv(r->hash, sm_lower(c));
		return;
	}
	sm_chunk_byte(r, c);
}

#endif /* SOCKMESH_HTTP_FRAME_H */
