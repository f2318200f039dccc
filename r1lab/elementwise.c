/* The packed walk's elementwise passes, one loop each: see elementwise.py. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#pragma omp declare simd notinbranch
extern float expf(float);                /* glibc's vector expf (libmvec) where a loop vectorizes */

/* out = silu(gate) * up over n floats. */
void swiglu_forward_f32(const float *gate, const float *up, float *out, int64_t n, int threads) {
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.f + expf(-gate[i])) * up[i];
}

/* Given d loss / d (silu(gate) * up) in grad: grad_gate, grad_up, and the product itself. */
void swiglu_backward_f32(const float *gate, const float *up, const float *grad, float *grad_gate, float *grad_up,
                         float *product, int64_t n, int threads) {
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], s = 1.f / (1.f + expf(-g)), silu = g * s;
        grad_up[i] = grad[i] * silu;
        grad_gate[i] = grad[i] * up[i] * (s * (1.f + g * (1.f - s)));
        product[i] = silu * up[i];
    }
}

/* x [rows, d] -> out = w * (x * rstd), rstd [rows] = 1 / sqrt(mean(x^2) + eps). */
void rms_norm_forward_f32(const float *x, const float *w, float *out, float *rstd, int64_t rows, int d, float eps,
                          int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float ss = 0.f;
#pragma omp simd reduction(+:ss)
        for (int j = 0; j < d; j++) ss += xr[j] * xr[j];
        const float k = 1.f / sqrtf(ss / d + eps);
        rstd[r] = k;
#pragma omp simd
        for (int j = 0; j < d; j++) out[r * d + j] = w[j] * (xr[j] * k);
    }
}

/* The gradients of rms_norm_forward_f32 given grad [rows, d]: grad_x [rows, d] and grad_w [d]
   (where not NULL; summed over rows in each thread's own copy, then together). Returns 1
   where memory could not be allocated. */
int rms_norm_backward_f32(const float *x, const float *w, const float *rstd, const float *grad, float *grad_x,
                          float *grad_w, int64_t rows, int d, int threads) {
    float *sums = grad_w ? calloc((size_t)threads * d, sizeof(float)) : NULL;
    if (grad_w && sums == NULL) return 1;
#pragma omp parallel num_threads(threads)
    {
        float *mine = sums ? sums + (size_t)omp_get_thread_num() * d : NULL;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * d, *gr = grad + r * d, k = rstd[r];
            float dot = 0.f;
#pragma omp simd reduction(+:dot)
            for (int j = 0; j < d; j++) dot += gr[j] * w[j] * (xr[j] * k);
            const float mean = dot / d;
#pragma omp simd
            for (int j = 0; j < d; j++) {
                const float normed = xr[j] * k;
                grad_x[r * d + j] = k * (gr[j] * w[j] - normed * mean);
            }
            if (mine) {
#pragma omp simd
                for (int j = 0; j < d; j++) mine[j] += gr[j] * (xr[j] * k);
            }
        }
    }
    if (grad_w) {
        for (int j = 0; j < d; j++) {
            float s = 0.f;
            for (int t = 0; t < threads; t++) s += sums[(size_t)t * d + j];
            grad_w[j] = s;
        }
        free(sums);
    }
    return 0;
}

/* Rotary embedding of x [T, heads, D] (token t's heads from x + t * stride on) with cos, sin [T, D]
   into out [T, heads, D]: out = x * cos + rotate_half(x) * sin,
   rotate_half(x) = (-x[D/2:], x[:D/2]); with transpose, its transpose (the gradient's map):
   out[e] = x[e] cos[e] + x[e + D/2] sin[e + D/2] (e < D/2), x[e] cos[e] - x[e - D/2] sin[e - D/2]. */
void rope_f32(const float *x, int64_t stride, const float *cos_, const float *sin_, float *out, int64_t T,
              int heads, int D, int transpose, int threads) {
    const int h = D / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_ + t * D, *s = sin_ + t * D;
        for (int k = 0; k < heads; k++) {
            const float *xr = x + t * stride + k * D;
            float *o = out + (t * heads + k) * D;
            if (!transpose) {
#pragma omp simd
                for (int e = 0; e < h; e++) {
                    o[e] = xr[e] * c[e] + -xr[e + h] * s[e];
                    o[e + h] = xr[e + h] * c[e + h] + xr[e] * s[e + h];
                }
            } else {
#pragma omp simd
                for (int e = 0; e < h; e++) {
                    o[e] = xr[e] * c[e] + xr[e + h] * s[e + h];
                    o[e + h] = xr[e + h] * c[e + h] - xr[e] * s[e];
                }
            }
        }
    }
}
