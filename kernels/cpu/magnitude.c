/* Fused single-pass magnitude-pruning passes on CPU (llmprune/methods/fast.py; maths in methods/masks.py).
 *
 * The key of |x| is the integer of its bits with the sign cleared: 15 bits for fp16/bf16 (raw & 0x7FFF),
 * 31 for fp32 (raw & 0x7FFFFFFF); integer order equals the order of |x|, NaN sorting above inf.
 *
 *   llmprune_hist_high15   hist[top 15 key bits] += 1 over x                        (level-1 histogram)
 *   llmprune_hist_low16    fp32 only: low 16 bits of the values whose top 15 bits hold a threshold bin
 *                          (level 2); also writes each such value's code (slot << 16 | low) for tie counts
 *   llmprune_apply         in place: zero keys < key and the first `ties` (row-major) keys == key,
 *                          counting zeros (key 0) before and after
 *   llmprune_keep_mask     the keep-mask of the same rule, x untouched
 *
 * Every loop is one memory pass. Elementwise loops run in blocks of BLOCK elements with narrow counters
 * so that gcc vectorises them; ties are settled per block (a block whose tied elements all fit in the
 * ties left is pruned with `<= key`, the block where they run out element by element). One file,
 * compiled without -march: the exported functions are target_clones (AVX-512BW, AVX2, baseline), picked
 * by the loader at run time. OpenMP splits histograms and tie-free passes across `threads`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NBINS 32768
#define BLOCK 4096           /* elements per block: counters fit in uint16, blocks stay in L1 */
#define PAR_MIN (1 << 20)    /* fewer elements than this: one thread (a team costs more than it saves) */

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__) && !defined(LLMPRUNE_PORTABLE_ONLY)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

static int team(int64_t n, int threads) { return (threads > 1 && n >= PAR_MIN) ? threads : 1; }

/* ---------------------------------------------------------------- level-1 histogram */

INLINE void hist16(const uint16_t *x, int64_t n, int64_t *hist) {
    for (int64_t i = 0; i < n; i++) hist[x[i] & 0x7FFF]++;
}

INLINE void hist32(const uint32_t *x, int64_t n, int64_t *hist) {
    for (int64_t i = 0; i < n; i++) hist[(x[i] >> 16) & 0x7FFF]++;
}

/* hist (int64[32768]) += counts of the top 15 key bits of x; elsize 2 (fp16/bf16) or 4 (fp32). */
CLONES int llmprune_hist_high15(const void *x, int64_t n, int elsize, int64_t *hist, int threads) {
    if (elsize != 2 && elsize != 4) return 1;
    int nt = team(n, threads);
    if (nt == 1) {
        if (elsize == 2) hist16((const uint16_t *)x, n, hist); else hist32((const uint32_t *)x, n, hist);
        return 0;
    }
    int64_t *local = calloc((size_t)nt * NBINS, sizeof(int64_t));
    if (!local) return 2;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        int t = 0, T = 1;
#endif
        int64_t lo = n * t / T, hi = n * (t + 1) / T;
        int64_t *h = local + (int64_t)t * NBINS;
        if (elsize == 2) hist16((const uint16_t *)x + lo, hi - lo, h); else hist32((const uint32_t *)x + lo, hi - lo, h);
    }
    for (int t = 0; t < nt; t++)
        for (int b = 0; b < NBINS; b++) hist[b] += local[(int64_t)t * NBINS + b];
    free(local);
    return 0;
}

/* ---------------------------------------------------------------- level-2 histogram (fp32) */

/* hist (int64[nslots << 16]) += counts of (slot << 16 | low 16 bits) over the fp32 values of x whose top
 * 15 key bits map to a slot >= 0; with slot_of NULL the single slot 0 is bin `bin`. The same codes go,
 * in order, to codes (room for n); returns how many. */
CLONES int64_t llmprune_hist_low16(const uint32_t *x, int64_t n, const int32_t *slot_of, int32_t bin,
                                   int64_t *hist, int32_t *codes) {
    int64_t m = 0;
    if (slot_of == NULL) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t v = x[i];
            if (((v >> 16) & 0x7FFF) == (uint32_t)bin) {
                int32_t c = (int32_t)(v & 0xFFFF);
                hist[c]++;
                codes[m++] = c;
            }
        }
        return m;
    }
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = x[i];
        int32_t s = slot_of[(v >> 16) & 0x7FFF];
        if (s >= 0) {
            int32_t c = (s << 16) | (int32_t)(v & 0xFFFF);
            hist[c]++;
            codes[m++] = c;
        }
    }
    return m;
}

/* ---------------------------------------------------------------- threshold passes */

/* One block: prune keys < lim (in place when keep is NULL, else write the keep-mask), count zeros. */
#define DEFINE_BLOCK(NAME, T, MASK)                                                                     \
    INLINE void NAME(T *x, int64_t n, T lim, uint8_t *keep, int64_t *zb, int64_t *za) {                 \
        uint16_t b = 0, a = 0;                                                                          \
        if (keep) {                                                                                     \
            for (int64_t i = 0; i < n; i++) {                                                           \
                T k = x[i] & MASK;                                                                      \
                b += k == 0;                                                                            \
                keep[i] = k >= lim;                                                                     \
            }                                                                                           \
        } else {                                                                                        \
            for (int64_t i = 0; i < n; i++) {                                                           \
                T v = x[i], k = v & MASK;                                                               \
                b += k == 0;                                                                            \
                v = k < lim ? 0 : v;                                                                    \
                x[i] = v;                                                                               \
                a += (v & MASK) == 0;                                                                   \
            }                                                                                           \
        }                                                                                               \
        *zb += b;                                                                                       \
        *za += keep ? 0 : a;                                                                            \
    }                                                                                                   \
    INLINE uint16_t NAME##_eq(const T *x, int64_t n, T key) {                                           \
        uint16_t c = 0;                                                                                 \
        for (int64_t i = 0; i < n; i++) c += (x[i] & MASK) == key;                                      \
        return c;                                                                                       \
    }

DEFINE_BLOCK(block16, uint16_t, 0x7FFF)
DEFINE_BLOCK(block32, uint32_t, 0x7FFFFFFFu)

/* The whole pass over x for one element type. `key` may be one past the largest key (prune all). */
#define DEFINE_PASS(NAME, T, BLOCKF, MASK)                                                              \
    INLINE void NAME(T *x, int64_t n, uint64_t key, int64_t ties, uint8_t *keep, int64_t *zb,           \
                     int64_t *za, int threads) {                                                        \
        int64_t i = 0;                                                                                  \
        if (key > MASK) { /* every key is below: everything goes */                                     \
            for (; i < n; i++) {                                                                        \
                *zb += (x[i] & MASK) == 0;                                                              \
                if (keep) keep[i] = 0; else x[i] = 0;                                                   \
            }                                                                                           \
            if (!keep) *za = n;                                                                         \
            return;                                                                                     \
        }                                                                                               \
        T k = (T)key;                                                                                   \
        for (; ties > 0 && i < n; i += BLOCK) { /* blocks holding the first `ties` tied elements */     \
            int64_t len = n - i < BLOCK ? n - i : BLOCK;                                                \
            int64_t eq = BLOCKF##_eq(x + i, len, k);                                                    \
            if (eq <= ties) { /* k + 1 fits T: keys are at most MASK */                              \
                BLOCKF(x + i, len, (T)(k + 1), keep ? keep + i : NULL, zb, za);                         \
                ties -= eq;                                                                             \
                continue;                                                                               \
            }                                                                                           \
            for (int64_t j = i; j < i + len; j++) { /* ties run out inside this block */                \
                T v = x[j], kj = v & MASK;                                                              \
                *zb += kj == 0;                                                                         \
                int prune = kj < k || (kj == k && ties > 0);                                            \
                ties -= kj == k && ties > 0;                                                            \
                if (keep) keep[j] = !prune;                                                             \
                else { if (prune) v = 0; x[j] = v; *za += (v & MASK) == 0; }                            \
            }                                                                                           \
        }                                                                                               \
        if (i >= n) return;                                                                             \
        int64_t rest = n - i, nb = (rest + BLOCK - 1) / BLOCK, b0 = 0, a0 = 0;                          \
        int nt = team(rest, threads);                                                                   \
        _Pragma("omp parallel for num_threads(nt) schedule(static) reduction(+:b0,a0)")                 \
        for (int64_t bi = 0; bi < nb; bi++) {                                                           \
            int64_t s = i + bi * BLOCK, len = n - s < BLOCK ? n - s : BLOCK;                            \
            BLOCKF(x + s, len, k, keep ? keep + s : NULL, &b0, &a0);                                    \
        }                                                                                               \
        *zb += b0;                                                                                      \
        *za += a0;                                                                                      \
    }

DEFINE_PASS(pass16, uint16_t, block16, 0x7FFFu)
DEFINE_PASS(pass32, uint32_t, block32, 0x7FFFFFFFu)

/* In place: zero every element of x with key < key and the first `ties` with key == key (row-major);
 * counts[0] = zeros (key 0) before, counts[1] = after. key may exceed the largest key (prune all). */
CLONES int llmprune_apply(void *x, int64_t n, int elsize, int64_t key, int64_t ties, int64_t *counts, int threads) {
    if ((elsize != 2 && elsize != 4) || key < 0) return 1;
    counts[0] = counts[1] = 0;
    if (elsize == 2) pass16((uint16_t *)x, n, (uint64_t)key, ties, NULL, counts, counts + 1, threads);
    else pass32((uint32_t *)x, n, (uint64_t)key, ties, NULL, counts, counts + 1, threads);
    return 0;
}

/* keep[i] = 0 for the elements llmprune_apply would zero, else 1; x is not changed. */
CLONES int llmprune_keep_mask(const void *x, int64_t n, int elsize, int64_t key, int64_t ties, uint8_t *keep,
                              int threads) {
    int64_t zb = 0, za = 0;
    if ((elsize != 2 && elsize != 4) || key < 0) return 1;
    if (elsize == 2) pass16((uint16_t *)x, n, (uint64_t)key, ties, keep, &zb, &za, threads);
    else pass32((uint32_t *)x, n, (uint64_t)key, ties, keep, &zb, &za, threads);
    return 0;
}
