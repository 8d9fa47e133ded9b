/* y = x @ W^T (+ bias) for W in llmprune's bitmask format (see llmprune/sparse/format.py), on CPU.
 *
 * A weight is described once by an `llmprune_weight` (built in Python, llmprune/sparse/kernel.py):
 *   values       uint16 (nnz)            kept bf16 or fp16 values, row-major
 *   bitmask      int32 (out, words)      bit j of word c of row r set <=> column 32c+j kept
 *   row_offsets  int64 (out + 1)         row r's values start at values[row_offsets[r]]
 *   bias         fp32 (out) or NULL
 * nm24 = 1 marks a 2:4 weight (in a multiple of 32): every mask byte keeps 4 values, so the AVX2 path finds
 * them at fixed offsets instead of popcounts (the Python side checks the pattern once, when it plans).
 * Or, with dense = 1, a plain (out, in) bf16/fp16 matrix (row r at values + r * in) read through one shared
 * mask row (all ones, pad bits 0): the same decode runs dense layers such as a tied lm_head.
 *
 * One call, `llmprune_linear`, takes x (b, in) in fp32, bf16 or fp16 (b in 1..8) and writes y (b, out) in
 * fp32, bf16 or fp16, accumulating in fp32 and rounding once (bias added in fp32). x is converted and
 * zero-padded to whole words once per call into a buffer owned by the calling thread and kept between
 * calls (no allocation per call). `llmprune_linear_group` does the same for up to 8 weights that read one
 * x (q/k/v, gate/up): one x conversion and one parallel region for all of them. Output rows are split across OpenMP threads (the runtime torch uses, so
 * one thread pool) by equal bytes of weight, not equal rows: unstructured masks from global pruning give
 * rows of very different lengths.
 *
 * One file, compiled once without -march: each path carries its own target attribute and Python picks one
 * at run time:
 *   avx512bf16   as avx512, then vdpbf16ps on bf16 x (AVX-512 BF16; bf16 x and bf16 W only)
 *   avx512       expands the kept values of each mask word in registers (AVX-512 expand), fp32 FMAs
 *   avx2         expands 8 values per mask byte with one byte shuffle from a table (AVX2 + F16C + FMA)
 *   generic      walks the set bits of each word (portable C)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if (defined(__x86_64__) || defined(__i386__)) && !defined(LLMPRUNE_PORTABLE_ONLY)
#define LLMPRUNE_X86 1
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAXB 8
/* Kept values are prefetched this many elements (8 KiB of bf16) ahead: the load addresses hang on popcounts of
 * the mask, which hides the stream from the hardware prefetcher; prefetching makes large layers ~3x faster. */
#define PREFETCH_AHEAD 4096
/* A thread gets at least this many weights of work, else waking it costs more than it saves. */
#define MIN_WEIGHTS_PER_THREAD 65536

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };
enum { PATH_GENERIC = 0, PATH_AVX2 = 1, PATH_AVX512 = 2, PATH_AVX512BF16 = 3 };

typedef struct {
    const uint16_t *values;
    const int32_t *bitmask;
    const int64_t *row_offsets; /* unused when dense */
    const float *bias;          /* NULL: no bias */
    int64_t out, in, words, nnz;
    int32_t is_fp16, dense;
    int32_t nm24;  /* 1: every 4 columns keep exactly 2 and in % 32 == 0, so word c's values start at 16c */
} llmprune_weight;

typedef struct {  /* where rows land: y (b, out) of dtype ydt */
    void *y;
    const float *bias;
    int64_t out;
    int ydt;
} out_t;

/* ---------------------------------------------------------------- scalar conversions */

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else {  /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f; memcpy(&f, &bits, 4); return f;
}

static inline float bf16_to_float(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16; float f; memcpy(&f, &bits, 4); return f;
}

/* round to nearest even, NaN -> quiet NaN: what torch's .to(torch.bfloat16) does */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE binary16, round to nearest even (overflow -> inf, subnormals kept), as torch's .to(torch.float16) */
static inline uint16_t float_to_half(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);  /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {  /* below the smallest normal half (2^-14): subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;  /* < 2^-25: rounds to 0 */
        uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e;  /* 14..24: value = m * 2^(e-150), half subnormal unit 2^-24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u;  /* rebias exponent 127 -> 15 (in the float's exponent field) */
    r += 0xFFFu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

static inline void store_row(const out_t *o, int64_t r, const float *acc, int b) {
    float bias = o->bias ? o->bias[r] : 0.0f;
    for (int k = 0; k < b; k++) {
        float v = acc[k] + bias;
        int64_t i = k * o->out + r;
        if (o->ydt == DT_F32) ((float *)o->y)[i] = v;
        else if (o->ydt == DT_BF16) ((uint16_t *)o->y)[i] = float_to_bf16(v);
        else ((uint16_t *)o->y)[i] = float_to_half(v);
    }
}

static inline const uint16_t *row_values(const llmprune_weight *w, int64_t r) {
    return w->values + (w->dense ? r * w->in : w->row_offsets[r]);
}

static inline const int32_t *row_mask(const llmprune_weight *w, int64_t r) {
    return w->bitmask + (w->dense ? 0 : r * w->words);
}

/* ---------------------------------------------------------------- portable C */

static void rows_generic(const llmprune_weight *w, int64_t r0, int64_t r1, const float *x, int b, const out_t *o) {
    const int64_t ld = w->words * 32;
    for (int64_t r = r0; r < r1; r++) {
        float acc[MAXB] = {0};
        const uint16_t *v = row_values(w, r);
        const int32_t *mrow = row_mask(w, r);
        for (int64_t c = 0; c < w->words; c++) {
            uint32_t m = (uint32_t)mrow[c];
            if (m) __builtin_prefetch(v + PREFETCH_AHEAD);
            while (m) {
                int j = __builtin_ctz(m);
                m &= m - 1;
                float wv = w->is_fp16 ? half_to_float(*v) : bf16_to_float(*v);
                v++;
                const float *xc = x + c * 32 + j;
                for (int k = 0; k < b; k++) acc[k] += wv * xc[k * ld];
            }
        }
        store_row(o, r, acc, b);
    }
}

#ifdef LLMPRUNE_X86

int llmprune_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2");
}

int llmprune_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

/* ---------------------------------------------------------------- AVX-512 */

/* Each 32-column word is decoded as two 16-column halves: masked (fault-free) load of the half's kept
 * values, widen to fp32, then vexpandps them to their columns. Expanding 32-bit lanes after widening is
 * ~2.5x faster than one 16-bit vpexpandw per word on AMD Zen 4/5, and as fast on Intel. */
#define AVX512_TARGET "avx512f,avx512bw,avx512vl,bmi2,f16c"

__attribute__((target(AVX512_TARGET), always_inline))
static inline __m512 widen16_avx512(const uint16_t *v, int cnt, int is_fp16) {
    __m256i raw = _mm256_maskz_loadu_epi16((__mmask16)_bzhi_u32(0xFFFFu, cnt), v);
    if (is_fp16) return _mm512_cvtph_ps(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target(AVX512_TARGET), always_inline))
static inline void row_avx512(const uint16_t *v, const int32_t *mrow, int64_t words, const float *x,
                              int64_t ld, const int B, float *acc_out, const int is_fp16) {
    __m512 acc0[MAXB], acc1[MAXB];  /* two chains per batch row hide the FMA latency */
    for (int k = 0; k < B; k++) acc0[k] = acc1[k] = _mm512_setzero_ps();
    for (int64_t c = 0; c < words; c++) {
        uint32_t m = (uint32_t)mrow[c];
        if (!m) continue;
        __builtin_prefetch(v + PREFETCH_AHEAD);
        uint32_t lo = m & 0xFFFF, hi = m >> 16;
        int nlo = __builtin_popcount(lo), nhi = __builtin_popcount(hi);
        __m512 w0 = _mm512_maskz_expand_ps((__mmask16)lo, widen16_avx512(v, nlo, is_fp16));
        __m512 w1 = _mm512_maskz_expand_ps((__mmask16)hi, widen16_avx512(v + nlo, nhi, is_fp16));
        v += nlo + nhi;
        const float *xc = x + c * 32;
        for (int k = 0; k < B; k++) {
            acc0[k] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xc + k * ld), acc0[k]);
            acc1[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xc + k * ld + 16), acc1[k]);
        }
    }
    for (int k = 0; k < B; k++) acc_out[k] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
}

#define ROWS_AVX512(B)                                                                              \
    __attribute__((target(AVX512_TARGET)))                                                          \
    static void rows_avx512_##B(const llmprune_weight *w, int64_t r0, int64_t r1, const float *x,   \
                                const out_t *o) {                                                   \
        float acc[MAXB];                                                                            \
        for (int64_t r = r0; r < r1; r++) {  /* is_fp16 as a constant: one specialised loop each */ \
            if (w->is_fp16) row_avx512(row_values(w, r), row_mask(w, r), w->words, x, w->words * 32, \
                                       B, acc, 1);                                                  \
            else row_avx512(row_values(w, r), row_mask(w, r), w->words, x, w->words * 32, B, acc, 0); \
            store_row(o, r, acc, B);                                                                \
        }                                                                                           \
    }
ROWS_AVX512(1) ROWS_AVX512(2) ROWS_AVX512(3) ROWS_AVX512(4)
ROWS_AVX512(5) ROWS_AVX512(6) ROWS_AVX512(7) ROWS_AVX512(8)

typedef void (*rows_fn)(const llmprune_weight *, int64_t, int64_t, const float *, const out_t *);
static const rows_fn AVX512_ROWS[MAXB] = {rows_avx512_1, rows_avx512_2, rows_avx512_3, rows_avx512_4,
                                          rows_avx512_5, rows_avx512_6, rows_avx512_7, rows_avx512_8};

/* ---------------------------------------------------------------- AVX-512 BF16 (bf16 x, bf16 W) */

/* Same decode, then the two fp32 halves are narrowed back to 32 bf16 in column order (exact: they were
 * bf16) and vdpbf16ps multiplies them by 32 bf16 columns of x: one load and one instruction per batch
 * row per word instead of two of each. Products are exact in fp32, sums in fp32 (denormals flushed). */
#define AVX512BF16_TARGET "avx512f,avx512bw,avx512vl,avx512bf16,bmi2,f16c"

__attribute__((target(AVX512BF16_TARGET), always_inline))
static inline __m512bh decode32_bf16(const uint16_t **v, uint32_t m) {
    uint32_t lo = m & 0xFFFF, hi = m >> 16;
    int nlo = __builtin_popcount(lo), nhi = __builtin_popcount(hi);
    __m256i a = _mm256_maskz_loadu_epi16((__mmask16)_bzhi_u32(0xFFFFu, nlo), *v);
    __m256i b = _mm256_maskz_loadu_epi16((__mmask16)_bzhi_u32(0xFFFFu, nhi), *v + nlo);
    *v += nlo + nhi;
    __m512 w0 = _mm512_maskz_expand_ps((__mmask16)lo, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16)));
    __m512 w1 = _mm512_maskz_expand_ps((__mmask16)hi, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
    return _mm512_cvtne2ps_pbh(w1, w0);
}

__attribute__((target(AVX512BF16_TARGET), always_inline))
static inline void row_avx512bf16(const uint16_t *v, const int32_t *mrow, int64_t words, const uint16_t *x,
                                  int64_t ld, const int B, float *acc_out) {
    __m512 acc0[MAXB], acc1[MAXB];  /* even and odd words: two chains hide the dot-product latency */
    for (int k = 0; k < B; k++) acc0[k] = acc1[k] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 1 < words; c += 2) {
        /* two words take up to 64 values (128 B, two lines): one prefetch per line, or a dense row
         * (all-ones mask) ran ~4.5x slower with every other line left to the hardware prefetcher */
        __builtin_prefetch(v + PREFETCH_AHEAD);
        __builtin_prefetch(v + PREFETCH_AHEAD + 32);
        __m512bh w0 = decode32_bf16(&v, (uint32_t)mrow[c]);
        __m512bh w1 = decode32_bf16(&v, (uint32_t)mrow[c + 1]);
        const uint16_t *xc = x + c * 32;
        for (int k = 0; k < B; k++) {
            acc0[k] = _mm512_dpbf16_ps(acc0[k], w0, (__m512bh)_mm512_loadu_si512(xc + k * ld));
            acc1[k] = _mm512_dpbf16_ps(acc1[k], w1, (__m512bh)_mm512_loadu_si512(xc + k * ld + 32));
        }
    }
    if (c < words) {
        __m512bh w0 = decode32_bf16(&v, (uint32_t)mrow[c]);
        for (int k = 0; k < B; k++)
            acc0[k] = _mm512_dpbf16_ps(acc0[k], w0, (__m512bh)_mm512_loadu_si512(x + c * 32 + k * ld));
    }
    for (int k = 0; k < B; k++) acc_out[k] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
}

/* Two rows at once: each 32-column load of x feeds both rows' dot products, halving x traffic. Pays off
 * from 4 rows of x; with fewer the second value stream costs more than the x loads it saves. */
#define PAIR_MIN_B 4
__attribute__((target(AVX512BF16_TARGET), always_inline))
static inline void row2_avx512bf16(const uint16_t *v0, const uint16_t *v1, const int32_t *m0, const int32_t *m1,
                                   int64_t words, const uint16_t *x, int64_t ld, const int B, float *acc_out0,
                                   float *acc_out1) {
    __m512 acc0[MAXB], acc1[MAXB];
    for (int k = 0; k < B; k++) acc0[k] = acc1[k] = _mm512_setzero_ps();
    for (int64_t c = 0; c < words; c++) {
        /* two streams a row apart: reach past the other row so both run ahead of use */
        __builtin_prefetch(v0 + 2 * PREFETCH_AHEAD);
        __builtin_prefetch(v1 + 2 * PREFETCH_AHEAD);
        __m512bh w0 = decode32_bf16(&v0, (uint32_t)m0[c]);
        __m512bh w1 = decode32_bf16(&v1, (uint32_t)m1[c]);
        const uint16_t *xc = x + c * 32;
        for (int k = 0; k < B; k++) {
            __m512bh xk = (__m512bh)_mm512_loadu_si512(xc + k * ld);
            acc0[k] = _mm512_dpbf16_ps(acc0[k], w0, xk);
            acc1[k] = _mm512_dpbf16_ps(acc1[k], w1, xk);
        }
    }
    for (int k = 0; k < B; k++) {
        acc_out0[k] = _mm512_reduce_add_ps(acc0[k]);
        acc_out1[k] = _mm512_reduce_add_ps(acc1[k]);
    }
}

#define ROWS_AVX512BF16(B)                                                                          \
    __attribute__((target(AVX512BF16_TARGET)))                                                      \
    static void rows_avx512bf16_##B(const llmprune_weight *w, int64_t r0, int64_t r1,               \
                                    const uint16_t *x, const out_t *o) {                            \
        float acc[MAXB], acc1[MAXB];                                                                \
        int64_t r = r0;                                                                             \
        for (; B >= PAIR_MIN_B && r + 1 < r1; r += 2) {                                             \
            row2_avx512bf16(row_values(w, r), row_values(w, r + 1), row_mask(w, r), row_mask(w, r + 1), \
                            w->words, x, w->words * 32, B, acc, acc1);                              \
            store_row(o, r, acc, B);                                                                \
            store_row(o, r + 1, acc1, B);                                                           \
        }                                                                                           \
        for (; r < r1; r++) {                                                                       \
            row_avx512bf16(row_values(w, r), row_mask(w, r), w->words, x, w->words * 32, B, acc);   \
            store_row(o, r, acc, B);                                                                \
        }                                                                                           \
    }
ROWS_AVX512BF16(1) ROWS_AVX512BF16(2) ROWS_AVX512BF16(3) ROWS_AVX512BF16(4)
ROWS_AVX512BF16(5) ROWS_AVX512BF16(6) ROWS_AVX512BF16(7) ROWS_AVX512BF16(8)
typedef void (*rows_bf16_fn)(const llmprune_weight *, int64_t, int64_t, const uint16_t *, const out_t *);
static const rows_bf16_fn AVX512BF16_ROWS[MAXB] = {
    rows_avx512bf16_1, rows_avx512bf16_2, rows_avx512bf16_3, rows_avx512bf16_4,
    rows_avx512bf16_5, rows_avx512bf16_6, rows_avx512bf16_7, rows_avx512bf16_8};

int llmprune_cpu_has_avx512bf16(void) {
    __builtin_cpu_init();
    return llmprune_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}

/* ---------------------------------------------------------------- AVX2 */

/* Mask byte m -> vpshufb control that places the kept values of 8 columns in their lanes, zeros elsewhere:
 * SHUF_BF16[m] builds 8 fp32 lanes straight from bf16 (value bytes into the high half of each lane), from
 * the 16 source bytes broadcast to both 128-bit halves; SHUF_F16[m] builds 8 fp16 lanes for vcvtph2ps. */
static int8_t SHUF_BF16[256][32] __attribute__((aligned(32)));
static int8_t SHUF_F16[256][16] __attribute__((aligned(16)));
__attribute__((constructor)) static void init_shuffles(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int j = 0; j < 8; j++) {
            int8_t *lane = SHUF_BF16[m] + 4 * j, *half = SHUF_F16[m] + 2 * j;
            lane[0] = lane[1] = (int8_t)0x80;
            if (m >> j & 1) { lane[2] = half[0] = (int8_t)(2 * k); lane[3] = half[1] = (int8_t)(2 * k + 1); k++; }
            else { lane[2] = lane[3] = half[0] = half[1] = (int8_t)0x80; }
        }
    }
}

#define AVX2_TARGET "avx2,fma,f16c,popcnt"

/* 8 columns of weights as fp32 from the kept values at v and mask byte mb. Reads 16 bytes at v (up to 8
 * past the kept ones): `tail` rows, whose reads could pass the end of the values, copy them first. */
__attribute__((target(AVX2_TARGET), always_inline))
static inline __m256 expand8_avx2(const uint16_t *v, uint32_t mb, const int is_fp16, const int tail) {
    __m128i raw;
    if (tail) {
        uint16_t tmp[8] = {0};
        memcpy(tmp, v, (size_t)__builtin_popcount(mb) * 2);
        raw = _mm_loadu_si128((const __m128i *)tmp);
    } else {
        raw = _mm_loadu_si128((const __m128i *)v);
    }
    if (is_fp16) return _mm256_cvtph_ps(_mm_shuffle_epi8(raw, _mm_load_si128((const __m128i *)SHUF_F16[mb])));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw),
                                                   _mm256_load_si256((const __m256i *)SHUF_BF16[mb])));
}

__attribute__((target(AVX2_TARGET), always_inline))
static inline float hsum256(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* NA independent accumulators per batch row (4 at b = 1, 2 up to b = 4, then 1: 16 ymm registers) so that
 * the FMA latency is hidden behind the four byte groups of a word. */
__attribute__((target(AVX2_TARGET), always_inline))
static inline void row_avx2(const uint16_t *v, const int32_t *mrow, int64_t words, const float *x, int64_t ld,
                            const int B, float *acc_out, const int is_fp16, const int tail, const int nm24) {
    enum { NA_MAX = 4 };
    const int NA = B == 1 ? 4 : (B <= 4 ? 2 : 1);
    __m256 acc[MAXB][NA_MAX];
    for (int k = 0; k < B; k++)
        for (int a = 0; a < NA; a++) acc[k][a] = _mm256_setzero_ps();
    for (int64_t c = 0; c < words; c++) {
        uint32_t m = (uint32_t)mrow[c];
        if (!nm24 && !m) continue;
        __builtin_prefetch(v + PREFETCH_AHEAD);
        const uint16_t *vq[4];
        if (nm24) {  /* 4 values per byte: fixed offsets, no popcounts */
            vq[0] = v; vq[1] = v + 4; vq[2] = v + 8; vq[3] = v + 12;
            v += 16;
        } else {
            vq[0] = v; vq[1] = v + __builtin_popcount(m & 0xFFu); vq[2] = v + __builtin_popcount(m & 0xFFFFu);
            vq[3] = v + __builtin_popcount(m & 0xFFFFFFu);
            v += __builtin_popcount(m);
        }
        const float *xc = x + c * 32;
        for (int q = 0; q < 4; q++) {
            __m256 wq = expand8_avx2(vq[q], (m >> (8 * q)) & 0xFFu, is_fp16, tail);
            for (int k = 0; k < B; k++)
                acc[k][q % NA] = _mm256_fmadd_ps(wq, _mm256_loadu_ps(xc + k * ld + 8 * q), acc[k][q % NA]);
        }
    }
    for (int k = 0; k < B; k++) {
        __m256 s = acc[k][0];
        for (int a = 1; a < NA; a++) s = _mm256_add_ps(s, acc[k][a]);
        acc_out[k] = hsum256(s);
    }
}

#define ROW_AVX2_ANY(B, fp16)                                                                       \
    do {                                                                                            \
        int64_t start = w->dense ? r * w->in : w->row_offsets[r];                                   \
        int64_t end = w->dense ? start + w->in : w->row_offsets[r + 1];                             \
        if (end + 8 > w->nnz) row_avx2(w->values + start, row_mask(w, r), w->words, x, ld, B, acc, fp16, 1, 0); \
        else if (w->nm24) row_avx2(w->values + start, row_mask(w, r), w->words, x, ld, B, acc, fp16, 0, 1); \
        else row_avx2(w->values + start, row_mask(w, r), w->words, x, ld, B, acc, fp16, 0, 0);      \
    } while (0)

#define ROWS_AVX2(B)                                                                                \
    __attribute__((target(AVX2_TARGET)))                                                            \
    static void rows_avx2_##B(const llmprune_weight *w, int64_t r0, int64_t r1, const float *x,     \
                              const out_t *o) {                                                     \
        const int64_t ld = w->words * 32;                                                           \
        float acc[MAXB];                                                                            \
        for (int64_t r = r0; r < r1; r++) {                                                         \
            if (w->is_fp16) ROW_AVX2_ANY(B, 1);                                                     \
            else ROW_AVX2_ANY(B, 0);                                                                \
            store_row(o, r, acc, B);                                                                \
        }                                                                                           \
    }
ROWS_AVX2(1) ROWS_AVX2(2) ROWS_AVX2(3) ROWS_AVX2(4)
ROWS_AVX2(5) ROWS_AVX2(6) ROWS_AVX2(7) ROWS_AVX2(8)
static const rows_fn AVX2_ROWS[MAXB] = {rows_avx2_1, rows_avx2_2, rows_avx2_3, rows_avx2_4,
                                        rows_avx2_5, rows_avx2_6, rows_avx2_7, rows_avx2_8};

#else  /* not x86: only the portable path */

int llmprune_cpu_has_avx512(void) { return 0; }
int llmprune_cpu_has_avx2(void) { return 0; }
int llmprune_cpu_has_avx512bf16(void) { return 0; }

#endif

/* ---------------------------------------------------------------- entry point */

/* The calling thread's x buffer, grown when a call needs more and kept: no allocation per call. */
static __thread void *tls_x = NULL;
static __thread size_t tls_x_bytes = 0;

static void *x_buffer(size_t nbytes) {
    if (nbytes > tls_x_bytes) {
        void *p = NULL;
        size_t cap = (nbytes + 4095) & ~(size_t)4095;
        if (posix_memalign(&p, 64, cap) != 0) return NULL;
        free(tls_x);
        tls_x = p;
        tls_x_bytes = cap;
    }
    return tls_x;
}

/* x (b, in) of dtype xdt as the kernel reads it: fp32 (or bf16 when want_bf16), rows of words * 32
 * columns, zero-padded. Returns x itself when it already is that, NULL when out of memory. */
static const void *prepare_x(const void *x, int xdt, int64_t b, int64_t in, int64_t words, int want_bf16) {
    int64_t ld = words * 32;
    if (ld == in && xdt == (want_bf16 ? DT_BF16 : DT_F32)) return x;
    if (want_bf16) {  /* only reached for bf16 x with in not a multiple of 32 */
        uint16_t *buf = (uint16_t *)x_buffer((size_t)(b * ld) * 2);
        if (!buf) return NULL;
        for (int64_t k = 0; k < b; k++) {
            memcpy(buf + k * ld, (const uint16_t *)x + k * in, (size_t)in * 2);
            memset(buf + k * ld + in, 0, (size_t)(ld - in) * 2);
        }
        return buf;
    }
    float *buf = (float *)x_buffer((size_t)(b * ld) * 4);
    if (!buf) return NULL;
    for (int64_t k = 0; k < b; k++) {
        float *dst = buf + k * ld;
        if (xdt == DT_F32) memcpy(dst, (const float *)x + k * in, (size_t)in * 4);
        else if (xdt == DT_BF16) { const uint16_t *s = (const uint16_t *)x + k * in; for (int64_t j = 0; j < in; j++) dst[j] = bf16_to_float(s[j]); }
        else { const uint16_t *s = (const uint16_t *)x + k * in; for (int64_t j = 0; j < in; j++) dst[j] = half_to_float(s[j]); }
        for (int64_t j = in; j < ld; j++) dst[j] = 0.0f;
    }
    return buf;
}

/* Bytes of weight read before row r (values and mask, plus a per-row constant for the reduction):
 * monotone in r, so that threads can split the rows into equal shares by binary search. */
static inline int64_t cost_before(const llmprune_weight *w, int64_t r) {
    int64_t vals = w->dense ? r * w->in : w->row_offsets[r];
    return 2 * vals + r * (w->dense ? 64 : 4 * w->words + 64);
}

/* The smallest row r with cost_before(r) >= target (0 < target < the weight's total cost). */
static int64_t split_at(const llmprune_weight *w, int64_t target) {
    int64_t lo = 0, hi = w->out;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (cost_before(w, mid) < target) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The rows of one thread's share of a group: weights 0..n-1 stacked, rows split by equal cost (bytes). */
static void run_share(int path, const llmprune_weight *const *ws, const out_t *os, int n, const int64_t *start,
                      int64_t lo, int64_t hi, const void *xp, int64_t b) {
    for (int i = 0; i < n; i++) {  /* start[i]: cost before weight i; each weight's rows by binary search */
        const llmprune_weight *w = ws[i];
        int64_t total = cost_before(w, w->out), a = lo - start[i], z = hi - start[i];
        if (z <= 0 || a >= total) continue;
        int64_t r0 = a <= 0 ? 0 : split_at(w, a), r1 = z >= total ? w->out : split_at(w, z);
        if (r0 >= r1) continue;
#ifdef LLMPRUNE_X86
        if (path == PATH_AVX512BF16) AVX512BF16_ROWS[b - 1](w, r0, r1, (const uint16_t *)xp, &os[i]);
        else if (path == PATH_AVX512) AVX512_ROWS[b - 1](w, r0, r1, (const float *)xp, &os[i]);
        else if (path == PATH_AVX2) AVX2_ROWS[b - 1](w, r0, r1, (const float *)xp, &os[i]);
        else
#endif
        rows_generic(w, r0, r1, (const float *)xp, (int)b, &os[i]);
    }
}

#define MAX_GROUP 8

/* y_i = x @ W_i^T (+ bias_i) for n <= MAX_GROUP weights reading the same x (q/k/v, gate/up): x is prepared
 * once and the threads split the stacked rows of all of them, one parallel region for the group.
 * path: 0 generic, 1 AVX2, 2 AVX-512, 3 AVX-512 BF16 (bf16 x and bf16 W only; other x or W run as path 2).
 * xdt/ydt: 0 fp32, 1 bf16, 2 fp16; x (b, in) and each y_i (b, out_i) contiguous.
 * Returns 0, -1 on bad arguments, -2 when the x buffer could not be allocated. */
int llmprune_linear_group(int path, const llmprune_weight *const *ws, int n, const void *x, int xdt, int64_t b,
                          void *const *ys, int ydt, int nthreads) {
    if (n < 1 || n > MAX_GROUP || b < 1 || b > MAXB || path < 0 || path > 3 || xdt < 0 || xdt > 2 || ydt < 0 || ydt > 2)
        return -1;
#ifndef LLMPRUNE_X86
    if (path != 0) return -1;
#endif
    int64_t start[MAX_GROUP + 1], weights = 0;
    int fp16 = 0;
    start[0] = 0;
    out_t os[MAX_GROUP];
    for (int i = 0; i < n; i++) {
        const llmprune_weight *w = ws[i];
        if (w->words != (w->in + 31) / 32 || w->out < 0 || w->in != ws[0]->in) return -1;
        fp16 |= w->is_fp16;
        start[i + 1] = start[i] + cost_before(w, w->out);
        weights += w->out * w->in;
        os[i] = (out_t){ys[i], w->bias, w->out, ydt};
    }
    if (path == PATH_AVX512BF16 && (xdt != DT_BF16 || fp16)) path = PATH_AVX512;
    const void *xp = prepare_x(x, xdt, b, ws[0]->in, ws[0]->words, path == PATH_AVX512BF16);
    if (!xp) return -2;
    if (nthreads < 1) nthreads = 1;
    int64_t max_threads = weights / MIN_WEIGHTS_PER_THREAD;
    if (nthreads > max_threads) nthreads = max_threads < 1 ? 1 : (int)max_threads;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(); t = omp_get_thread_num();
#endif
        int64_t lo = (int64_t)((double)start[n] * t / nt), hi = t + 1 == nt ? start[n] : (int64_t)((double)start[n] * (t + 1) / nt);
        run_share(path, ws, os, n, start, lo, hi, xp, b);
    }
    return 0;
}

/* y = x @ W^T (+ bias): the group of one. */
int llmprune_linear(int path, const llmprune_weight *w, const void *x, int xdt, int64_t b, void *y, int ydt,
                    int nthreads) {
    return llmprune_linear_group(path, &w, 1, x, xdt, b, &y, ydt, nthreads);
}

/* Decode the packed weight into a dense row-major (out, in) buffer of elemsize
 * 2 or 4 bytes; dst must be zero-filled by the caller. Memory-bound; rows split across threads. */
int llmprune_unpack(const void *values, const int32_t *bitmask, const int64_t *row_offsets, int64_t out,
                    int64_t words, int64_t in, void *dst, int elemsize, int nthreads) {
    if (elemsize != 2 && elemsize != 4) return -1;
    if (nthreads < 1) nthreads = 1;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && out * in > 65536)
    for (int64_t r = 0; r < out; r++) {
        int64_t k = row_offsets[r];
        const int32_t *mrow = bitmask + r * words;
        for (int64_t c = 0; c < words; c++) {
            uint32_t m = (uint32_t)mrow[c];
            while (m) {
                int64_t j = c * 32 + __builtin_ctz(m);
                m &= m - 1;
                if (j >= in) break;  /* pad bits are 0 in valid data; never write past the row */
                if (elemsize == 2) ((uint16_t *)dst)[r * in + j] = ((const uint16_t *)values)[k++];
                else ((uint32_t *)dst)[r * in + j] = ((const uint32_t *)values)[k++];
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- bandwidth probe */

/* STREAM-like probes on the same OpenMP threads as the kernels, for "how close to the memory limit":
 * read sums nbytes of src (what a matrix-vector product does), copy writes src to dst. Each thread takes
 * one contiguous share. Returns a checksum (so the reads are not optimised away). */
uint64_t llmprune_stream_read(const void *src, int64_t nbytes, int nthreads) {
    const uint64_t *p = (const uint64_t *)src;
    int64_t n = nbytes / 8;
    uint64_t total = 0;
    if (nthreads < 1) nthreads = 1;
    #pragma omp parallel num_threads(nthreads) reduction(+ : total) if (nthreads > 1)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(); t = omp_get_thread_num();
#endif
        int64_t i0 = n * t / nt, i1 = n * (t + 1) / nt;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = i0;
        for (; i + 4 <= i1; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
        for (; i < i1; i++) s0 += p[i];
        total += s0 + s1 + s2 + s3;
    }
    return total;
}

void llmprune_stream_copy(void *dst, const void *src, int64_t nbytes, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(); t = omp_get_thread_num();
#endif
        int64_t i0 = nbytes * t / nt, i1 = nbytes * (t + 1) / nt;
        memcpy((char *)dst + i0, (const char *)src + i0, (size_t)(i1 - i0));
    }
}
