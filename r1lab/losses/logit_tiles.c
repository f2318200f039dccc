/* One tile of LM-head logits, forward statistics and gradient in one pass each: see logit_tiles.py. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

/* z [R, C] (a row every ld floats): the logits of vocabulary entries first .. first + C - 1.
   Divides z by temperature in place (where it is not 1), then for each row: its max m, the
   sum of exp(z - m) and, where dot is not NULL, the sum of exp(z - m) * z; target[r] =
   z[r, ids[r] - first] where the id falls in the tile (left as it is elsewhere). */
void tile_stats_f32(float *z, int R, int C, int64_t ld, const int64_t *ids, int64_t first, float temperature,
                    float *m, float *sum, float *dot, float *target, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < R; r++) {
        float *zr = z + (size_t)r * ld, top = -INFINITY, s = 0.f, d = 0.f;
        if (temperature != 1.f) {
#pragma omp simd
            for (int c = 0; c < C; c++) zr[c] /= temperature;
        }
#pragma omp simd reduction(max:top)
        for (int c = 0; c < C; c++) top = zr[c] > top ? zr[c] : top;
        if (dot != NULL) {
#pragma omp simd reduction(+:s, d)
            for (int c = 0; c < C; c++) {
                const float e = expf(zr[c] - top);
                s += e;
                d += e * zr[c];
            }
            dot[r] = d;
        } else {
#pragma omp simd reduction(+:s)
            for (int c = 0; c < C; c++) s += expf(zr[c] - top);
        }
        m[r] = top;
        sum[r] = s;
        const int64_t at = ids[r] - first;
        if (at >= 0 && at < C) target[r] = zr[at];
    }
}

/* In place: z [R, C] (scaled logits) -> d loss / d logit = (onehot(ids - first) - exp(z - lse)) * g,
   g [R] the log-probs' gradient already divided by the temperature. */
void tile_grad_f32(float *z, int R, int C, int64_t ld, const float *lse, const int64_t *ids, int64_t first,
                   const float *g, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < R; r++) {
        float *zr = z + (size_t)r * ld;
        const float l = lse[r], ng = -g[r];
#pragma omp simd
        for (int c = 0; c < C; c++) zr[c] = expf(zr[c] - l) * ng;
        const int64_t at = ids[r] - first;
        if (at >= 0 && at < C) zr[at] += g[r];
    }
}
