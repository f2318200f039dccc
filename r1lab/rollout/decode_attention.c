/* A decode step's attention, one new token per row: see decode_attention.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

enum {
    AHEAD = 8,                           /* rows fetched ahead: a row's own cache is read once */
    CHUNK = 8,                           /* rows of one prompt that share a pass over its keys and values */
    TILE = 16,                           /* prompt positions a tile of keys [D, TILE]: one vector (decode_attention.py) */
    KB = 2 * TILE,                       /* prompt keys scored at a time, two vectors ... */
    QB = 4                               /* ... for each of this many queries: 8 chains of FMAs */
};

static inline float dot(const float *a, const float *b, int D) {
    float s = 0.f;
#pragma omp simd reduction(+:s)
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

static inline void add_scaled(float *o, float w, const float *x, int D) {
#pragma omp simd
    for (int d = 0; d < D; d++) o[d] += w * x[d];
}

/* Ask for row x [D] now: locality 3 into L1 (read next), 2 into L2 (read after the softmax).
   The hardware's own prefetcher stops at each 4 KB page, 16 rows of 64. */
static inline void fetch(const float *x, int D, int locality) {
    for (int c = 0; c < D; c += 16)
        if (locality == 3) __builtin_prefetch(x + c, 0, 3); else __builtin_prefetch(x + c, 0, 2);
}

typedef float v16 __attribute__((vector_size(64)));                 /* 16 floats: one AVX-512 register */
typedef float v16u __attribute__((vector_size(64), aligned(4)));     /* the same, at any float's address */

static inline v16 load16(const float *p) { return *(const v16u *)p; }
/* Keep a loaded vector in its register: GCC would otherwise fold the load into each FMA that
   reads it, one load per use, and the loops run at the loads' pace, not the FMAs'. */
#if defined(__AVX512F__)
#define IN_REGISTER(x) __asm__("" : "+v"(x))
#else                                    /* a 64-byte vector is no one register here ("v" cannot hold it) */
#define IN_REGISTER(x) ((void)0)
#endif

/* Scores of M queries qs [M, D] (M a multiple of QB) against a prompt's keys in tiles kt
   [ceil(P / TILE), D, TILE] (TILE positions a tile, each key a column; positions past P zero)
   into s [M, T], columns [0, P): KB keys by QB queries at a time in registers, each score a
   sum over d of a broadcast query element times a vector of keys, so no sum runs across a
   vector. The tiles are read in order, which the hardware prefetches. + bias: -inf where a
   column is masked, as in the reference. */
static inline __attribute__((always_inline)) void prompt_scores(
        const float *qs, int M, const float *kt, const float *bias, float *s, int T, int D, int P) {
    for (int p0 = 0; p0 < P; p0 += KB) {
        const int nb = P - p0 < KB ? P - p0 : KB;
        const float *t0 = kt + (size_t)(p0 / TILE) * D * TILE, *t1 = t0 + (size_t)D * TILE;   /* t1: if nb > TILE */
        int live = 0;
        for (int l = 0; l < nb; l++) live |= !isinf(bias[p0 + l]);
        for (int j = 0; j < M && live; j += QB) {
            v16 acc[QB][KB / 16] = {0};
            for (int d = 0; d < D; d++) {
                v16 k0 = load16(t0 + d * TILE), k1 = nb > TILE ? load16(t1 + d * TILE) : (v16){0};
                IN_REGISTER(k0);
                IN_REGISTER(k1);
#pragma GCC unroll 4
                for (int a = 0; a < QB; a++) {
                    const float x = qs[(j + a) * D + d];
                    acc[a][0] += x * k0;
                    acc[a][1] += x * k1;
                }
            }
            for (int a = 0; a < QB; a++) {
                float z[KB];
                memcpy(z, acc[a], sizeof z);
                float *sa = s + (size_t)(j + a) * T + p0;
                for (int l = 0; l < nb; l++) sa[l] = z[l] + bias[p0 + l];
            }
        }
        for (int j = 0; j < M && !live; j++)
            for (int l = 0; l < nb; l++) s[(size_t)j * T + p0 + l] = -INFINITY;
    }
}

/* o [M, D] += the weights s [M, T], columns [0, P), times the prompt's values pv [P, D], 4
   queries (2 where D > 64) at a time in registers where D is a multiple of 16 up to 128, so
   each value row is read from memory once and from the core's cache M / 4 times; masked
   columns skipped. */
static inline __attribute__((always_inline)) void prompt_values(
        const float *s, int M, const float *pv, const float *bias, float *o, int T, int D, int P) {
    if (D % 16 || D > 128) {
        for (int j = 0; j < M; j++) {
            float *oj = o + (size_t)j * D;
            for (int p = 0; p < P; p++)
                if (!isinf(bias[p])) add_scaled(oj, s[(size_t)j * T + p], pv + (size_t)p * D, D);
        }
        return;
    }
    const int QV = D <= 64 ? 4 : 2;                                     /* queries a pass: QV x D / 16 registers */
    for (int j = 0; j < M; j += QV) {
        v16 acc[4][8] = {{0}};
        for (int p = 0; p < P; p++) {
            if (isinf(bias[p])) continue;
            const float *v = pv + (size_t)p * D;
            v16 vv[8];
#pragma GCC unroll 8
            for (int c = 0; c < D / 16; c++) {
                vv[c] = load16(v + 16 * c);
                IN_REGISTER(vv[c]);
            }
#pragma GCC unroll 4
            for (int a = 0; a < QV; a++) {
                const float w = s[(size_t)(j + a) * T + p];
#pragma GCC unroll 8
                for (int c = 0; c < D / 16; c++) acc[a][c] += w * vv[c];
            }
        }
        for (int a = 0; a < QV; a++)
            for (int c = 0; c < D / 16; c++) {
                float *oc = o + (size_t)(j + a) * D + 16 * c;
                const v16 sum = load16(oc) + acc[a][c];
                memcpy(oc, &sum, 64);
            }
    }
}

/* One row's G queries qt [G, D] against its own U keys: scores into s [G, T] at columns
   [P, P + U) (a row of s every T floats), its values fetched into L2 meanwhile; then, once
   softmax has run, o [G, D] += weights x values. */
static inline __attribute__((always_inline)) void own_scores(
        const float *qt, const float *k, const float *v, float *s, int G, int D, int T, int P, int U) {
    for (int u = 0; u < AHEAD && u < U; u++) {
        fetch(k + (size_t)u * D, D, 3);
        fetch(v + (size_t)u * D, D, 2);
    }
    for (int u = 0; u < U; u++) {
        if (u + AHEAD < U) {
            fetch(k + (size_t)(u + AHEAD) * D, D, 3);
            fetch(v + (size_t)(u + AHEAD) * D, D, 2);
        }
        for (int h = 0; h < G; h++) s[(size_t)h * T + P + u] = dot(qt + h * D, k + (size_t)u * D, D);
    }
}

static inline __attribute__((always_inline)) void own_values(
        const float *s, const float *v, float *o, int G, int D, int T, int P, int U) {
    for (int u = 0; u < U; u++)
        for (int h = 0; h < G; h++) add_scaled(o + h * D, s[(size_t)h * T + P + u], v + (size_t)u * D, D);
}

static void softmax_rows(float *s, int M, int T) {
    for (int j = 0; j < M; j++) {
        float *sj = s + (size_t)j * T, m = -INFINITY, z = 0.f;
#pragma omp simd reduction(max:m)
        for (int i = 0; i < T; i++) m = sj[i] > m ? sj[i] : m;
#pragma omp simd reduction(+:z)
        for (int i = 0; i < T; i++) { sj[i] = expf(sj[i] - m); z += sj[i]; }
        const float r = 1.f / z;
#pragma omp simd
        for (int i = 0; i < T; i++) sj[i] *= r;
    }
}

/* One chunk of m rows of one prompt, one KV head: their m * G queries (padded with zeros to
   M, a multiple of QB) gathered into qs and scored against the prompt's keys together; then
   row by row its own keys, the softmax over both parts and its own values, while they are in
   cache; last the prompt's values for all queries together, into o [M, D]. */
static inline __attribute__((always_inline)) void attend_chunk(
        const float *q, const float *kt, const float *pv, const float *bias, const float *kc,
        const float *vc, const int64_t *rows, int m, float *out, float *qs, float *o, float *s,
        int K, int g, int G, int D, int P, int S, int U) {
    const int T = P + U, M = (m * G + QB - 1) / QB * QB;
    memset(qs, 0, sizeof(float) * (size_t)M * D);
    for (int i = 0; i < m; i++)
        memcpy(qs + (size_t)i * G * D, q + ((size_t)rows[i] * K + g) * G * D, sizeof(float) * G * D);
    prompt_scores(qs, M, kt, bias, s, T, D, P);
    memset(o, 0, sizeof(float) * (size_t)M * D);
    for (int i = 0; i < m; i++) {                            /* a row's own keys and values while in cache */
        const size_t c = ((size_t)rows[i] * K + g) * S * D;
        own_scores(qs + (size_t)i * G * D, kc + c, vc + c, s + (size_t)i * G * T, G, D, T, P, U);
        softmax_rows(s + (size_t)i * G * T, G, T);
        own_values(s + (size_t)i * G * T, vc + c, o + (size_t)i * G * D, G, D, T, P, U);
    }
    memset(s + (size_t)m * G * T, 0, sizeof(float) * (size_t)(M - m * G) * T);   /* padding queries weigh nothing */
    prompt_values(s, M, pv, bias, o, T, D, P);
    for (int i = 0; i < m; i++)
        memcpy(out + ((size_t)rows[i] * K + g) * G * D, o + (size_t)i * G * D, sizeof(float) * G * D);
}

/* q [R, K, G, D]: the rows' queries, already scaled; G query heads per KV head.
   pkt [B, K, ceil(P / TILE), D, TILE]: prompt b's keys in tiles; pv [B, K, P, D]: its values;
   pbias [B, P]: 0 or -inf.
   kc, vc [>=R, K, S, D]: each row's completion keys and values, slots [0, U) attended.
   sample [R]: each row's sample index (prompt = sample / n), or NULL for rows 0 .. R-1.
   out [R, K, G, D]. The rows of a prompt are taken CHUNK at a time, so each chunk reads the
   prompt's keys and values once. Returns 0, or 1 where memory could not be allocated. */
int attend_f32(const float *q, const float *pkt, const float *pv, const float *pbias,
               const float *kc, const float *vc, const int64_t *sample, float *out,
               int R, int B, int K, int G, int D, int P, int S, int U, int n, int threads) {
    int64_t *start = calloc((size_t)B + 1, sizeof *start), *next = malloc(sizeof *next * ((size_t)B + 1));
    int64_t *rows = malloc(sizeof *rows * ((size_t)R + 1)), *chunk = malloc(sizeof *chunk * ((size_t)R + 1));
    int failed = start == NULL || next == NULL || rows == NULL || chunk == NULL, chunks = 0;
    if (!failed) {                                           /* each prompt's rows, in row order */
        for (int r = 0; r < R; r++) start[(sample ? sample[r] : r) / n + 1]++;
        for (int b = 0; b < B; b++) start[b + 1] += start[b];
        memcpy(next, start, sizeof *start * B);
        for (int r = 0; r < R; r++) rows[next[(sample ? sample[r] : r) / n]++] = r;
        for (int b = 0; b < B; b++)
            for (int64_t i = start[b]; i < start[b + 1]; i += CHUNK) chunk[chunks++] = i;
    }
    const int T = P + U, M = (CHUNK * G + QB - 1) / QB * QB;
    if (!failed) {
#pragma omp parallel num_threads(threads) reduction(|:failed)
        {
            float *qs = malloc(sizeof(float) * (size_t)M * D * 2), *s = malloc(sizeof(float) * (size_t)M * T);
            failed = qs == NULL || s == NULL;
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < chunks * K; t++) {
                if (qs == NULL || s == NULL) continue;
                const int c = t / K, g = t % K;
                const int64_t first = chunk[c], b = (sample ? sample[rows[first]] : rows[first]) / n;
                const int m = (int)(first + CHUNK < start[b + 1] ? CHUNK : start[b + 1] - first);
                const size_t pt = ((size_t)b * K + g) * P * D, ptt = ((size_t)b * K + g) * ((P + TILE - 1) / TILE * TILE) * D;
                const float *bias = pbias + (size_t)b * P;
                float *o = qs + (size_t)M * D;
                if (D == 64)                                         /* the common head sizes, unrolled */
                    attend_chunk(q, pkt + ptt, pv + pt, bias, kc, vc, rows + first, m, out, qs, o, s, K, g, G, 64, P, S, U);
                else if (D == 128)
                    attend_chunk(q, pkt + ptt, pv + pt, bias, kc, vc, rows + first, m, out, qs, o, s, K, g, G, 128, P, S, U);
                else
                    attend_chunk(q, pkt + ptt, pv + pt, bias, kc, vc, rows + first, m, out, qs, o, s, K, g, G, D, P, S, U);
            }
            free(qs);
            free(s);
        }
    }
    free(start);
    free(next);
    free(rows);
    free(chunk);
    return failed;
}
