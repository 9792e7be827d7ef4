/* The fused neuron algorithm for one floating type: included twice by neuron_cpu.c, with
 * REAL = float (suffix _f32) and REAL = double (suffix _f64). ST_SPECIALIZE 1 compiles one loop per
 * combination of options (reset mode, decay, adaptive, ...), each straight-line code that vectorizes;
 * 0 one loop with the options as runtime tests (float64, rare on the CPU: half the compile time).
 *
 * Every arithmetic step is the one the PyTorch path (kernels/neuron_torch.py) performs, in the same
 * order and the same type, with constants rounded to REAL as torch rounds a Python scalar. The file is
 * compiled with -ffp-contract=off and without -ffast-math, so each operation rounds once, as torch's
 * elementwise ops do: spikes, H and the states agree with the PyTorch path bit for bit (tested).
 *
 * Layout: x, spikes, H are [T, R, L] contiguous; states [R, L]; packed bits [T, R, ceil(L/8)], bit i
 * of byte j is element 8j + i of a row (LSB first, docs/spec/packed-spikes.md). The work runs over
 * chunks of CHUNK elements of one row, each carried through all T steps with its state in a local
 * array: one pass over x instead of one per elementwise op.
 */

#define ST_CAT_(a, b) a##b
#define ST_CAT(a, b) ST_CAT_(a, b)
#define FN(name) ST_CAT(name, SUFFIX)
/* M(0), M(1) or M(2) for the reset mode r: one call site with a constant per mode */
#define ST_BY_RESET(M, r) do { if ((r) == 0) M(0); else if ((r) == 1) M(1); else M(2); } while (0)

static inline __attribute__((always_inline)) REAL FN(surrogate_)(int id, REAL alpha, REAL x)
{
    /* the derivative_ of spiketriton/surrogate.py, op for op */
    switch (id) {
    case 0: { /* Sigmoid: s = sigmoid(a x); (s - s s) a */
        REAL s = (REAL)1 / ((REAL)1 + EXP(-(x * alpha)));
        return (s - s * s) * alpha;
    }
    case 1: { /* ATan: a/2 / (1 + (pi/2 a x)^2) */
        REAL c = (REAL)(1.5707963267948966 * (double)alpha);
        REAL u = x * c;
        return ((REAL)1 / (u * u + (REAL)1)) * (REAL)((double)alpha / 2);
    }
    case 2: { /* PiecewiseQuadratic: max(a - a^2 |x|, 0) */
        REAL u = FABS(x) * (REAL)(-((double)alpha * (double)alpha)) + alpha;
        return u > 0 ? u : (REAL)0;
    }
    case 3: /* PiecewiseExp: a/2 exp(-a |x|) */
        return EXP(FABS(x) * (REAL)(-(double)alpha)) * (REAL)((double)alpha / 2);
    case 4: { /* SoftSign: 1 / (2a (1/a + |x|)^2) */
        REAL u = FABS(x) + (REAL)(1.0 / (double)alpha);
        return (REAL)1 / ((u * u) * (REAL)(2.0 * (double)alpha));
    }
    case 5: { /* SuperSpike: a / (|x| + 1)^2 */
        REAL u = FABS(x) + (REAL)1;
        return ((REAL)1 / (u * u)) * alpha;
    }
    case 6: { /* Erf: a/sqrt(pi) exp(-(a x)^2) */
        REAL u = x * alpha;
        return EXP(-(u * u)) * (REAL)((double)alpha / 1.7724538509055159);
    }
    default: { /* Rect (width w): 1/w inside |x| < w/2, 0 on the edge and outside */
        REAL u = FABS(x) - (REAL)((double)alpha / 2);
        return u < 0 ? (REAL)(1.0 / (double)alpha) : (REAL)0;
    }
    }
}

/* a chunk's carried-in state, or the initial value (the test outside the loops, so that both vectorize:
 * inside, this copy was a quarter of a single step's instructions) */
static inline void FN(load_)(REAL *dst, const REAL *src, REAL init, int64_t n)
{
    if (src)
        for (int64_t i = 0; i < n; i++)
            dst[i] = src[i];
    else
        for (int64_t i = 0; i < n; i++)
            dst[i] = init;
}

/* Family A over all rows: the flags are compile-time constants at each call site of the dispatcher
 * below, so the compiler emits one branch-free (vectorizable) loop per combination. */
static inline __attribute__((always_inline)) void FN(fwd_a_)(
    const REAL *x, int64_t T, int64_t R, int64_t L, const REAL *v0, REAL k, REAL vth, REAL vr, REAL v_init,
    REAL *spikes, uint8_t *bits, REAL *hs, REAL *v_last, const int decay, const int reset)
{
    /* reset: 0 hard to 0, 1 hard to vr != 0, 2 soft */
    const REAL fmax = REAL_MAX;
    const int64_t LB = (L + 7) / 8, N = R * L;
    REAL v[CHUNK], hb[CHUNK];
    uint8_t sb[CHUNK];
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j0 = 0; j0 < L; j0 += CHUNK) {
            const int64_t n = L - j0 < CHUNK ? L - j0 : CHUNK;
            const int64_t base = r * L + j0;
            FN(load_)(v, v0 ? v0 + base : NULL, v_init, n);
            memset(sb, 0, sizeof sb);
            for (int64_t t = 0; t < T; t++) {
                const int64_t off = t * N + base;
                const REAL *xt = x + off;
                for (int64_t i = 0; i < n; i++) { /* hot loop: fwd A */
                    const REAL vv = v[i], tmp = vv - vr;
                    const REAL h = decay ? (xt[i] - tmp) * k + vv : (vv - tmp * k) + xt[i];
                    const REAL s = (REAL)(h >= vth);
                    REAL vn;
                    if (reset < 2) { /* hard: min(H, max) (H < Vth) + Vr S */
                        const REAL c = h > fmax ? fmax : h;
                        vn = c * (REAL)(h < vth);
                        if (reset == 1)
                            vn = vn + vr * s;
                    } else {
                        vn = h - vth * s;
                    }
                    v[i] = vn;
                    hb[i] = h;
                    sb[i] = (uint8_t)(h >= vth);
                }
                if (hs) /* a loop, not memcpy: a library call per 64 elements cost 3x the forward */
                    for (int64_t i = 0; i < n; i++)
                        hs[off + i] = hb[i];
                if (spikes)
                    for (int64_t i = 0; i < n; i++)
                        spikes[off + i] = (REAL)sb[i];
                if (bits)
                    pack_row(sb, n, bits + (t * R + r) * LB + j0 / 8);
            }
            for (int64_t i = 0; i < n; i++)
                v_last[base + i] = v[i];
        }
    }
}

/* Family B (Extended LIF) over all rows; reset 0 hard, 1 soft, 2 soft by a constant. */
static inline __attribute__((always_inline)) void FN(fwd_b_)(
    const REAL *x, int64_t T, int64_t R, int64_t L, const REAL *v0, const REAL *a0, const int32_t *ref0,
    REAL alpha, REAL beta, const int64_t *si, const double *sf, REAL *spikes, uint8_t *bits, REAL *hs,
    float *vths, uint8_t *gates, uint8_t *floors, REAL *v_last, REAL *a_last, int32_t *ref_last,
    const int reset, const int adaptive, const int refractory)
{
    const int32_t ref_len = (int32_t)si[5];
    const REAL vth_c = (REAL)sf[1], v_reset = (REAL)sf[2], v_init = (REAL)sf[3], v_l = (REAL)sf[4];
    const REAL dv = (REAL)sf[5], th_alpha = (REAL)sf[6], th_beta = (REAL)sf[7], th_incre = (REAL)sf[8];
    const int64_t LB = (L + 7) / 8, N = R * L;
    REAL v[CHUNK], a[CHUNK], hb[CHUNK];
    float rb[CHUNK];
    int32_t rc[CHUNK];
    uint8_t sb[CHUNK], gb[CHUNK], fb[CHUNK];
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j0 = 0; j0 < L; j0 += CHUNK) {
            const int64_t n = L - j0 < CHUNK ? L - j0 : CHUNK;
            const int64_t base = r * L + j0;
            FN(load_)(v, v0 ? v0 + base : NULL, v_init, n);
            FN(load_)(a, a0 ? a0 + base : NULL, (REAL)0, n);
            for (int64_t i = 0; i < n; i++)
                rc[i] = ref0 ? ref0[base + i] : 0;
            memset(sb, 0, sizeof sb);
            memset(gb, 0, sizeof gb);
            memset(fb, 0, sizeof fb);
            for (int64_t t = 0; t < T; t++) {
                const int64_t off = t * N + base;
                const REAL *xt = x + off;
                for (int64_t i = 0; i < n; i++) { /* hot loop: fwd B */
                    const REAL raw = vth_c + a[i];
                    REAL vth;
                    if (adaptive) {
                        const REAL q = raw != raw ? v_l : raw; /* an overflowed state: NaN -> v_l */
                        vth = q < v_l ? v_l : q;
                    } else {
                        vth = raw < v_l ? v_l : raw;
                    }
                    const int gate = refractory ? rc[i] == 0 : 1;
                    const REAL xi = xt[i]; /* read unconditionally: a conditional load stops vectorization */
                    const REAL h = refractory ? (gate ? xi : (REAL)0) + v[i] : xi + v[i];
                    const int s = h > vth;
                    const REAL sr = (REAL)s;
                    REAL v2;
                    if (reset == 0)
                        v2 = s ? v_reset : h;
                    else if (reset == 1)
                        v2 = adaptive ? (s ? h - vth : h) : h - sr * vth;
                    else
                        v2 = h - sr * dv;
                    REAL vn = v2 * alpha + beta;
                    fb[i] = (uint8_t)(vn >= v_l);
                    vn = vn != vn ? v_l : vn;
                    v[i] = vn < v_l ? v_l : vn;
                    if (adaptive)
                        a[i] = (a[i] * th_alpha + th_beta) + sr * th_incre;
                    if (refractory)
                        rc[i] = s ? ref_len : (rc[i] - 1 > 0 ? rc[i] - 1 : 0);
                    sb[i] = (uint8_t)s;
                    gb[i] = (uint8_t)gate;
                    hb[i] = h;
                    rb[i] = (float)raw;
                }
                if (hs) /* a loop, not memcpy: a library call per 64 elements cost 3x the forward */
                    for (int64_t i = 0; i < n; i++)
                        hs[off + i] = hb[i];
                if (vths)
                    for (int64_t i = 0; i < n; i++)
                        vths[off + i] = rb[i];
                if (spikes)
                    for (int64_t i = 0; i < n; i++)
                        spikes[off + i] = (REAL)sb[i];
                const int64_t boff = (t * R + r) * LB + j0 / 8;
                if (bits)
                    pack_row(sb, n, bits + boff);
                if (gates)
                    pack_row(gb, n, gates + boff);
                if (floors)
                    pack_row(fb, n, floors + boff);
            }
            for (int64_t i = 0; i < n; i++) {
                v_last[base + i] = v[i];
                if (a_last)
                    a_last[base + i] = a[i];
                if (ref_last)
                    ref_last[base + i] = rc[i];
            }
        }
    }
}

/* spec ints:   family, surrogate id, reset mode, detach_reset, decay_input, ref_len, adaptive,
 *              refractory, has_floor
 * spec floats: surrogate alpha, v_threshold, v_reset, v_init, v_l, dv, v_th_alpha, v_th_beta,
 *              v_th_incre
 * Optional pointers are NULL when absent. Returns 0, or a negative code for arguments it refuses. */
int FN(st_neuron_fwd_)(const REAL *x, int64_t T, int64_t R, int64_t L, const REAL *v0, const REAL *a0,
                       const int32_t *ref0, const REAL *params, const int64_t *si, const double *sf,
                       REAL *spikes, uint8_t *bits, REAL *hs, float *vths, uint8_t *gates, uint8_t *floors,
                       REAL *v_last, REAL *a_last, int32_t *ref_last)
{
    if (T < 0 || R < 0 || L < 0 || !x || !params || !v_last || si[2] < 0 || si[2] > 2)
        return -1;
    if (si[0] == 0) {
        const REAL k = params[0], vth = (REAL)sf[1], v_init = (REAL)sf[3];
        const int hard = si[2] == 0;
        const REAL vr = hard ? (REAL)sf[2] : (REAL)0;
        const int reset = !hard ? 2 : (vr != 0 ? 1 : 0);
#define ST_FWD_A(d, rs) FN(fwd_a_)(x, T, R, L, v0, k, vth, vr, v_init, spikes, bits, hs, v_last, d, rs)
#define ST_FWD_A_DECAY(rs) ST_FWD_A(1, rs)
#define ST_FWD_A_NODECAY(rs) ST_FWD_A(0, rs)
#if ST_SPECIALIZE
        if (si[4])
            ST_BY_RESET(ST_FWD_A_DECAY, reset);
        else
            ST_BY_RESET(ST_FWD_A_NODECAY, reset);
#else
        ST_FWD_A((int)si[4], reset);
#endif
#undef ST_FWD_A_NODECAY
#undef ST_FWD_A_DECAY
#undef ST_FWD_A
        return 0;
    }
    const REAL alpha = params[0], beta = params[1];
    const int adaptive = (int)si[6], refractory = (int)si[7];
    if (!adaptive)
        a0 = NULL, a_last = NULL, vths = NULL;
    if (!refractory)
        ref0 = NULL, ref_last = NULL, gates = NULL;
#define ST_FWD_B(rs, ad, rf) FN(fwd_b_)(x, T, R, L, v0, a0, ref0, alpha, beta, si, sf, spikes, bits, hs, vths, gates, \
                                        floors, v_last, a_last, ref_last, rs, ad, rf)
#define ST_FWD_B_RF(rs, ad) do { if (refractory) ST_FWD_B(rs, ad, 1); else ST_FWD_B(rs, ad, 0); } while (0)
#define ST_FWD_B_AD(rs) do { if (adaptive) ST_FWD_B_RF(rs, 1); else ST_FWD_B_RF(rs, 0); } while (0)
#if ST_SPECIALIZE
    ST_BY_RESET(ST_FWD_B_AD, si[2]);
#else
    ST_FWD_B((int)si[2], adaptive, refractory);
#endif
#undef ST_FWD_B_AD
#undef ST_FWD_B_RF
#undef ST_FWD_B
    return 0;
}

/* The surrogate derivative of h - vth over a row chunk (vths: a threshold per element, else vth): the
 * switch outside the loops, so that each loop is straight-line code. */
static __attribute__((noinline)) void FN(surrogate_row_)(int id, REAL alpha, REAL vth, const REAL *vths,
                                                          const REAL *h, int64_t n, REAL *out)
{
    REAL d[CHUNK];
    for (int64_t i = 0; i < n; i++)
        d[i] = vths ? h[i] - vths[i] : h[i] - vth;
    switch (id) {
#define ST_SG_CASE(k) case k: for (int64_t i = 0; i < n; i++) out[i] = FN(surrogate_)(k, alpha, d[i]); break;
    ST_SG_CASE(0) ST_SG_CASE(1) ST_SG_CASE(2) ST_SG_CASE(3) ST_SG_CASE(4) ST_SG_CASE(5) ST_SG_CASE(6)
    default: for (int64_t i = 0; i < n; i++) out[i] = FN(surrogate_)(7, alpha, d[i]); break;
#undef ST_SG_CASE
    }
}

/* bits -> 0/1 values of a row chunk (n of them; the bytes past n are padding) */
static inline void FN(unpack_row_)(const uint8_t *b, int64_t n, REAL *out)
{
    for (int64_t j = 0; j < (n + 7) / 8; j++)
        for (int i = 0; i < 8; i++)
            out[8 * j + i] = (REAL)((b[j] >> i) & 1);
}

/* Family A backward over all rows, the flags constant at each call site of the dispatcher below. */
static inline __attribute__((always_inline)) void FN(bwd_a_)(
    const REAL *gs, const REAL *hs, const uint8_t *bits, int64_t T, int64_t R, int64_t L, const REAL *gv_last,
    const REAL *v0, REAL k, int sg_id, REAL sg_alpha, const REAL *sg_pre, REAL vth, REAL vr, REAL v_init, REAL *gx,
    REAL *gv0, double *gk, const int hard, const int detach, const int decay, const int params)
{
    const REAL keep = (REAL)1 - k;
    const int64_t LB = (L + 7) / 8, N = R * L;
    double acc = 0.0, pacc[CHUNK];
    REAL gv[CHUNK], sgb[CHUNK], sb[CHUNK + 8], sp[CHUNK + 8], vp[CHUNK];
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j0 = 0; j0 < L; j0 += CHUNK) {
            const int64_t n = L - j0 < CHUNK ? L - j0 : CHUNK;
            const int64_t base = r * L + j0;
            FN(load_)(gv, gv_last ? gv_last + base : NULL, (REAL)0, n);
            for (int64_t i = 0; i < n; i++)
                pacc[i] = 0.0;
            for (int64_t t = T - 1; t >= 0; t--) {
                const int64_t off = t * N + base;
                const REAL *h = hs + off, *g = gs + off;
                const REAL *sg = sgb;
                if (sg_pre)
                    sg = sg_pre + off;
                else
                    FN(surrogate_row_)(sg_id, sg_alpha, vth, NULL, h, n, sgb);
                if (hard)
                    FN(unpack_row_)(bits + (t * R + r) * LB + j0 / 8, n, sb);
                if (params) {
                    /* V[t-1]: the state after step t-1's reset, or the initial state */
                    if (t > 0) {
                        const REAL *hp = h - N;
                        FN(unpack_row_)(bits + ((t - 1) * R + r) * LB + j0 / 8, n, sp);
                        for (int64_t i = 0; i < n; i++)
                            vp[i] = hard ? (hp[i] - hp[i] * sp[i]) + sp[i] * vr : hp[i] - sp[i] * vth;
                    } else {
                        for (int64_t i = 0; i < n; i++)
                            vp[i] = v0 ? v0[base + i] : v_init;
                    }
                }
                REAL *gxt = gx + off;
                for (int64_t i = 0; i < n; i++) { /* hot loop: bwd A */
                    REAL gh, g_v = gv[i];
                    if (detach) {
                        gh = g[i] * sg[i];
                        if (hard)
                            g_v = g_v + (REAL)(-1) * (g_v * sb[i]);    /* gV (1 - S) */
                        gh = gh + g_v;
                    } else if (hard) {
                        gh = (-(h[i] - vr) * g_v + g[i]) * sg[i];      /* sg (dS + gV (Vr - H)) */
                        gh = (gh + g_v) + (REAL)(-1) * (g_v * sb[i]);  /* + gV (1 - S) */
                    } else {
                        gh = (g_v * -vth + g[i]) * sg[i] + g_v;        /* sg (dS - gV Vth) + gV */
                    }
                    gxt[i] = decay ? gh * k : gh;
                    if (params) {
                        const REAL dk = decay ? (h[i] - vp[i]) / k : -(vp[i] - vr);
                        pacc[i] += (double)gh * (double)dk;
                    }
                    gv[i] = gh * keep;
                }
            }
            for (int64_t i = 0; i < n; i++)
                gv0[base + i] = gv[i];
            if (params)
                for (int64_t i = 0; i < n; i++)
                    acc += pacc[i];
        }
    }
    if (params)
        *gk = acc;
}

/* Family A backward (IF/LIF/PLIF): the PyTorch path's per-step loop, per element.
 * gs: dL/dS [T, R, L]; hs: saved H; bits: packed spikes; sg_pre: the surrogate derivative at H - Vth
 * [T, R, L] when the caller computed it, else NULL; gv_last: dL/dV[T-1] or NULL; v0: the
 * carried-in state or NULL (then v_init); gx: out [T, R, L]; gv0: out [R, L]; gk: out, dL/dk
 * summed in double (NULL: not wanted). */
int FN(st_neuron_bwd_a_)(const REAL *gs, const REAL *hs, const uint8_t *bits, const REAL *sg_pre, int64_t T,
                         int64_t R, int64_t L, const REAL *gv_last, const REAL *v0, const REAL *params, const int64_t *si,
                         const double *sf, REAL *gx, REAL *gv0, double *gk)
{
    if (T < 0 || R < 0 || L < 0 || !gs || !hs || !bits || !params || !gx || !gv0 || si[0] != 0)
        return -1;
    const int sg_id = (int)si[1], hard = si[2] == 0;
    const REAL sg_alpha = (REAL)sf[0], vth = (REAL)sf[1], v_init = (REAL)sf[3];
    const REAL vr = hard ? (REAL)sf[2] : (REAL)0;
    const REAL k = params[0];
#define ST_BWD(h, dt, dc, p) FN(bwd_a_)(gs, hs, bits, T, R, L, gv_last, v0, k, sg_id, sg_alpha, sg_pre, vth, vr, v_init, \
                                        gx, gv0, gk, h, dt, dc, p)
#define ST_BWD_P(h, dt, dc) do { if (gk) ST_BWD(h, dt, dc, 1); else ST_BWD(h, dt, dc, 0); } while (0)
#define ST_BWD_DC(h, dt) do { if (si[4]) ST_BWD_P(h, dt, 1); else ST_BWD_P(h, dt, 0); } while (0)
#define ST_BWD_DT(h) do { if (si[3]) ST_BWD_DC(h, 1); else ST_BWD_DC(h, 0); } while (0)
#if ST_SPECIALIZE
    if (hard)
        ST_BWD_DT(1);
    else
        ST_BWD_DT(0);
#else
    ST_BWD(hard, (int)si[3], (int)si[4], gk != NULL);
#endif
#undef ST_BWD_DT
#undef ST_BWD_DC
#undef ST_BWD_P
#undef ST_BWD
    return 0;
}

/* Family B backward (Extended LIF) over all rows: the PyTorch path's per-step loop, per element; reset
 * (0 hard, 1 soft, 2 soft by a constant) and adaptive constant at each call site of the dispatcher. */
static inline __attribute__((always_inline)) void FN(bwd_b_)(
    const REAL *gs, const REAL *hs, const uint8_t *bits, const float *vths, const uint8_t *gates,
    const uint8_t *floors, const REAL *sg_pre, int64_t T, int64_t R, int64_t L, const REAL *gv_last,
    const REAL *ga_last, REAL alpha, const int64_t *si, const double *sf, REAL *gx, REAL *gv0, REAL *ga0,
    double *gp, const int reset, const int adaptive)
{
    const int sg_id = (int)si[1], detach = (int)si[3];
    const REAL sg_alpha = (REAL)sf[0], v_reset = (REAL)sf[2], v_l = (REAL)sf[4], dv = (REAL)sf[5];
    const REAL th_alpha = (REAL)sf[6], th_incre = (REAL)sf[8];
    const REAL vth_c = (REAL)(sf[1] > sf[4] ? sf[1] : sf[4]); /* max(v_th0, v_l), as the torch code's */
    const int64_t LB = (L + 7) / 8, N = R * L;
    double acc0 = 0.0, acc1 = 0.0, p0[CHUNK], p1[CHUNK];
    REAL gv[CHUNK], ga[CHUNK], sgb[CHUNK], vt[CHUNK], rw[CHUNK];
    REAL sb[CHUNK + 8], ab[CHUNK + 8], gb[CHUNK + 8];
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j0 = 0; j0 < L; j0 += CHUNK) {
            const int64_t n = L - j0 < CHUNK ? L - j0 : CHUNK;
            const int64_t base = r * L + j0;
            FN(load_)(gv, gv_last ? gv_last + base : NULL, (REAL)0, n);
            FN(load_)(ga, (adaptive && ga_last) ? ga_last + base : NULL, (REAL)0, n);
            for (int64_t i = 0; i < n; i++)
                p0[i] = p1[i] = 0.0;
            /* without a floor / a refractory period: factors of 1, which change no value (x * 1 == x, inf,
             * NaN and -0 included), so the loop below has no branch on them */
            FN(load_)(ab, NULL, (REAL)1, n);
            FN(load_)(gb, NULL, (REAL)1, n);
            for (int64_t t = T - 1; t >= 0; t--) {
                const int64_t off = t * N + base, boff = (t * R + r) * LB + j0 / 8;
                const REAL *h = hs + off, *g = gs + off;
                FN(unpack_row_)(bits + boff, n, sb);
                if (floors)
                    FN(unpack_row_)(floors + boff, n, ab);
                if (gates)
                    FN(unpack_row_)(gates + boff, n, gb);
                if (adaptive)
                    for (int64_t i = 0; i < n; i++) {
                        rw[i] = (REAL)vths[off + i];
                        vt[i] = rw[i] < v_l ? v_l : rw[i]; /* raw.clamp_min(v_l) */
                    }
                const REAL *sg = sgb;
                if (sg_pre)
                    sg = sg_pre + off;
                else
                    FN(surrogate_row_)(sg_id, sg_alpha, vth_c, adaptive ? vt : NULL, h, n, sgb);
                REAL *gxt = gx + off;
                for (int64_t i = 0; i < n; i++) { /* hot loop: bwd B */
                    const REAL s = sb[i], vth = adaptive ? vt[i] : vth_c;
                    REAL v2;
                    if (reset == 0)
                        v2 = s != 0 ? v_reset : h[i];
                    else if (reset == 1)
                        v2 = h[i] - s * vth;
                    else
                        v2 = h[i] - s * dv;
                    const REAL g_pre = gv[i] * ab[i];
                    p0[i] += (double)(g_pre * v2);
                    p1[i] += (double)g_pre;
                    const REAL g_v2 = g_pre * alpha;
                    REAL g_s = adaptive ? g[i] + ga[i] * th_incre : g[i];
                    REAL g_h, g_vth = 0;
                    if (reset == 0) {
                        g_h = g_v2 * ((REAL)1 - s);
                        g_s = detach ? g_s : g_s + g_v2 * (v_reset - h[i]);
                    } else if (reset == 1) {
                        g_h = g_v2;
                        g_vth = -g_v2 * s;
                        g_s = detach ? g_s : g_s - g_v2 * vth;
                    } else {
                        g_h = g_v2;
                        g_s = detach ? g_s : g_s - g_v2 * dv;
                    }
                    g_h = g_h + g_s * sg[i];
                    gxt[i] = g_h * gb[i];
                    gv[i] = g_h;
                    if (adaptive) {
                        g_vth = reset == 1 ? g_vth - g_s * sg[i] : -g_s * sg[i];
                        ga[i] = ga[i] * th_alpha + (rw[i] >= v_l ? g_vth : (REAL)0);
                    }
                }
            }
            for (int64_t i = 0; i < n; i++) {
                gv0[base + i] = gv[i];
                if (ga0)
                    ga0[base + i] = ga[i];
                acc0 += p0[i];
                acc1 += p1[i];
            }
        }
    }
    if (gp) {
        gp[0] = acc0;
        gp[1] = acc1;
    }
}

/* Family B backward. vths: the saved raw thresholds (adaptive), gates / floors: the saved bit planes
 * (refractory / floored) or NULL; ga_last: dL/da[T-1] or NULL; ga0: out (adaptive) or NULL; gp: out,
 * dL/d(alpha, beta) summed in double, or NULL. */
int FN(st_neuron_bwd_b_)(const REAL *gs, const REAL *hs, const uint8_t *bits, const float *vths,
                         const uint8_t *gates, const uint8_t *floors, const REAL *sg_pre, int64_t T, int64_t R,
                         int64_t L, const REAL *gv_last, const REAL *ga_last, const REAL *params,
                         const int64_t *si, const double *sf, REAL *gx, REAL *gv0, REAL *ga0, double *gp)
{
    const int adaptive = (int)si[6];
    if (T < 0 || R < 0 || L < 0 || !gs || !hs || !bits || !params || !gx || !gv0 || si[0] != 1 || si[2] < 0
        || si[2] > 2 || (adaptive && !vths))
        return -1;
    const REAL alpha = params[0];
#define ST_BWD_B(rs, ad) FN(bwd_b_)(gs, hs, bits, vths, gates, floors, sg_pre, T, R, L, gv_last, ga_last, alpha, si, \
                                    sf, gx, gv0, ad ? ga0 : NULL, gp, rs, ad)
#define ST_BWD_B_AD(rs) do { if (adaptive) ST_BWD_B(rs, 1); else ST_BWD_B(rs, 0); } while (0)
#if ST_SPECIALIZE
    ST_BY_RESET(ST_BWD_B_AD, si[2]);
#else
    ST_BWD_B((int)si[2], adaptive);
#endif
#undef ST_BWD_B_AD
#undef ST_BWD_B
    return 0;
}

/* The entry points Python calls: one argument, a block of int64 (pointers as addresses, 0 for NULL),
 * in the order of the functions above. ctypes converts each argument of a call: 19 of them cost
 * 12 us a call, a block filled from Python 1 us (measured on the CI machine). */
#define ST_P(type, i) ((type)(intptr_t)a[i])
int FN(st_neuron_fwd_args_)(const int64_t *a)
{
    return FN(st_neuron_fwd_)(ST_P(const REAL *, 0), a[1], a[2], a[3], ST_P(const REAL *, 4), ST_P(const REAL *, 5),
                              ST_P(const int32_t *, 6), ST_P(const REAL *, 7), ST_P(const int64_t *, 8),
                              ST_P(const double *, 9), ST_P(REAL *, 10), ST_P(uint8_t *, 11), ST_P(REAL *, 12),
                              ST_P(float *, 13), ST_P(uint8_t *, 14), ST_P(uint8_t *, 15), ST_P(REAL *, 16),
                              ST_P(REAL *, 17), ST_P(int32_t *, 18));
}

int FN(st_neuron_bwd_a_args_)(const int64_t *a)
{
    return FN(st_neuron_bwd_a_)(ST_P(const REAL *, 0), ST_P(const REAL *, 1), ST_P(const uint8_t *, 2),
                                ST_P(const REAL *, 3), a[4], a[5], a[6], ST_P(const REAL *, 7), ST_P(const REAL *, 8),
                                ST_P(const REAL *, 9), ST_P(const int64_t *, 10), ST_P(const double *, 11),
                                ST_P(REAL *, 12), ST_P(REAL *, 13), ST_P(double *, 14));
}
int FN(st_neuron_bwd_b_args_)(const int64_t *a)
{
    return FN(st_neuron_bwd_b_)(ST_P(const REAL *, 0), ST_P(const REAL *, 1), ST_P(const uint8_t *, 2),
                                ST_P(const float *, 3), ST_P(const uint8_t *, 4), ST_P(const uint8_t *, 5),
                                ST_P(const REAL *, 6), a[7], a[8], a[9], ST_P(const REAL *, 10),
                                ST_P(const REAL *, 11), ST_P(const REAL *, 12), ST_P(const int64_t *, 13),
                                ST_P(const double *, 14), ST_P(REAL *, 15), ST_P(REAL *, 16), ST_P(REAL *, 17),
                                ST_P(double *, 18));
}
#undef ST_P

#undef ST_BY_RESET
#undef FN
#undef ST_CAT
#undef ST_CAT_
