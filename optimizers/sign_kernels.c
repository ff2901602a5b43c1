/* One-pass CPU kernels for the sign-based elementwise steps (Lion, Signum, LionMuon/SignMuon's Lion steps).
 *
 * Each function reads p, g and m once and writes p and m once: 20 bytes per fp32 element, against ~68 for the seven
 * separate torch passes it replaces. The arithmetic is that of the torch ops, operation for operation, so the result
 * is the same bit for bit (tests/test_fused_steps.py compares with the torch code on every step):
 *   x.mul(s)               x * s                      (the scalar s rounded to float first, as torch does)
 *   x.add(y, alpha=a)      fmaf(y, a, x)               (torch's CPU kernel is a fused multiply-add)
 *   torch.lerp(a, b, w)    w < 0.5 ? fmaf(w, b - a, a) : fmaf(-(1 - w), b - a, b)   (ATen's Lerp.h)
 *   torch.sign(x)          (x > 0) - (x < 0)          (0 for ±0 and NaN)
 * Built with -ffp-contract=off, so the compiler fuses no other multiply and add (that would change the rounding).
 * Loaded by optimizers/sign_kernels.py, which splits the elements over threads (ctypes releases the GIL).
 */
#include <math.h>
#include <stdint.h>

static inline float sign_of(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

static inline float lerp_of(float a, float b, float w) {
    float d = b - a;
    return w < 0.5f ? fmaf(w, d, a) : fmaf(-(1.0f - w), d, b);
}

/* Lion in lucidrains/lion-pytorch's order (optimizers/lion.py):
 *   p = p*decay;  u = m*b1 + (1-b1)*g;  p = p - lr*sign(u);  m = m*b2 + (1-b2)*g */
void lion_step(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float lr, float decay,
               int apply_decay, float b1, float a1, float b2, float a2) {
    for (int64_t i = 0; i < n; i++) {
        float pi = apply_decay ? p[i] * decay : p[i];
        float u = fmaf(g[i], a1, m[i] * b1);
        p[i] = fmaf(sign_of(u), -lr, pi);
        m[i] = fmaf(g[i], a2, m[i] * b2);
    }
}

/* Signum (optimizers/signum.py): m = lerp(m, g, w);  p = p*decay - lr*sign(m) */
void signum_step(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float lr, float decay,
                 int apply_decay, float w) {
    for (int64_t i = 0; i < n; i++) {
        float mi = lerp_of(m[i], g[i], w);
        float pi = apply_decay ? p[i] * decay : p[i];
        m[i] = mi;
        p[i] = fmaf(sign_of(mi), -lr, pi);
    }
}

/* LionMuon's Lion step (optimizers/lionmuon.py dual_ema): d = lerp(g, m, b1);  m = lerp(m, g, w2);
 * p = p*decay - lr*sign(d) */
void dual_ema_sign_step(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float lr,
                        float decay, int apply_decay, float b1, float w2) {
    for (int64_t i = 0; i < n; i++) {
        float d = lerp_of(g[i], m[i], b1);
        m[i] = lerp_of(m[i], g[i], w2);
        float pi = apply_decay ? p[i] * decay : p[i];
        p[i] = fmaf(sign_of(d), -lr, pi);
    }
}
