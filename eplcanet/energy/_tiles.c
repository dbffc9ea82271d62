/* Winograd tile transforms on channels-last tensors, fused with the gather and scatter of tiles.
 *
 * Built and loaded at first use by eplcanet/energy/native.py. Each transform applies a small
 * matrix L (p x q, row-major) on both axes of every q x q tile and channel, Y = L X L^T, with the
 * channels innermost so that the compiler vectorises over them. Tiles in the frequency domain are
 * laid out frequency-major, (p * p, tiles, C), for the per-frequency matrix products that follow.
 * Tile t is (image b, tile row i, tile column j) with t = (b * th + i) * tw + j; tile (i, j) of an
 * image covers input rows i * m - pad .. i * m - pad + n - 1 (zero outside the image) and output
 * rows i * m .. i * m + m - 1.
 */
#include <string.h>

#define CH 16  /* channels per block: one vector register of floats with AVX-512; the fixed trip
                  count lets the compiler turn every inner loop into single vector instructions */
#define MAXN 8

/* y = L x L^T for one block of CH channels: x [Q][Q][CH], y [P][P][CH], L (P x Q). P and Q are
   compile-time constants: the loops unroll, and each pass keeps P independent partial sums (one
   vector register each) so that the multiply-adds do not wait on one another. */
#define DEFINE_TRANSFORM(T, S, P, Q)                                                              \
static void transform_##S##_##P##x##Q(const T *restrict L, const T *restrict x, T *restrict y) {   \
    T tmp[P][Q][CH];                                                                              \
    for (int j = 0; j < Q; j++) {                                                                 \
        T acc[P][CH];                                                                             \
        _Pragma("GCC unroll 8")                                                                   \
        for (int a = 0; a < P; a++)                                                               \
            _Pragma("omp simd")                                                                   \
            for (int c = 0; c < CH; c++) acc[a][c] = 0;                                           \
        for (int i = 0; i < Q; i++) {                                                             \
            const T *xi = x + (i * Q + j) * CH;                                                   \
            _Pragma("GCC unroll 8")                                                               \
            for (int a = 0; a < P; a++) {                                                         \
                const T l = L[a * Q + i];                                                         \
                _Pragma("omp simd")                                                               \
                for (int c = 0; c < CH; c++) acc[a][c] += l * xi[c];                              \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8")                                                                   \
        for (int a = 0; a < P; a++)                                                               \
            _Pragma("omp simd")                                                                   \
            for (int c = 0; c < CH; c++) tmp[a][j][c] = acc[a][c];                                \
    }                                                                                             \
    for (int a = 0; a < P; a++) {                                                                 \
        T acc[P][CH];                                                                             \
        _Pragma("GCC unroll 8")                                                                   \
        for (int b = 0; b < P; b++)                                                               \
            _Pragma("omp simd")                                                                   \
            for (int c = 0; c < CH; c++) acc[b][c] = 0;                                           \
        for (int j = 0; j < Q; j++) {                                                             \
            const T *t = tmp[a][j];                                                               \
            _Pragma("GCC unroll 8")                                                               \
            for (int b = 0; b < P; b++) {                                                         \
                const T l = L[b * Q + j];                                                         \
                _Pragma("omp simd")                                                               \
                for (int c = 0; c < CH; c++) acc[b][c] += l * t[c];                               \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8")                                                                   \
        for (int b = 0; b < P; b++)                                                               \
            _Pragma("omp simd")                                                                   \
            for (int c = 0; c < CH; c++) y[(a * P + b) * CH + c] = acc[b][c];                     \
    }                                                                                             \
}

/* The (P, Q) pairs of F(4x4, 3x3) (n = 6) and F(4x4, 5x5) (n = 8): B^T (n x n), A^T (4 x n),
   A (n x 4). */
#define DEFINE_TRANSFORMS(T, S)                                                                   \
DEFINE_TRANSFORM(T, S, 6, 6) DEFINE_TRANSFORM(T, S, 4, 6) DEFINE_TRANSFORM(T, S, 6, 4)            \
DEFINE_TRANSFORM(T, S, 8, 8) DEFINE_TRANSFORM(T, S, 4, 8) DEFINE_TRANSFORM(T, S, 8, 4)            \
typedef void (*transform_##S##_fn)(const T *restrict, const T *restrict, T *restrict);             \
static transform_##S##_fn pick_##S(int p, int q) {                                                \
    if (p == 6 && q == 6) return transform_##S##_6x6;                                             \
    if (p == 4 && q == 6) return transform_##S##_4x6;                                             \
    if (p == 6 && q == 4) return transform_##S##_6x4;                                             \
    if (p == 8 && q == 8) return transform_##S##_8x8;                                             \
    if (p == 4 && q == 8) return transform_##S##_4x8;                                             \
    if (p == 8 && q == 4) return transform_##S##_8x4;                                             \
    return 0;                                                                                     \
}

#define DEFINE_KERNELS(T, S)                                                                      \
DEFINE_TRANSFORMS(T, S)                                                                           \
/* A copy of cc <= CH values: a fixed-size (inlined, vector) copy for a full block. */            \
static inline void copy_block_##S(T *restrict dst, const T *restrict src, int cc) {               \
    if (cc == CH) memcpy(dst, src, sizeof(T) * CH);                                               \
    else memcpy(dst, src, sizeof(T) * cc);                                                        \
}                                                                                                 \
                                                                                                  \
/* Input tiles: x (B, H, W, C) -> out (n*n, B*th*tw, C) = B^T D B of every n x n window D. */    \
int tiles_in_##S(const T *x, int B, int H, int W, int C, int pad, int m, int n, int th, int tw, \
                  const T *L, T *out) {                                                           \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = pick_##S(n, n);                                                      \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (long t = 0; t < tiles; t++) {                                                            \
        T d[MAXN * MAXN * CH], y[MAXN * MAXN * CH];                        \
        const int b = (int)(t / ((long)th * tw)), i = (int)(t / tw % th), j = (int)(t % tw);      \
        for (int c0 = 0; c0 < C; c0 += CH) {                                                      \
            const int cc = C - c0 < CH ? C - c0 : CH;                                             \
            if (cc < CH) memset(d, 0, sizeof d);                                                  \
            for (int u = 0; u < n; u++)                                                           \
                for (int v = 0; v < n; v++) {                                                     \
                    const int r = i * m - pad + u, s = j * m - pad + v;                           \
                    T *dst = d + (u * n + v) * CH;                                                \
                    if (r < 0 || r >= H || s < 0 || s >= W) {                                     \
                        memset(dst, 0, sizeof(T) * cc);                                           \
                    } else {                                                                      \
                        copy_block_##S(dst, x + (((long)b * H + r) * W + s) * C + c0, cc);   \
                    }                                                                             \
                }                                                                                 \
            transform(L, d, y);                                                \
            for (int f = 0; f < n * n; f++)                                                       \
                copy_block_##S(out + ((long)f * tiles + t) * C + c0, y + f * CH, cc);        \
        }                                                                                         \
    }                                                                                             \
    return 0;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* Output tiles: in (n*n, B*th*tw, C) -> y (B, Ho, Wo, C) = A^T M A of every tile M, cropped to  \
   the output, plus bias (C values) when given. L is A^T (m x n). */                              \
int tiles_out_##S(const T *in, int B, int Ho, int Wo, int C, int m, int n, int th, int tw,      \
                   const T *L, const T *bias, T *y) {                                             \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = pick_##S(m, n);                                                      \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (long t = 0; t < tiles; t++) {                                                            \
        T d[MAXN * MAXN * CH], o[MAXN * MAXN * CH];                        \
        const int b = (int)(t / ((long)th * tw)), i = (int)(t / tw % th), j = (int)(t % tw);      \
        for (int c0 = 0; c0 < C; c0 += CH) {                                                      \
            const int cc = C - c0 < CH ? C - c0 : CH;                                             \
            if (cc < CH) memset(d, 0, sizeof d);                                                  \
            for (int f = 0; f < n * n; f++)                                                       \
                copy_block_##S(d + f * CH, in + ((long)f * tiles + t) * C + c0, cc);         \
            transform(L, d, o);                                                \
            for (int u = 0; u < m; u++)                                                           \
                for (int v = 0; v < m; v++) {                                                     \
                    const int r = i * m + u, s = j * m + v;                                       \
                    if (r >= Ho || s >= Wo) continue;                                             \
                    T *dst = y + (((long)b * Ho + r) * Wo + s) * C + c0;                          \
                    const T *src = o + (u * m + v) * CH;                                          \
                    if (bias) {                                                                   \
                        for (int c = 0; c < cc; c++) dst[c] = src[c] + bias[c0 + c];              \
                    } else {                                                                      \
                        copy_block_##S(dst, src, cc);                                         \
                    }                                                                             \
                }                                                                                 \
        }                                                                                         \
    }                                                                                             \
    return 0;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* Output-gradient tiles: g (B, Ho, Wo, C) -> out (n*n, B*th*tw, C) = A Y A^T of every m x m     \
   tile Y (zero beyond the output). L is A (n x m). */                                            \
int tiles_grad_##S(const T *g, int B, int Ho, int Wo, int C, int m, int n, int th, int tw,      \
                    const T *L, T *out) {                                                         \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = pick_##S(n, m);                                                      \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (long t = 0; t < tiles; t++) {                                                            \
        T d[MAXN * MAXN * CH], y[MAXN * MAXN * CH];                        \
        const int b = (int)(t / ((long)th * tw)), i = (int)(t / tw % th), j = (int)(t % tw);      \
        for (int c0 = 0; c0 < C; c0 += CH) {                                                      \
            const int cc = C - c0 < CH ? C - c0 : CH;                                             \
            if (cc < CH) memset(d, 0, sizeof d);                                                  \
            for (int u = 0; u < m; u++)                                                           \
                for (int v = 0; v < m; v++) {                                                     \
                    const int r = i * m + u, s = j * m + v;                                       \
                    T *dst = d + (u * m + v) * CH;                                                \
                    if (r >= Ho || s >= Wo) {                                                     \
                        memset(dst, 0, sizeof(T) * cc);                                           \
                    } else {                                                                      \
                        copy_block_##S(dst, g + (((long)b * Ho + r) * Wo + s) * C + c0, cc); \
                    }                                                                             \
                }                                                                                 \
            transform(L, d, y);                                                \
            for (int f = 0; f < n * n; f++)                                                       \
                copy_block_##S(out + ((long)f * tiles + t) * C + c0, y + f * CH, cc);        \
        }                                                                                         \
    }                                                                                             \
    return 0;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* The adjoint of tiles_in: in (n*n, B*th*tw, C) -> x (B, H, W, C), overwritten with the sum of  \
   B V B^T over the windows that cover each position. L is B (n x n). One image per thread, so   \
   the overlapping windows of an image are added by one thread. */                                \
int tiles_in_adjoint_##S(const T *in, int B, int H, int W, int C, int pad, int m, int n, int th, \
                          int tw, const T *L, T *x) {                                             \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = pick_##S(n, n);                                                      \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (int b = 0; b < B; b++) {                                                                 \
        T d[MAXN * MAXN * CH], y[MAXN * MAXN * CH];                        \
        memset(x + (long)b * H * W * C, 0, sizeof(T) * H * W * C);                                \
        for (int i = 0; i < th; i++)                                                              \
            for (int j = 0; j < tw; j++) {                                                        \
                const long t = ((long)b * th + i) * tw + j;                                       \
                for (int c0 = 0; c0 < C; c0 += CH) {                                              \
                    const int cc = C - c0 < CH ? C - c0 : CH;                                     \
                    if (cc < CH) memset(d, 0, sizeof d);                                          \
                    for (int f = 0; f < n * n; f++)                                               \
                        copy_block_##S(d + f * CH, in + ((long)f * tiles + t) * C + c0, cc); \
                    transform(L, d, y);                                        \
                    for (int u = 0; u < n; u++)                                                   \
                        for (int v = 0; v < n; v++) {                                             \
                            const int r = i * m - pad + u, s = j * m - pad + v;                   \
                            if (r < 0 || r >= H || s < 0 || s >= W) continue;                     \
                            T *dst = x + (((long)b * H + r) * W + s) * C + c0;                    \
                            const T *src = y + (u * n + v) * CH;                                  \
                            _Pragma("omp simd")                                                   \
                            for (int c = 0; c < cc; c++) dst[c] += src[c];                        \
                        }                                                                         \
                }                                                                                 \
            }                                                                                     \
    }                                                                                             \
    return 0;                                                                                     \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
