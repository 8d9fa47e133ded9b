/* y = x @ W^T for W in llmprune's bitmask format (see llmprune/sparse/format.py), on CPU.
 *
 *   values       uint16 (nnz)            kept bf16 or fp16 values, row-major
 *   bitmask      int32 (out, words)      bit j of word c of row r set <=> column 32c+j kept
 *   row_offsets  int64 (out + 1)         row r's values start at values[row_offsets[r]]
 *   x            fp32 or bf16 (b, words * 32)  activations, zero-padded to whole words, b in 1..8
 *   y            fp32 (b, out)
 *
 * Accumulation is in fp32. One file, compiled once without -march: each path carries its own
 * target attribute and Python picks one at run time (llmprune/sparse/kernel.py):
 *   avx512bf16   as avx512, then vdpbf16ps on bf16 x (AVX-512 BF16; bf16 x and bf16 W only)
 *   avx512       expands the kept values of each mask word in registers (AVX-512 expand), fp32 FMAs
 *   avx2         expands 8 values per mask byte with a permutation table (AVX2 + F16C + FMA)
 *   generic      walks the set bits of each word (portable C)
 * Output rows are split across OpenMP threads; each row's values are found through row_offsets.
 */
#include <stdint.h>
#include <string.h>
#if (defined(__x86_64__) || defined(__i386__)) && !defined(LLMPRUNE_PORTABLE_ONLY)
#define LLMPRUNE_X86 1
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAXB 8
/* Kept values are prefetched this many elements (4 KiB) ahead: the load addresses hang on popcounts of
 * the mask, which hides the stream from the hardware prefetcher; prefetching makes large layers ~3x faster. */
#define PREFETCH_AHEAD 2048

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

/* ---------------------------------------------------------------- portable C */

static void rows_generic(const uint16_t *values, const int32_t *bitmask, const int64_t *row_offsets,
                         int64_t r0, int64_t r1, int64_t out, int64_t words, const float *x, int b,
                         float *y, int is_fp16) {
    const int64_t ld = words * 32;
    for (int64_t r = r0; r < r1; r++) {
        float acc[MAXB] = {0};
        const uint16_t *v = values + row_offsets[r];
        const int32_t *mrow = bitmask + r * words;
        for (int64_t c = 0; c < words; c++) {
            uint32_t m = (uint32_t)mrow[c];
            if (m) __builtin_prefetch(v + PREFETCH_AHEAD);
            while (m) {
                int j = __builtin_ctz(m);
                m &= m - 1;
                float w = is_fp16 ? half_to_float(*v) : bf16_to_float(*v);
                v++;
                const float *xc = x + c * 32 + j;
                for (int k = 0; k < b; k++) acc[k] += w * xc[k * ld];
            }
        }
        for (int k = 0; k < b; k++) y[k * out + r] = acc[k];
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

/* ---------------------------------------------------------------- AVX-512 VBMI2 */

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
                              int64_t ld, const int B, float *yr, int64_t out, const int is_fp16) {
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
    for (int k = 0; k < B; k++) yr[k * out] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
}

#define ROWS_AVX512(B)                                                                              \
    __attribute__((target(AVX512_TARGET)))                                                          \
    static void rows_avx512_##B(const uint16_t *values, const int32_t *bitmask,                     \
                                const int64_t *row_offsets, int64_t r0, int64_t r1, int64_t out,    \
                                int64_t words, const float *x, float *y, int is_fp16) {             \
        for (int64_t r = r0; r < r1; r++) {  /* is_fp16 as a constant: one specialised loop each */ \
            if (is_fp16) row_avx512(values + row_offsets[r], bitmask + r * words, words, x,          \
                                    words * 32, B, y + r, out, 1);                                  \
            else row_avx512(values + row_offsets[r], bitmask + r * words, words, x, words * 32, B,  \
                            y + r, out, 0);                                                         \
        }                                                                                           \
    }
ROWS_AVX512(1) ROWS_AVX512(2) ROWS_AVX512(3) ROWS_AVX512(4)
ROWS_AVX512(5) ROWS_AVX512(6) ROWS_AVX512(7) ROWS_AVX512(8)

typedef void (*rows_fn)(const uint16_t *, const int32_t *, const int64_t *, int64_t, int64_t, int64_t,
                        int64_t, const float *, float *, int);
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
                                  int64_t ld, const int B, float *yr, int64_t out) {
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
    for (int k = 0; k < B; k++) yr[k * out] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
}

/* Two rows at once: each 32-column load of x feeds both rows' dot products, halving x traffic. Pays off
 * from 4 rows of x; with fewer the second value stream costs more than the x loads it saves. */
#define PAIR_MIN_B 4
__attribute__((target(AVX512BF16_TARGET), always_inline))
static inline void row2_avx512bf16(const uint16_t *v0, const uint16_t *v1, const int32_t *m0, const int32_t *m1,
                                   int64_t words, const uint16_t *x, int64_t ld, const int B, float *yr,
                                   int64_t out) {
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
        yr[k * out] = _mm512_reduce_add_ps(acc0[k]);
        yr[k * out + 1] = _mm512_reduce_add_ps(acc1[k]);
    }
}

#define ROWS_AVX512BF16(B)                                                                          \
    __attribute__((target(AVX512BF16_TARGET)))                                                      \
    static void rows_avx512bf16_##B(const uint16_t *values, const int32_t *bitmask,                 \
                                    const int64_t *row_offsets, int64_t r0, int64_t r1, int64_t out,\
                                    int64_t words, const uint16_t *x, float *y) {                   \
        int64_t r = r0;                                                                             \
        for (; B >= PAIR_MIN_B && r + 1 < r1; r += 2)                                               \
            row2_avx512bf16(values + row_offsets[r], values + row_offsets[r + 1], bitmask + r * words, \
                            bitmask + (r + 1) * words, words, x, words * 32, B, y + r, out);        \
        for (; r < r1; r++)                                                                         \
            row_avx512bf16(values + row_offsets[r], bitmask + r * words, words, x, words * 32, B,   \
                           y + r, out);                                                             \
    }
ROWS_AVX512BF16(1) ROWS_AVX512BF16(2) ROWS_AVX512BF16(3) ROWS_AVX512BF16(4)
ROWS_AVX512BF16(5) ROWS_AVX512BF16(6) ROWS_AVX512BF16(7) ROWS_AVX512BF16(8)
typedef void (*rows_bf16_fn)(const uint16_t *, const int32_t *, const int64_t *, int64_t, int64_t, int64_t,
                             int64_t, const uint16_t *, float *);
static const rows_bf16_fn AVX512BF16_ROWS[MAXB] = {
    rows_avx512bf16_1, rows_avx512bf16_2, rows_avx512bf16_3, rows_avx512bf16_4,
    rows_avx512bf16_5, rows_avx512bf16_6, rows_avx512bf16_7, rows_avx512bf16_8};

int llmprune_cpu_has_avx512bf16(void) {
    __builtin_cpu_init();
    return llmprune_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}

/* ---------------------------------------------------------------- AVX2 */

/* EXPAND8[m][j] = index among the kept values of column j of a byte mask m (or 0 where j is pruned) */
static int32_t EXPAND8[256][8];
__attribute__((constructor)) static void init_expand8(void) {
    for (int m = 0; m < 256; m++) {
        int n = 0;
        for (int j = 0; j < 8; j++) EXPAND8[m][j] = (m >> j & 1) ? n++ : 0;
    }
}

__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void row_avx2(const uint16_t *v, const uint16_t *vend, const int32_t *mrow, int64_t words,
                            const float *x, int64_t ld, const int B, float *yr, int64_t out, const int is_fp16) {
    __m256 acc[MAXB];
    for (int k = 0; k < B; k++) acc[k] = _mm256_setzero_ps();
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    uint16_t tmp[8] = {0};
    for (int64_t c = 0; c < words; c++) {
        uint32_t m32 = (uint32_t)mrow[c];
        if (!m32) continue;
        __builtin_prefetch(v + PREFETCH_AHEAD);
        for (int q = 0; q < 4; q++) {
            uint32_t m = (m32 >> (8 * q)) & 0xFF;
            if (!m) continue;
            int cnt = __builtin_popcount(m);
            __m128i raw;
            if (v + 8 <= vend) raw = _mm_loadu_si128((const __m128i *)v);  /* lanes >= cnt are unused */
            else { memcpy(tmp, v, (size_t)cnt * 2); raw = _mm_loadu_si128((const __m128i *)tmp); }
            v += cnt;
            __m256 w = is_fp16 ? _mm256_cvtph_ps(raw)
                               : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            __m256i idx = _mm256_loadu_si256((const __m256i *)EXPAND8[m]);
            __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bit), bit);
            w = _mm256_and_ps(_mm256_permutevar8x32_ps(w, idx), _mm256_castsi256_ps(keep));
            const float *xc = x + c * 32 + q * 8;
            for (int k = 0; k < B; k++) acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + k * ld), acc[k]);
        }
    }
    for (int k = 0; k < B; k++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[k]), _mm256_extractf128_ps(acc[k], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        yr[k * out] = _mm_cvtss_f32(s);
    }
}

#define ROWS_AVX2(B)                                                                                \
    __attribute__((target("avx2,fma,f16c")))                                                        \
    static void rows_avx2_##B(const uint16_t *values, const int32_t *bitmask,                       \
                              const int64_t *row_offsets, int64_t r0, int64_t r1, int64_t out,      \
                              int64_t words, const float *x, float *y, int is_fp16) {               \
        const uint16_t *vend = values + row_offsets[out];                                           \
        for (int64_t r = r0; r < r1; r++) {                                                         \
            if (is_fp16) row_avx2(values + row_offsets[r], vend, bitmask + r * words, words, x,     \
                                  words * 32, B, y + r, out, 1);                                    \
            else row_avx2(values + row_offsets[r], vend, bitmask + r * words, words, x, words * 32, \
                          B, y + r, out, 0);                                                        \
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

/* path: 0 generic, 1 AVX2, 2 AVX-512, 3 AVX-512 BF16. x is fp32 for paths 0-2 and bf16 (uint16) for
 * path 3, which also needs bf16 values. Returns 0 on success, -1 on bad arguments. */
int llmprune_spmm(int path, const uint16_t *values, const int32_t *bitmask, const int64_t *row_offsets,
                  int64_t out, int64_t words, const void *xv, int64_t b, float *y, int is_fp16,
                  int nthreads) {
    if (b < 1 || b > MAXB || path < 0 || path > 3 || (path == 3 && is_fp16)) return -1;
#ifndef LLMPRUNE_X86
    if (path != 0) return -1;
#endif
    const float *x = (const float *)xv;
    if (nthreads < 1) nthreads = 1;
    /* a thread gets at least ~64K weights of work, else fork/join costs more than it saves */
    int64_t max_threads = (out * words * 32) / 65536;
    if (nthreads > max_threads) nthreads = max_threads < 1 ? 1 : (int)max_threads;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(); t = omp_get_thread_num();
#endif
        int64_t r0 = out * t / nt, r1 = out * (t + 1) / nt;
#ifdef LLMPRUNE_X86
        if (path == 3) AVX512BF16_ROWS[b - 1](values, bitmask, row_offsets, r0, r1, out, words, (const uint16_t *)xv, y);
        else if (path == 2) AVX512_ROWS[b - 1](values, bitmask, row_offsets, r0, r1, out, words, x, y, is_fp16);
        else if (path == 1) AVX2_ROWS[b - 1](values, bitmask, row_offsets, r0, r1, out, words, x, y, is_fp16);
        else
#endif
        rows_generic(values, bitmask, row_offsets, r0, r1, out, words, x, (int)b, y, is_fp16);
    }
    return 0;
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
