/* http_frame.h - HTTP/1.1 message framing by counting bytes: a response head (status,
 * Content-Length, Transfer-Encoding, Connection; no body for HEAD, 1xx, 204, 304) and
 * chunked bodies.  sk_skb frames responses with it; sk_msg frames chunked request bodies
 * with the same chunk states.  Data runs (SM_P_BODY, SM_P_CDATA) are skipped by the caller
 * in bulk.
 *
 * A response head is walked a line at a time where the bytes are at hand (sm_resp_step):
 * the status digits are read at their fixed offsets, each header line is judged by its
 * first bytes (a case-folded word compare against "content-length:", "transfer-encoding:"
 * and "connection:"), a Content-Length value is read a word at a time, and lines (or
 * values) that do not matter are skipped up to three words at a time.  The per-phase
 * sm_*_byte functions take one byte with the same meaning; sm_resp_step falls back to
 * them for what the fast paths leave (a value that may be "chunked" or "close", chunk
 * lines, and lines cut by the end of the skb), so a head split at any byte frames the
 * same.
 */
#ifndef SOCKMESH_HTTP_FRAME_H
#define SOCKMESH_HTTP_FRAME_H

#include "sockmesh.h"
#include "http_parse.h"

/* the rest of a line that does not matter (status line after its code, other headers);
 * kernel-only like the SM_P_* in sockmesh.h */
#define SM_P_HSKIP 9
/* bytes a header line's start needs at hand to be told at once: the longest name compared,
 * in words (the fast paths read up to 24 bytes past their position, within the window
 * buffer's 2 x SM_RESP_WIN; bytes past what the skb had are never used) */
#define SM_RESP_LOOK 24

/* eight bytes as one little-endian word (what a load from the window gives) */
#define SM_W8(a, b, c, d, e, f, g, h)                                                       \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |               \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define SM_W_ONES 0x0101010101010101ULL
#define SM_W_LF (SM_W_ONES * '\n')
/* OR-ed into a word before comparing it with lower-case letters: 'C' | 0x20 == 'c', and no
 * other byte but 'c' itself gives 'c', so the compare is exact and case-insensitive */
#define SM_FOLD 0x20

/* the high bit of every byte of w that is zero; exact for the lowest such byte (a borrow
 * only reaches the bytes above a zero), 0 when none is */
static __always_inline __u64 sm_w_zero(__u64 w)
{
	return (w - SM_W_ONES) & ~w & (SM_W_ONES * 0x80);
}

/* index (0..7, lowest address first) of the lowest byte flagged by sm_w_zero; t != 0 */
static __always_inline __u32 sm_w_first(__u64 t)
{
	/* the lowest flag, as a 1 in byte k, times bytes 7..0 leaves k in the top byte */
	return (((t & -t) >> 7) * 0x0001020304050607ULL) >> 56;
}

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

/* one byte of chunk framing in phase ph (r->phase): size line, CRLF after data, trailers */
static __always_inline void sm_chunk_ph(struct sm_resp *r, __u8 c, __u32 ph)
{
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

static __always_inline void sm_chunk_byte(struct sm_resp *r, __u8 c)
{
	sm_chunk_ph(r, c, r->phase);
}

/* One response byte per phase, with the meaning the fast paths below keep. */

/* the rest of a line that does not matter */
static __always_inline void sm_hskip_byte(struct sm_resp *r, __u8 c)
{
	if (c == '\n') {
		r->phase = SM_P_HNAME;
		r->line = 0;
		r->hash = SM_FNV_OFFSET;
	}
}

static __always_inline void sm_status_byte(struct sm_resp *r, __u8 c)
{
	/* "HTTP/1.1 200 OK": status digits at 9..11 */
	if (r->line >= 9 && r->line < 12 && c >= '0' && c <= '9')
		r->status = r->status * 10 + (c - '0');
	r->line += 1;
	if (c == '\n') {
		r->phase = SM_P_HNAME;
		r->line = 0;
		r->hash = SM_FNV_OFFSET;
	}
}

static __always_inline void sm_hname_byte(struct sm_resp *r, __u8 c)
{
	if (c == '\n') {
		if (r->line <= 1) {
			sm_head_done(r);
		} else {
			r->line = 0; /* malformed header line without ':' */
			r->hash = SM_FNV_OFFSET;
		}
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
	} else {
		/* a CR is hashed too: no name with one in it is a name we know (as in
		 * sm_line_fast's compare) */
		r->hash = sm_fnv(r->hash, sm_lower(c));
	}
}

static __always_inline void sm_hval_byte(struct sm_resp *r, __u8 c)
{
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
}

/* Fast paths: avail bytes of the skb are at hand from p (up to SM_RESP_LOOK may be read);
 * each returns the bytes it consumed, with the state the bytes one by one would have left,
 * or 0 (state untouched) where the caller must take one byte instead. */

#define SM_IN_ANY (SM_RF_IN_CL | SM_RF_IN_TE | SM_RF_IN_CONN)

/* a line that does not matter, from w0 on (w1, w2 follow it when avail >= 24): through its
 * '\n' (the next line's start) or, when it goes on past the words at hand, all of them */
static __always_inline __u32 sm_skip_words(struct sm_resp *r, __u64 w0, __u64 w1, __u64 w2,
					   __u32 avail)
{
	__u32 n = 0;
	__u64 t = sm_w_zero(w0 ^ SM_W_LF);
	if (!t) {
		if (avail < SM_RESP_LOOK) {
			r->phase = SM_P_HSKIP;
			return 8;
		}
		n = 8;
		t = sm_w_zero(w1 ^ SM_W_LF);
		if (!t) {
			n = 16;
			t = sm_w_zero(w2 ^ SM_W_LF);
			if (!t) {
				r->phase = SM_P_HSKIP;
				return 24;
			}
		}
	}
	r->phase = SM_P_HNAME;
	r->line = 0;
	r->hash = SM_FNV_OFFSET;
	return n + sm_w_first(t) + 1;
}

static __always_inline __u32 sm_skip_fast(struct sm_resp *r, const __u8 *p, __u32 avail)
{
	if (avail < 8)
		return 0;
	return sm_skip_words(r, *(const __u64 *)p, *(const __u64 *)(p + 8),
			     *(const __u64 *)(p + 16), avail);
}

/* a status line's start: the code's digits at 9..11 when no '\n' comes before them */
static __always_inline __u32 sm_status_fast(struct sm_resp *r, const __u8 *p, __u32 avail)
{
	if (avail < 12)
		return 0;
	__u64 w0 = *(const __u64 *)p, w1 = *(const __u64 *)(p + 8);
	if (sm_w_zero(w0 ^ SM_W_LF) | sm_w_zero((w1 ^ SM_W_LF) | 0xffffffff00000000ULL))
		return 0;
	__u32 st = r->status;
	for (int k = 1; k < 4; k++) {
		/* a digit adds itself, another byte nothing (without a branch) */
		__s32 d = (__u8)((w1 >> (8 * k)) - '0');
		__u32 digit = (__u32)(d - 10) >> 31;
		st = st * (1 + 9 * digit) + d * digit;
	}
	r->status = st;
	r->line = 12;
	r->phase = SM_P_HSKIP;
	return 12;
}

/* A header line's start: the empty line that ends the head, one of the three names that
 * frame a response with its ':' (consumed; the value follows) or another line (skipped).
 * Other lines ending within two bytes (which may end the head too), and lines with fewer
 * than SM_RESP_LOOK bytes at hand, are left to the caller. */
static __always_inline __u32 sm_line_fast(struct sm_resp *r, const __u8 *p, __u32 avail)
{
	if (avail >= 2 && *(const __u16 *)p == ('\r' | '\n' << 8)) {
		sm_head_done(r); /* as '\r' then '\n' at a line's start */
		return 2;
	}
	if (avail < SM_RESP_LOOK)
		return 0;
	__u64 w0 = *(const __u64 *)p, w1 = *(const __u64 *)(p + 8), w2 = *(const __u64 *)(p + 16);
	if (sm_w_zero((w0 ^ SM_W_LF) | 0xffffffffffff0000ULL))
		return 0;
	__u64 f = SM_W_ONES * SM_FOLD;
	/* 0 when the line starts with that name and ':' (any case) */
	__u64 cl = ((w0 | SM_W8(32, 32, 32, 32, 32, 32, 32, 0)) ^
		    SM_W8('c', 'o', 'n', 't', 'e', 'n', 't', '-')) |
		   (((w1 | SM_W8(32, 32, 32, 32, 32, 32, 0, 0)) ^
		     SM_W8('l', 'e', 'n', 'g', 't', 'h', ':', 0)) & 0x00ffffffffffffffULL);
	__u64 conn = ((w0 | f) ^ SM_W8('c', 'o', 'n', 'n', 'e', 'c', 't', 'i')) |
		     (((w1 | SM_W8(32, 32, 0, 0, 0, 0, 0, 0)) ^
		       SM_W8('o', 'n', ':', 0, 0, 0, 0, 0)) & 0xffffff);
	__u64 te = ((w0 | f) ^ SM_W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r')) |
		   ((w1 | SM_W8(0, 32, 32, 32, 32, 32, 32, 32)) ^
		    SM_W8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n')) |
		   (((w2 | 32) ^ SM_W8('g', ':', 0, 0, 0, 0, 0, 0)) & 0xffff);
	__u32 in, n;
	if (!cl) {
		in = SM_RF_IN_CL | SM_RF_CL;
		n = 15;
		r->left = 0;
	} else if (!conn) {
		in = SM_RF_IN_CONN;
		n = 11;
	} else if (!te) {
		in = SM_RF_IN_TE;
		n = 18;
	} else {
		/* none of them; its first two bytes are no '\n', so it cannot end the head */
		return sm_skip_words(r, w0, w1, w2, avail);
	}
	/* as sm_hname_byte at the ':' */
	r->flags = (r->flags & ~SM_IN_ANY) | in;
	r->phase = SM_P_HVAL;
	r->line = n;
	r->hash = SM_FNV_OFFSET;
	return n;
}

/* A header value (SM_P_HVAL), a word at a time where it can be told at once.
 * Content-Length: its digits count and other bytes do not (as byte by byte), up to '\n'.
 * Transfer-Encoding, Connection: only "chunked" / "close" count, and spaces, tabs and CRs
 * are not hashed, so a value whose first other byte is no 'c' (or 'C') is none of them:
 * the rest of its line is skipped (decided while the value's hash is still empty).  Any
 * other header's value does not count at all. */
static __always_inline __u32 sm_value_fast(struct sm_resp *r, const __u8 *p, __u32 avail)
{
	if (avail < 8)
		return 0;
	__u32 fl = r->flags;
	if (!(fl & SM_IN_ANY)) {
		r->phase = SM_P_HSKIP; /* ends at the '\n' as the value would */
		return sm_skip_fast(r, p, avail);
	}
	__u64 w = *(const __u64 *)p;
	if (fl & SM_RF_IN_CL) {
		__u64 t = sm_w_zero(w ^ SM_W_LF);
		__u32 k = t ? sm_w_first(t) : 8; /* bytes before the '\n' */
		__u64 left = r->left;
		for (int i = 0; i < 8; i++) {
			/* a digit before the '\n' adds itself (without a branch) */
			__s32 d = (__u8)((w >> (8 * i)) - '0');
			__u64 digit = ((__u32)(d - 10) >> 31) & ((__u32)(i - k) >> 31);
			left = left * (1 + 9 * digit) + d * digit;
		}
		r->left = left;
		if (!t)
			return 8;
		/* as sm_hval_byte at the '\n' */
		r->flags = fl & ~SM_IN_ANY;
		r->phase = SM_P_HNAME;
		r->line = 0;
		r->hash = SM_FNV_OFFSET;
		return k + 1;
	}
	if (r->hash != SM_FNV_OFFSET)
		return 0; /* past the value's first counted byte */
	__u8 c = w;
	__u32 n = 1;
	if (c == ' ' || c == '\t' || c == '\r') {
		c = w >> 8;
		n = 2;
	}
	if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || (c | SM_FOLD) == 'c')
		return 0;
	r->flags = fl & ~SM_IN_ANY; /* what its '\n' would clear */
	r->phase = SM_P_HSKIP;
	return n;
}

/* One framing step in phase ph (== r->phase; passed in so that the verifier walks one
 * phase's code per branch): a fast path where it applies, else one byte.  Returns the
 * bytes consumed (>= 1).  Body and chunk data runs are the caller's. */
static __always_inline __u32 sm_resp_step(struct sm_resp *r, const __u8 *p, __u32 avail,
					  __u32 ph)
{
	__u32 n;
	if (ph == SM_P_HSKIP) {
		n = sm_skip_fast(r, p, avail);
		if (!n) {
			sm_hskip_byte(r, *p);
			n = 1;
		}
		return n;
	}
	if (ph == SM_P_STATUS) {
		n = r->line == 0 ? sm_status_fast(r, p, avail) : 0;
		if (!n) {
			sm_status_byte(r, *p);
			n = 1;
		}
		return n;
	}
	if (ph == SM_P_HNAME) {
		n = r->line == 0 ? sm_line_fast(r, p, avail) : 0;
		if (!n) {
			sm_hname_byte(r, *p);
			n = 1;
		}
		return n;
	}
	if (ph == SM_P_HVAL) {
		n = sm_value_fast(r, p, avail);
		if (!n) {
			sm_hval_byte(r, *p);
			n = 1;
		}
		return n;
	}
	sm_chunk_ph(r, *p, ph);
	return 1;
}

#endif /* SOCKMESH_HTTP_FRAME_H */
