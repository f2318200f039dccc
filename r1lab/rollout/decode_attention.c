/* A decode step's attention, one new token per row: see decode_attention.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

enum { AHEAD = 8 };                      /* rows fetched ahead: the cache's rows are read once each */

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

/* One (row, KV head): G queries qt [G, D] over P prompt keys (bias 0 or -inf) and U own keys,
   one softmax over both parts in s [G, P + U], then the weighted values into o [G, D]. */
static inline __attribute__((always_inline)) void attend_one(
        const float *qt, const float *pk, const float *pv, const float *bias, const float *k,
        const float *v, float *s, float *o, int G, int D, int P, int U) {
    const int T = P + U;
    for (int u = 0; u < AHEAD && u < U; u++) {          /* its own first rows, fetched while the prompt is read */
        fetch(k + (size_t)u * D, D, 3);
        fetch(v + (size_t)u * D, D, 2);
    }
    for (int p = 0; p < P; p++) {
        if (p + AHEAD < P) {
            fetch(pk + (size_t)(p + AHEAD) * D, D, 3);
            fetch(pv + (size_t)(p + AHEAD) * D, D, 2);
        }
        for (int h = 0; h < G; h++)
            s[h * T + p] = isinf(bias[p]) ? -INFINITY : dot(qt + h * D, pk + (size_t)p * D, D) + bias[p];
    }
    for (int u = 0; u < U; u++) {
        if (u + AHEAD < U) {
            fetch(k + (size_t)(u + AHEAD) * D, D, 3);
            fetch(v + (size_t)(u + AHEAD) * D, D, 2);
        }
        for (int h = 0; h < G; h++)
            s[h * T + P + u] = dot(qt + h * D, k + (size_t)u * D, D);
    }
    for (int h = 0; h < G; h++) {
        float *sh = s + h * T, m = -INFINITY, z = 0.f;
        for (int i = 0; i < T; i++) m = sh[i] > m ? sh[i] : m;
#pragma omp simd reduction(+:z)
        for (int i = 0; i < T; i++) { sh[i] = expf(sh[i] - m); z += sh[i]; }
        for (int i = 0; i < T; i++) sh[i] /= z;
    }
    for (int i = 0; i < G * D; i++) o[i] = 0.f;
    for (int p = 0; p < P; p++)
        if (!isinf(bias[p]))
            for (int h = 0; h < G; h++) add_scaled(o + h * D, s[h * T + p], pv + (size_t)p * D, D);
    for (int u = 0; u < U; u++)
        for (int h = 0; h < G; h++) add_scaled(o + h * D, s[h * T + P + u], v + (size_t)u * D, D);
}

/* q [R, K, G, D]: the rows' queries, already scaled; G query heads per KV head.
   pk, pv [B, K, P, D]: prompt b's keys and values; pbias [B, P]: 0 or -inf.
   kc, vc [>=R, K, S, D]: each row's completion keys and values, slots [0, U) attended.
   sample [R]: each row's sample index (prompt = sample / n), or NULL for rows 0 .. R-1.
   out [R, K, G, D]. Returns 0, or 1 where a thread could not allocate its scores. */
int attend_f32(const float *q, const float *pk, const float *pv, const float *pbias,
               const float *kc, const float *vc, const int64_t *sample, float *out,
               int R, int K, int G, int D, int P, int S, int U, int n, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *s = malloc(sizeof(float) * (size_t)G * (P + U));
        failed = s == NULL;
#pragma omp for schedule(static)
        for (int t = 0; t < R * K; t++) {
            if (s == NULL) continue;
            const int r = t / K, g = t % K;
            const int64_t b = (sample ? sample[r] : r) / n;
            const size_t pt = ((size_t)b * K + g) * P * D, ct = ((size_t)r * K + g) * S * D;
            const float *qt = q + (size_t)t * G * D, *bias = pbias + (size_t)b * P;
            float *o = out + (size_t)t * G * D;
            if (D == 64)                                             /* the common head sizes, unrolled */
                attend_one(qt, pk + pt, pv + pt, bias, kc + ct, vc + ct, s, o, G, 64, P, U);
            else if (D == 128)
                attend_one(qt, pk + pt, pv + pt, bias, kc + ct, vc + ct, s, o, G, 128, P, U);
            else
                attend_one(qt, pk + pt, pv + pt, bias, kc + ct, vc + ct, s, o, G, D, P, U);
        }
        free(s);
    }
    return failed;
}
