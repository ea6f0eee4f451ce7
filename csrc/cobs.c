/*
 * Consistent Overhead Byte Stuffing: the encoded bytes contain no zero, so a
 * single 0x00 can delimit frames on the serial stream.
 *
 * Without a full block (254 data bytes without a zero, which only the
 * longest messages can hold), the encoding is the bytes shifted by one with
 * each zero (and a first byte) replaced by the distance to the next. So both
 * directions copy the bytes in one piece and then deal with the zeros alone:
 * the encoder a word at a time whatever its zeros (a table gives each zero
 * pattern's codes, where the machine is little-endian), the decoder visiting
 * the code bytes. A DEV_DATA frame's values hold many zero bytes, in blocks
 * of a byte or two, where a branch per byte or per block costs more than the
 * bytes. Frames with a full block go block by block, as does a decoding that
 * might not fit its output (its errors come in the order they lie).
 */
#include "core.h"

#define LOWS7 0x7F7F7F7F7F7F7F7FULL

/* 0x80 in each byte of `word` that is zero, 0 elsewhere (exact, per byte). */
static inline uint64_t
zero_bytes(uint64_t word)
{
    return ~(((word & LOWS7) + LOWS7) | word | LOWS7);
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* For each pattern of zero bytes in a word (bit k: byte k is zero): what the
 * zeros become, but the last (each one the distance to the next zero), and
 * where the first and last zeros are. Filled once when the library loads. */
static uint64_t zero_codes[256];
static uint8_t first_zero[256], last_zero[256];

static void __attribute__((constructor))
fill_zero_tables(void)
{
    for (int mask = 1; mask < 256; mask++) {
        int previous = -1;
        for (int k = 0; k < 8; k++) {
            if (!(mask & (1 << k))) {
                continue;
            }
            if (previous < 0) {
                first_zero[mask] = (uint8_t)k;
            }
            else {
                zero_codes[mask] |= (uint64_t)(k - previous) << (8 * previous);
            }
            previous = k;
        }
        last_zero[mask] = (uint8_t)previous;
    }
}
#endif

Py_ssize_t
rt_cobs_link(uint8_t *buf, Py_ssize_t n)
{
    /* Positions fit in 32 bits (n < 254). `code`: the code byte waiting for
     * the distance to the next zero. */
    uint32_t code = 0, i = 1, end = (uint32_t)n + 1;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* A word at a time, whatever its zeros: they are filled in from a table,
     * and the code byte before them is set once. */
    for (; end - i >= 8; i += 8) {
        uint64_t word;
        memcpy(&word, buf + i, 8);
        uint64_t zeros = zero_bytes(word);
        if (zeros == 0) {
            continue;
        }
        unsigned mask = (unsigned)((zeros * 0x02040810204081ULL) >> 56);  /* the 0x80 bits, gathered */
        buf[code] = (uint8_t)(i + first_zero[mask] - code);
        word |= zero_codes[mask];
        memcpy(buf + i, &word, 8);
        code = i + last_zero[mask];
    }
#endif
    for (; i < end; i++) {
        if (buf[i] == 0) {
            buf[code] = (uint8_t)(i - code);
            code = i;
        }
    }
    buf[code] = (uint8_t)(end - code);
    return end;
}

Py_ssize_t
rt_cobs_encode(const uint8_t *in, Py_ssize_t n, uint8_t *out)
{
    if (n < 254) {
        memcpy(out + 1, in, (size_t)n);
        return rt_cobs_link(out, n);
    }
    rt_cobs_writer w;
    rt_cobs_writer_init(&w, out);
    for (Py_ssize_t i = 0; i < n; i++) {
        rt_cobs_put(&w, in[i]);
    }
    return rt_cobs_finish(&w);
}

Py_ssize_t
rt_cobs_decode(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t cap)
{
    if (n > 0 && n - 1 <= cap && in[0] != 0xFF) {
        /* Short enough that the output fits whatever the frame says (it is
         * shorter than the frame): the bytes after the first, with each
         * code byte that follows a block made a zero. A frame with a zero
         * byte, or whose blocks run past its end, is malformed. */
        if (memchr(in, 0, (size_t)n) != NULL) {
            return -1;
        }
        memcpy(out, in + 1, (size_t)(n - 1));
        /* Every byte is visited in order, rather than each code byte found from
         * the one before (a chain of dependent loads): the next position is
         * compared, and the branch is predicted. */
        Py_ssize_t next = in[0], at = 1;
        for (; at < n; at++) {
            if (at == next) {
                if (in[at] == 0xFF) {
                    break;
                }
                out[at - 1] = 0;
                next = at + in[at];
            }
        }
        if (at == n) {
            return next == n ? n - 1 : -1;
        }
        /* A full block (code 0xFF, no zero after it): block by block below. */
    }
    /* Possibly too long for `out`, or with a full block: block by block, each
     * error found where it lies (which comes first matters when both do). */
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        uint8_t code = in[i++];
        if (code == 0) {
            return -1;
        }
        Py_ssize_t run = code - 1;
        if (run > n - i) {
            return -1;  /* the block claims more bytes than the frame has */
        }
        if (run > cap - o) {
            return -2;
        }
        for (Py_ssize_t j = 0; j < run; j++) {
            uint8_t byte = in[i++];
            if (byte == 0) {
                return -1;
            }
            out[o++] = byte;
        }
        if (code != 0xFF && i < n) {
            if (o >= cap) {
                return -2;
            }
            out[o++] = 0;
        }
    }
    return o;
}
