/* A decode step's draw without top-k or top-p over a large vocabulary: see sampling.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

/* The index of the interval of the running sum of mass [n] that holds target, and how far into
   it target lies (*rest), as sampling.py's _invert does it: the first running sum (in double)
   above target, and never past the first that reaches the whole sum (the last entry with mass). */
static int invert(const float *mass, int n, double target, double *rest) {
    double total = 0.0, cdf = 0.0;
    for (int i = 0; i < n; i++) total += mass[i];
    if (target < 0.0) target = 0.0;
    for (int i = 0; i < n; i++) {
        cdf += mass[i];
        if (cdf > target || cdf >= total) {
            *rest = target - (cdf - mass[i]);
            return i;
        }
    }
    *rest = 0.0;
    return 0;
}

/* For each row b of z [B, V] (rows `stride` floats apart) and its uniform u[b] in [0, 1): the
   token whose interval of the running sum of exp(z - max) holds u times the sum, found in two
   levels (blocks of `block` entries by their masses, then the entry inside the block), and its
   log-probability z[token] - logsumexp(z). Returns 1 where memory could not be allocated. */
int sample_rows_f32(const float *z, int64_t stride, int B, int V, int block, const double *u, int64_t *tokens,
                    float *logprobs, int threads) {
    const int nb = (V + block - 1) / block;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *mass = malloc(sizeof(float) * (size_t)(nb > block ? nb : block));
        failed = mass == NULL;
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (mass == NULL) continue;
            const float *zr = z + (size_t)b * stride;
            float m = -INFINITY;
#pragma omp simd reduction(max:m)
            for (int i = 0; i < V; i++) m = zr[i] > m ? zr[i] : m;
            if (isinf(m)) m = 0.f;                                 /* as torch.logsumexp does */
            double total = 0.0;
            float sum = 0.f;
            for (int k = 0; k < nb; k++) {
                const int lo = k * block, hi = lo + block < V ? lo + block : V;
                float s = 0.f;
#pragma omp simd reduction(+:s)
                for (int i = lo; i < hi; i++) s += expf(zr[i] - m);
                mass[k] = s;
                total += s;
                sum += s;
            }
            double rest;
            int tok;
            if (V <= block) {                                       /* one level */
                double all = 0.0;
                for (int i = 0; i < V; i++) all += mass[i] = expf(zr[i] - m);
                tok = invert(mass, V, u[b] * all, &rest);
            } else {
                const int k = invert(mass, nb, u[b] * total, &rest);
                const int lo = k * block, hi = lo + block < V ? lo + block : V;
                for (int i = lo; i < hi; i++) mass[i - lo] = expf(zr[i] - m);
                tok = lo + invert(mass, hi - lo, rest, &rest);
            }
            tokens[b] = tok;
            logprobs[b] = zr[tok] - (logf(sum) + m);
        }
        free(mass);
    }
    return failed;
}
