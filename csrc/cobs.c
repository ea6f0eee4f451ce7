/*
 * Consistent Overhead Byte Stuffing: the encoded bytes contain no zero, so a
 * single 0x00 can delimit frames on the serial stream.
 */
#include "core.h"

Py_ssize_t
rt_cobs_encode(const uint8_t *in, Py_ssize_t n, uint8_t *out)
{
    Py_ssize_t code_at = 0, o = 1;
    uint8_t code = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
            continue;
        }
        out[o++] = in[i];
        if (++code == 0xFF) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        }
    }
    out[code_at] = code;
    return o;
}

Py_ssize_t
rt_cobs_decode(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t cap)
{
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
