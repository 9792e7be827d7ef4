/* spiketriton's fused CPU neuron: the multi-step neuron of docs/spec/neurons.md in one pass over the
 * input, for float32 and float64. Built on first use by spiketriton/kernels/neuron_cpu.py with the
 * system C compiler and loaded with ctypes; see that module for when it is used.
 * No -ffast-math and -ffp-contract=off: each operation rounds once, as torch's elementwise ops do. */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 256 /* elements of a row carried through the T steps together (a multiple of 8) */

/* 0/1 bytes -> bits, LSB first. s has CHUNK bytes, those past n zero, so a partial last byte gets
 * zero padding. On a little-endian machine 8 bytes read as one word w pack with one multiply: byte i of
 * w (0 or 1) lands on bit 56 + i of w * 0x0102040810204080, with no carries. */
static inline void pack_row(const uint8_t *s, int64_t n, uint8_t *out)
{
    for (int64_t j = 0; j < (n + 7) / 8; j++) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t w;
        memcpy(&w, s + 8 * j, 8);
        out[j] = (uint8_t)((w * 0x0102040810204080ULL) >> 56);
#else
        uint8_t b = 0;
        for (int i = 0; i < 8; i++)
            b |= (uint8_t)(s[8 * j + i] << i);
        out[j] = b;
#endif
    }
}

int st_abi_version(void) { return 1; }

#define REAL float
#define REAL_MAX FLT_MAX
#define EXP expf
#define FABS fabsf
#define SUFFIX f32
#define ST_SPECIALIZE 1
#include "neuron_cpu_body.h"
#undef REAL
#undef REAL_MAX
#undef EXP
#undef FABS
#undef SUFFIX
#undef ST_SPECIALIZE

#define REAL double
#define REAL_MAX DBL_MAX
#define EXP exp
#define FABS fabs
#define SUFFIX f64
#define ST_SPECIALIZE 0
#include "neuron_cpu_body.h"
