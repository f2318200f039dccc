/* The packed training walk's attention, forward and backward: see packed_attention.py. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

typedef float v16 __attribute__((vector_size(64)));                 /* 16 floats: one AVX-512 register */
typedef float v16u __attribute__((vector_size(64), aligned(4)));     /* the same, at any float's address */

static inline v16 load16(const float *p) { return *(const v16u *)p; }
static inline void add16(float *p, v16 x) { *(v16u *)p = load16(p) + x; }
/* Keep a loaded vector in its register: GCC would otherwise fold the load into each FMA that
   reads it, one load per use, and the loops run at the loads' pace, not the FMAs'. */
#if defined(__AVX512F__)
#define IN_REGISTER(x) __asm__("" : "+v"(x))
#else                                    /* a 64-byte vector is no one register here ("v" cannot hold it) */
#define IN_REGISTER(x) ((void)0)
#endif

enum {
    RB = 8,                              /* rows of a block's queries held in registers at a time */
    KB = 32,                             /* columns (keys) scored at a time: two vectors */
    PAD = KB                             /* floats past the last token in a transposed matrix */
};

/* s[r, c] = x[r] . y[c] for rows r < M (a multiple of RB) of x [M, D] and n columns of yt,
   the transposed matrix ([D, ld] floats: column c's element d at yt[d * ld + c], readable up
   to KB columns past n), into s (a row every lds floats). RB rows by KB columns at a time in
   registers: each score built in a vector lane, no sum across a vector. */
static inline __attribute__((always_inline)) void scores(
        const float *x, int M, const float *yt, size_t ld, int n, float *s, int lds, int D) {
    for (int c0 = 0; c0 < n; c0 += KB) {
        const int nb = n - c0 < KB ? n - c0 : KB;
        const float *y = yt + c0;
        for (int r = 0; r < M; r += RB) {
            v16 acc[RB][2] = {{0}};
            for (int d = 0; d < D; d++) {
                v16 y0 = load16(y + d * ld), y1 = load16(y + d * ld + 16);
                IN_REGISTER(y0);
                IN_REGISTER(y1);
#pragma GCC unroll 8
                for (int a = 0; a < RB; a++) {
                    const float xa = x[(r + a) * D + d];
                    acc[a][0] += xa * y0;
                    acc[a][1] += xa * y1;
                }
            }
            for (int a = 0; a < RB; a++) {
                float z[KB];
                memcpy(z, acc[a], sizeof z);
                memcpy(s + (size_t)(r + a) * lds + c0, z, sizeof(float) * nb);
            }
        }
    }
}

/* o[r] += sum_c w[r, c] y[c] for rows r < M (a multiple of 4) and n rows y[c] (every stride
   floats), D a multiple of 16 up to 128: 4 rows of o (2 where D > 64) in registers. */
static inline __attribute__((always_inline)) void weigh(
        const float *w, int M, int lds, const float *y, size_t stride, int n, float *o, int D) {
    const int RV = D <= 64 ? 4 : 2;
    for (int r = 0; r < M; r += RV) {
        v16 acc[4][8] = {{0}};
        for (int c = 0; c < n; c++) {
            const float *yc = y + c * stride;
            v16 yv[8];
#pragma GCC unroll 8
            for (int e = 0; e < D / 16; e++) {
                yv[e] = load16(yc + 16 * e);
                IN_REGISTER(yv[e]);
            }
#pragma GCC unroll 4
            for (int a = 0; a < RV; a++) {
                const float wa = w[(size_t)(r + a) * lds + c];
#pragma GCC unroll 8
                for (int e = 0; e < D / 16; e++) acc[a][e] += wa * yv[e];
            }
        }
        for (int a = 0; a < RV; a++)
            for (int e = 0; e < D / 16; e++) add16(o + (size_t)(r + a) * D + 16 * e, acc[a][e]);
    }
}

/* out[c] += sum_r w[r, c] x[r] for n columns c (out's rows every stride floats) and rows r < M
   of x [M, D]: 4 columns (2 where D > 64) in registers, each x row read once per pass. */
static inline __attribute__((always_inline)) void weigh_t(
        const float *w, int M, int lds, const float *x, int n, float *out, size_t stride, int D) {
    const int CV = D <= 64 ? 4 : 2;
    for (int c0 = 0; c0 < n; c0 += CV) {
        const int nc = n - c0 < CV ? n - c0 : CV;
        v16 acc[4][8] = {{0}};
        for (int r = 0; r < M; r++) {
            v16 xr[8];
#pragma GCC unroll 8
            for (int e = 0; e < D / 16; e++) {
                xr[e] = load16(x + (size_t)r * D + 16 * e);
                IN_REGISTER(xr[e]);
            }
#pragma GCC unroll 4
            for (int b = 0; b < CV; b++) {
                const float wb = b < nc ? w[(size_t)r * lds + c0 + b] : 0.f;
#pragma GCC unroll 8
                for (int e = 0; e < D / 16; e++) acc[b][e] += wb * xr[e];
            }
        }
        for (int b = 0; b < nc; b++)
            for (int e = 0; e < D / 16; e++) add16(out + (c0 + b) * stride + 16 * e, acc[b][e]);
    }
}

/* One block's queries: tokens [i0, i1), each attending to the whole span [a0, a1) and to its
   own span [b0, i] (i itself included). */
typedef struct { int64_t i0, i1, a0, a1, b0; } Block;

typedef struct {                         /* a thread's working memory */
    float *qs, *dos, *o, *s, *p;
} Scratch;

/* Scaled queries of the block's tokens for KV head g: row r = t * G + h is token i0 + t's
   query head g * G + h, rows past the block's zero. */
static void gather(float *dst, const float *src, const Block *b, int M, int H, int g, int G, int D, float scale) {
    const int rows = (int)(b->i1 - b->i0) * G;
    for (int r = 0; r < rows; r++) {
        const float *x = src + ((size_t)(b->i0 + r / G) * H + g * G + r % G) * D;
        for (int d = 0; d < D; d++) dst[(size_t)r * D + d] = x[d] * scale;
    }
    memset(dst + (size_t)rows * D, 0, sizeof(float) * (size_t)(M - rows) * D);
}

/* Scores of the block's M query rows against both spans' keys of KV head g (kt [K, D, ld]),
   columns [0, na) the whole span, [na, na + nb) the own one; a key after its query -inf. */
static inline __attribute__((always_inline)) void block_scores(
        const float *x, const float *kt, const Block *b, int M, int G, int g, int D, size_t ld,
        int na, int nb, float *s, int lds) {
    const float *t = kt + (size_t)g * D * ld;
    if (na) scores(x, M, t + b->a0, ld, na, s, lds, D);
    scores(x, M, t + b->b0, ld, nb, s + na, lds, D);
    const int rows = (int)(b->i1 - b->i0) * G;
    for (int r = 0; r < rows; r++) {
        const int first = na + (int)(b->i0 + r / G - b->b0) + 1;        /* the first masked column */
        for (int c = first; c < na + nb; c++) s[(size_t)r * lds + c] = -INFINITY;
    }
}

static inline __attribute__((always_inline)) void block_forward(const float *q, const float *kt, const float *v, const Block *b, float *out,
                          float *lse, Scratch *w, int H, int K, int G, int g, int D, size_t ld, float scale) {
    const int rows = (int)(b->i1 - b->i0) * G, M = (rows + RB - 1) / RB * RB;
    const int na = (int)(b->a1 - b->a0), nb = (int)(b->i1 - b->b0), n = na + nb, lds = n;
    gather(w->qs, q, b, M, H, g, G, D, scale);
    block_scores(w->qs, kt, b, M, G, g, D, ld, na, nb, w->s, lds);
    for (int r = 0; r < M; r++) {                                   /* softmax; padding rows weigh nothing */
        float *sr = w->s + (size_t)r * lds, m = -INFINITY, z = 0.f;
        if (r >= rows) { memset(sr, 0, sizeof(float) * n); continue; }
#pragma omp simd reduction(max:m)
        for (int c = 0; c < n; c++) m = sr[c] > m ? sr[c] : m;
#pragma omp simd reduction(+:z)
        for (int c = 0; c < n; c++) { sr[c] = expf(sr[c] - m); z += sr[c]; }
        const float inv = 1.f / z;
#pragma omp simd
        for (int c = 0; c < n; c++) sr[c] *= inv;
        lse[(size_t)(b->i0 + r / G) * H + g * G + r % G] = m + logf(z);
    }
    memset(w->o, 0, sizeof(float) * (size_t)M * D);
    const size_t stride = (size_t)K * D;
    if (na) weigh(w->s, M, lds, v + ((size_t)b->a0 * K + g) * D, stride, na, w->o, D);
    weigh(w->s + na, M, lds, v + ((size_t)b->b0 * K + g) * D, stride, nb, w->o, D);
    for (int r = 0; r < rows; r++)
        memcpy(out + ((size_t)(b->i0 + r / G) * H + g * G + r % G) * D, w->o + (size_t)r * D, sizeof(float) * D);
}

/* dk, dv: this thread's own [T, K, D] sums. */
static inline __attribute__((always_inline)) void block_backward(const float *q, const float *k, const float *kt, const float *vt, const float *dout,
                           const float *lse, const float *delta, const Block *b, float *dq, float *dk, float *dv,
                           Scratch *w, int H, int K, int G, int g, int D, size_t ld, float scale) {
    const int rows = (int)(b->i1 - b->i0) * G, M = (rows + RB - 1) / RB * RB;
    const int na = (int)(b->a1 - b->a0), nb = (int)(b->i1 - b->b0), n = na + nb, lds = n;
    const size_t stride = (size_t)K * D;
    gather(w->qs, q, b, M, H, g, G, D, scale);
    gather(w->dos, dout, b, M, H, g, G, D, 1.f);
    block_scores(w->qs, kt, b, M, G, g, D, ld, na, nb, w->s, lds);          /* s: the weights p */
    const float *vg = vt + (size_t)g * D * ld;
    if (na) scores(w->dos, M, vg + b->a0, ld, na, w->p, lds, D);            /* p: dL/dp = dout . v */
    scores(w->dos, M, vg + b->b0, ld, nb, w->p + na, lds, D);
    for (int r = 0; r < M; r++) {
        float *sr = w->s + (size_t)r * lds, *pr = w->p + (size_t)r * lds;
        if (r >= rows) { memset(sr, 0, sizeof(float) * n); memset(pr, 0, sizeof(float) * n); continue; }
        const size_t at = (size_t)(b->i0 + r / G) * H + g * G + r % G;
        const float l = lse[at], dl = delta[at];
#pragma omp simd
        for (int c = 0; c < n; c++) {
            const float p = expf(sr[c] - l);                         /* -inf -> 0 */
            sr[c] = p;
            pr[c] = p * (pr[c] - dl);                                /* dL/dscore */
        }
    }
    if (na) weigh_t(w->s, M, lds, w->dos, na, dv + ((size_t)b->a0 * K + g) * D, stride, D);
    weigh_t(w->s + na, M, lds, w->dos, nb, dv + ((size_t)b->b0 * K + g) * D, stride, D);
    if (na) weigh_t(w->p, M, lds, w->qs, na, dk + ((size_t)b->a0 * K + g) * D, stride, D);
    weigh_t(w->p + na, M, lds, w->qs, nb, dk + ((size_t)b->b0 * K + g) * D, stride, D);
    memset(w->o, 0, sizeof(float) * (size_t)M * D);
    if (na) weigh(w->p, M, lds, k + ((size_t)b->a0 * K + g) * D, stride, na, w->o, D);
    weigh(w->p + na, M, lds, k + ((size_t)b->b0 * K + g) * D, stride, nb, w->o, D);
    for (int r = 0; r < rows; r++) {
        float *x = dq + ((size_t)(b->i0 + r / G) * H + g * G + r % G) * D;
        for (int d = 0; d < D; d++) x[d] = w->o[(size_t)r * D + d] * scale;
    }
}

static int largest(const Block *blocks, int nblocks, int G, int *M, int *n) {
    *M = 0;
    *n = 0;
    for (int i = 0; i < nblocks; i++) {
        const Block *b = blocks + i;
        if (b->i0 >= b->i1 || b->b0 > b->i0 || b->a0 > b->a1) return 1;
        const int m = (int)(b->i1 - b->i0) * G, c = (int)(b->a1 - b->a0 + b->i1 - b->b0);
        if (m > *M) *M = m;
        if (c > *n) *n = c;
    }
    *M = (*M + RB - 1) / RB * RB;
    return 0;
}

/* backward: also the output gradients' rows and a second [M, n] matrix. */
static int scratch(Scratch *w, int M, int n, int D, int backward) {
    w->qs = malloc(sizeof(float) * (size_t)M * D * (backward ? 3 : 2));
    w->o = w->qs + (size_t)M * D;
    w->dos = backward ? w->o + (size_t)M * D : NULL;
    w->s = malloc(sizeof(float) * (size_t)M * n);
    w->p = backward ? malloc(sizeof(float) * (size_t)M * n) : NULL;
    return w->qs == NULL || w->s == NULL || (backward && w->p == NULL);
}

static void unscratch(Scratch *w) {
    free(w->qs);
    free(w->s);
    free(w->p);
}

/* q [T, H, D], v [T, K, D]; kt [K, D, ld] the keys transposed (ld >= T + PAD); blocks [nblocks]
   cover every token once. -> out [T, H, D], lse [T, H] (each query's log-sum-exp of its scaled
   scores). Returns 0, or 1 where memory could not be allocated or a block is malformed. */
int attention_forward_f32(const float *q, const float *kt, const float *v, const int64_t *blocks, float *out,
                          float *lse, int nblocks, int T, int H, int K, int D, int64_t ld, float scale, int threads) {
    (void)T;
    const Block *bs = (const Block *)blocks;
    const int G = H / K;
    int M, n, failed = largest(bs, nblocks, G, &M, &n);
    if (failed) return 1;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        Scratch w;
        failed = scratch(&w, M, n, D, 0);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < nblocks * K; t++) {
            if (failed) continue;
            if (D == 64)
                block_forward(q, kt, v, bs + t / K, out, lse, &w, H, K, G, t % K, 64, ld, scale);
            else
                block_forward(q, kt, v, bs + t / K, out, lse, &w, H, K, G, t % K, D, ld, scale);
        }
        unscratch(&w);
    }
    return failed;
}

/* The gradients of attention_forward_f32's out given dout [T, H, D]: q, k [T, K, D], kt and vt
   [K, D, ld] (keys and values transposed), lse [T, H] the forward's, delta [T, H] = sum_d dout * out.
   -> dq [T, H, D] (every entry written), dk, dv [T, K, D] (every entry written). */
int attention_backward_f32(const float *q, const float *k, const float *kt, const float *vt, const float *dout,
                           const float *lse, const float *delta, const int64_t *blocks, float *dq, float *dk,
                           float *dv, int nblocks, int T, int H, int K, int D, int64_t ld, float scale, int threads) {
    const Block *bs = (const Block *)blocks;
    const int G = H / K;
    const size_t size = (size_t)T * K * D;
    int M, n, failed = largest(bs, nblocks, G, &M, &n);
    if (failed) return 1;
    float **sums = calloc((size_t)threads, sizeof *sums);           /* each thread's dk and dv, 2 * size */
    if (sums == NULL) return 1;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int me = omp_get_thread_num();
        Scratch w;
        float *mine = sums[me] = calloc(2 * size, sizeof(float));
        failed = scratch(&w, M, n, D, 1) || mine == NULL;
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < nblocks * K; t++) {
            if (failed) continue;
            if (D == 64)
                block_backward(q, k, kt, vt, dout, lse, delta, bs + t / K, dq, mine, mine + size, &w, H, K, G,
                               t % K, 64, ld, scale);
            else
                block_backward(q, k, kt, vt, dout, lse, delta, bs + t / K, dq, mine, mine + size, &w, H, K, G,
                               t % K, D, ld, scale);
        }
        unscratch(&w);
    }
    if (!failed) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t i = 0; i < size; i++) {
            float a = 0.f, c = 0.f;
            for (int j = 0; j < threads; j++)
                if (sums[j] != NULL) {                              /* NULL: a thread the team did not start */
                    a += sums[j][i];
                    c += sums[j][size + i];
                }
            dk[i] = a;
            dv[i] = c;
        }
    }
    for (int j = 0; j < threads; j++) free(sums[j]);
    free(sums);
    return failed;
}
