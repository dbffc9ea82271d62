/* Winograd tile transforms on channels-last tensors, fused with the gather and scatter of tiles.
 *
 * Built and loaded at first use by eplcanet/kernels/native.py. Each transform applies a small
 * matrix L (p x q, row-major) on both axes of every q x q tile and channel, Y = L X L^T, with the
 * channels innermost so that the compiler vectorises over them. Tiles in the frequency domain are
 * laid out frequency-major, (p * p, tiles, C), for the per-frequency matrix products that follow.
 * Tile t is (image b, tile row i, tile column j) with t = (b * th + i) * tw + j; tile (i, j) of an
 * image covers input rows i * m - pad .. i * m - pad + n - 1 (zero outside the image) and output
 * rows i * m .. i * m + m - 1.
 */
#include <omp.h>
#include <string.h>

#define CH 16  /* channels per block: one vector register of floats with AVX-512; the fixed trip
                  count lets the compiler turn every inner loop into single vector instructions */
#define MAXN 8
#define NB 32  /* output columns per GEMM block: 2 vector registers of floats per row */

/* y = L x L^T for one block of CH channels: x [Q][Q][CH], y [P][P][CH], L (P x Q). P and Q are
   compile-time constants: the loops unroll, and each pass keeps P independent partial sums (one
   vector register each) so that the multiply-adds do not wait on one another. */
#define DEFINE_TRANSFORM(T, S, P, Q)                                                              \
/* dst[p] = sum_q L[p][q] src[q] for p < P, on CH-channel vectors src_stride and dst_stride       \
   apart: one pass along an axis of the tile, P independent partial sums. */                     \
static inline void mix_##S##_##P##x##Q(const T *restrict L, const T *restrict src,               \
                                        long src_stride, T *restrict dst, long dst_stride) {      \
    T acc[P][CH];                                                                                 \
    _Pragma("GCC unroll 8")                                                                       \
    for (int p = 0; p < P; p++)                                                                   \
        _Pragma("omp simd")                                                                       \
        for (int c = 0; c < CH; c++) acc[p][c] = 0;                                               \
    for (int q = 0; q < Q; q++) {                                                                 \
        const T *sq = src + q * src_stride;                                                       \
        _Pragma("GCC unroll 8")                                                                   \
        for (int p = 0; p < P; p++) {                                                             \
            const T l = L[p * Q + q];                                                             \
            _Pragma("omp simd")                                                                   \
            for (int c = 0; c < CH; c++) acc[p][c] += l * sq[c];                                  \
        }                                                                                         \
    }                                                                                             \
    _Pragma("GCC unroll 8")                                                                       \
    for (int p = 0; p < P; p++)                                                                   \
        _Pragma("omp simd")                                                                       \
        for (int c = 0; c < CH; c++) dst[p * dst_stride + c] = acc[p][c];                         \
}                                                                                                 \
static void transform_##S##_##P##x##Q(const T *restrict L, const T *restrict x, T *restrict y) {   \
    T tmp[P][Q][CH];                                                                              \
    for (int j = 0; j < Q; j++)  /* along the first axis: tmp[a][j] = sum_i L[a][i] x[i][j] */   \
        mix_##S##_##P##x##Q(L, x + j * CH, (long)Q * CH, &tmp[0][j][0], (long)Q * CH);            \
    for (int a = 0; a < P; a++)  /* then the second: y[a][b] = sum_j L[b][j] tmp[a][j] */        \
        mix_##S##_##P##x##Q(L, &tmp[a][0][0], CH, y + a * P * CH, CH);                            \
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
/* Per-tile pieces, for one block of cc <= CH channels starting at channel c0. */                 \
/* The n x n input window of tile (i, j) of image b, zero outside the image. */                   \
static inline void load_window_##S(const T *x, int b, int i, int j, int H, int W, int C, int pad, \
                                   int m, int n, int c0, int cc, T *d) {                          \
    if (cc < CH) memset(d, 0, sizeof(T) * n * n * CH);                                            \
    for (int u = 0; u < n; u++)                                                                   \
        for (int v = 0; v < n; v++) {                                                             \
            const int r = i * m - pad + u, s = j * m - pad + v;                                   \
            T *dst = d + (u * n + v) * CH;                                                        \
            if (r < 0 || r >= H || s < 0 || s >= W) memset(dst, 0, sizeof(T) * cc);               \
            else copy_block_##S(dst, x + (((long)b * H + r) * W + s) * C + c0, cc);               \
        }                                                                                         \
}                                                                                                 \
/* The m x m output tile (i, j) of image b, zero beyond the output. */                            \
static inline void load_tile_##S(const T *g, int b, int i, int j, int Ho, int Wo, int C, int m,  \
                                 int c0, int cc, T *d) {                                          \
    if (cc < CH) memset(d, 0, sizeof(T) * m * m * CH);                                            \
    for (int u = 0; u < m; u++)                                                                   \
        for (int v = 0; v < m; v++) {                                                             \
            const int r = i * m + u, s = j * m + v;                                               \
            T *dst = d + (u * m + v) * CH;                                                        \
            if (r >= Ho || s >= Wo) memset(dst, 0, sizeof(T) * cc);                               \
            else copy_block_##S(dst, g + (((long)b * Ho + r) * Wo + s) * C + c0, cc);             \
        }                                                                                         \
}                                                                                                 \
/* Write the m x m tile o (plus bias) to output tile (i, j) of image b, cropped to the output. */ \
static inline void store_tile_##S(const T *o, T *y, int b, int i, int j, int Ho, int Wo, int C,  \
                                  int m, int c0, int cc, const T *bias) {                         \
    for (int u = 0; u < m; u++)                                                                   \
        for (int v = 0; v < m; v++) {                                                             \
            const int r = i * m + u, s = j * m + v;                                               \
            if (r >= Ho || s >= Wo) continue;                                                     \
            T *dst = y + (((long)b * Ho + r) * Wo + s) * C + c0;                                  \
            const T *src = o + (u * m + v) * CH;                                                  \
            if (bias) for (int c = 0; c < cc; c++) dst[c] = src[c] + bias[c0 + c];                \
            else copy_block_##S(dst, src, cc);                                                    \
        }                                                                                         \
}                                                                                                 \
/* Add the n x n window o into input window (i, j) of image b (the part inside the image). */     \
static inline void add_window_##S(const T *o, T *x, int b, int i, int j, int H, int W, int C,    \
                                  int pad, int m, int n, int c0, int cc) {                        \
    for (int u = 0; u < n; u++)                                                                   \
        for (int v = 0; v < n; v++) {                                                             \
            const int r = i * m - pad + u, s = j * m - pad + v;                                   \
            if (r < 0 || r >= H || s < 0 || s >= W) continue;                                     \
            T *dst = x + (((long)b * H + r) * W + s) * C + c0;                                    \
            const T *src = o + (u * n + v) * CH;                                                  \
            for (int c = 0; c < cc; c++) dst[c] += src[c];                                        \
        }                                                                                         \
}                                                                                                 \
/* Tile frequency f of tile t, channels c0 .. c0 + cc, in a frequency-major (n*n, tiles, C)       \
   buffer: to (put) or from (get) the CH-strided block d. */                                      \
static inline void put_freqs_##S(const T *d, T *buf, long tiles, long t, int C, int nf, int c0,  \
                                 int cc) {                                                        \
    for (int f = 0; f < nf; f++)                                                                  \
        copy_block_##S(buf + ((long)f * tiles + t) * C + c0, d + f * CH, cc);                     \
}                                                                                                 \
static inline void get_freqs_##S(const T *buf, T *d, long tiles, long t, int C, int nf, int c0,  \
                                 int cc) {                                                        \
    if (cc < CH) memset(d, 0, sizeof(T) * nf * CH);                                               \
    for (int f = 0; f < nf; f++)                                                                  \
        copy_block_##S(d + f * CH, buf + ((long)f * tiles + t) * C + c0, cc);                     \
}                                                                                                 \
                                                                                                  \
/* One tile into the frequency domain, all its channel blocks, as tile t of `tiles` in the        \
   frequency-major buffer out: the input tile B^T D B of the n x n window D of x (H x W, pad),    \
   or with grad the output-gradient tile A Y A^T of the m x m tile Y of g (H x W = the output,    \
   zero beyond it; pad unused). */                                                                \
static inline void tile_to_freqs_##S(int grad, const T *src, int b, int i, int j, long t,         \
                                     long tiles, int H, int W, int C, int pad, int m, int n,      \
                                     transform_##S##_fn transform, const T *L, T *out) {          \
    T d[MAXN * MAXN * CH], y[MAXN * MAXN * CH];                                                   \
    for (int c0 = 0; c0 < C; c0 += CH) {                                                          \
        const int cc = C - c0 < CH ? C - c0 : CH;                                                 \
        if (grad) load_tile_##S(src, b, i, j, H, W, C, m, c0, cc, d);                             \
        else load_window_##S(src, b, i, j, H, W, C, pad, m, n, c0, cc, d);                        \
        transform(L, d, y);                                                                       \
        put_freqs_##S(y, out, tiles, t, C, n * n, c0, cc);                                        \
    }                                                                                             \
}                                                                                                 \
/* Tile t of `tiles` in the frequency-major buffer in, back to space, all its channel blocks:     \
   the output tile A^T M A written (plus bias) to tile (i, j) of y (H x W = the output, cropped;  \
   pad unused), or with adjoint the input window B V B^T added into window (i, j) of x (H x W,    \
   pad). */                                                                                       \
static inline void tile_from_freqs_##S(int adjoint, const T *in, int b, int i, int j, long t,     \
                                       long tiles, int H, int W, int C, int pad, int m, int n,    \
                                       transform_##S##_fn transform, const T *L, const T *bias,   \
                                       T *dst) {                                                  \
    T d[MAXN * MAXN * CH], y[MAXN * MAXN * CH];                                                   \
    for (int c0 = 0; c0 < C; c0 += CH) {                                                          \
        const int cc = C - c0 < CH ? C - c0 : CH;                                                 \
        get_freqs_##S(in, d, tiles, t, C, n * n, c0, cc);                                         \
        transform(L, d, y);                                                                       \
        if (adjoint) add_window_##S(y, dst, b, i, j, H, W, C, pad, m, n, c0, cc);                 \
        else store_tile_##S(y, dst, b, i, j, H, W, C, m, c0, cc, bias);                           \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* Tiles into the frequency domain, (n*n, B*th*tw, C) in out: input tiles of x (B, H, W, C), or   \
   with grad output-gradient tiles of g (B, H = Ho, W = Wo, C). L is B^T (n x n), or A (n x m)    \
   with grad. */                                                                                  \
int to_freqs_##S(int grad, const T *src, int B, int H, int W, int C, int pad, int m, int n,       \
                 int th, int tw, const T *L, T *out) {                                            \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = grad ? pick_##S(n, m) : pick_##S(n, n);                  \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (long t = 0; t < tiles; t++)                                                              \
        tile_to_freqs_##S(grad, src, (int)(t / ((long)th * tw)), (int)(t / tw % th),              \
                          (int)(t % tw), t, tiles, H, W, C, pad, m, n, transform, L, out);        \
    return 0;                                                                                     \
}                                                                                                 \
                                                                                                  \
/* Tiles back from the frequency domain, in (n*n, B*th*tw, C): the output y (B, H = Ho, W = Wo,   \
   C) of A^T M A plus bias (when given), or with adjoint x (B, H, W, C) overwritten with the sum  \
   of B V B^T over the windows covering each position. L is A^T (m x n), or B (n x n) with        \
   adjoint. One image per thread, so the overlapping windows of an image are added by one         \
   thread. */                                                                                     \
int from_freqs_##S(int adjoint, const T *in, int B, int H, int W, int C, int pad, int m, int n,   \
                   int th, int tw, const T *L, const T *bias, T *dst) {                           \
    const long tiles = (long)B * th * tw;                                                         \
    const transform_##S##_fn transform = adjoint ? pick_##S(n, n) : pick_##S(m, n);               \
    if (!transform) return 1;                                                                     \
    _Pragma("omp parallel for schedule(static)")                                                  \
    for (int b = 0; b < B; b++) {                                                                 \
        if (adjoint) memset(dst + (long)b * H * W * C, 0, sizeof(T) * H * W * C);                 \
        for (int i = 0; i < th; i++)                                                              \
            for (int j = 0; j < tw; j++)                                                          \
                tile_from_freqs_##S(adjoint, in, b, i, j, ((long)b * th + i) * tw + j, tiles, H,  \
                                    W, C, pad, m, n, transform, L, bias, dst);                    \
    }                                                                                             \
    return 0;                                                                                     \
}                                                                                                 \
/* c (rows x N) = a (rows x K) @ w (K x N, rows ldw apart), in blocks of R rows by NB columns   \
   whose partial sums stay in vector registers; WIDTH columns of each block are computed (NB, a  \
   compile-time constant, when w's rows reach that far, zero-padded if need be). */              \
static inline __attribute__((always_inline)) void gemm_block_##S(                                 \
        const T *restrict a, const T *restrict w, T *restrict c, int R, int K, int N, int ldw,    \
        int o0, int nb, int full) {                                                               \
    T acc[4][NB];                                                                                 \
    for (int r = 0; r < R; r++) for (int o = 0; o < NB; o++) acc[r][o] = 0;                       \
    for (int k = 0; k < K; k++) {                                                                 \
        const T *wk = w + (long)k * ldw + o0;                                                     \
        for (int r = 0; r < R; r++) {                                                             \
            const T av = a[(long)r * K + k];                                                      \
            if (full) for (int o = 0; o < NB; o++) acc[r][o] += av * wk[o];                       \
            else for (int o = 0; o < nb; o++) acc[r][o] += av * wk[o];                            \
        }                                                                                         \
    }                                                                                             \
    for (int r = 0; r < R; r++)                                                                   \
        for (int o = 0; o < nb; o++) c[(long)r * N + o0 + o] = acc[r][o];                         \
}                                                                                                 \
static void gemm_##S(const T *restrict a, const T *restrict w, T *restrict c, int rows, int K,   \
                     int N, int ldw) {                                                            \
    for (int o0 = 0; o0 < N; o0 += NB) {                                                          \
        const int nb = N - o0 < NB ? N - o0 : NB, full = nb == NB || ldw >= o0 + NB;              \
        /* Literal R and full at each call, so that the inlined block specialises. */             \
        int r0 = 0;                                                                               \
        if (full) {                                                                               \
            for (; r0 + 4 <= rows; r0 += 4)                                                       \
                gemm_block_##S(a + (long)r0 * K, w, c + (long)r0 * N, 4, K, N, ldw, o0, nb, 1);   \
            for (; r0 < rows; r0++)                                                               \
                gemm_block_##S(a + (long)r0 * K, w, c + (long)r0 * N, 1, K, N, ldw, o0, nb, 1);   \
        } else {                                                                                  \
            for (; r0 + 4 <= rows; r0 += 4)                                                       \
                gemm_block_##S(a + (long)r0 * K, w, c + (long)r0 * N, 4, K, N, ldw, o0, nb, 0);   \
            for (; r0 < rows; r0++)                                                               \
                gemm_block_##S(a + (long)r0 * K, w, c + (long)r0 * N, 1, K, N, ldw, o0, nb, 0);   \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* The whole convolution (forward: conv(x) + bias into y) or its transpose (adjoint: conv^T(g)   \
   into x), for chunks of `per` images at a time: each thread takes whole chunks, transforms     \
   their tiles into its own slice of `work` (2 * n*n * per*th*tw * max(Ci, Co) values), runs     \
   the per-frequency products there and transforms the results out, so a chunk's tiles stay in  \
   its core's cache. u: (n*n, Ci, ldu) for the forward, (n*n, Co, ldu) (transposed) for the      \
   adjoint, with ldu >= its output channels (the adjoint's rows are zero-padded to a multiple of  \
   NB for the fixed-width products above). */                                                 \
int conv_fused_##S(int adjoint, const T *src, T *dst, int B, int H, int W, int Ci, int Co,       \
                   int pad, int m, int n, int th, int tw, const T *L_in, const T *u,              \
                   const T *L_out, const T *bias, int ldu, int per, T *work, int nthreads) {      \
    const int Ho = H + 2 * pad - (n - m), Wo = W + 2 * pad - (n - m);                             \
    const transform_##S##_fn t_in = adjoint ? pick_##S(n, m) : pick_##S(n, n);                   \
    const transform_##S##_fn t_out = adjoint ? pick_##S(n, n) : pick_##S(m, n);                   \
    if (!t_in || !t_out) return 1;                                                                \
    const int c_from = adjoint ? Co : Ci, c_to = adjoint ? Ci : Co, nf = n * n;                   \
    const int chunks = (B + per - 1) / per;                                                       \
    const long slot = 2L * nf * per * th * tw * (Ci > Co ? Ci : Co);                              \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                            \
    for (int k = 0; k < chunks; k++) {                                                            \
        T *v = work + omp_get_thread_num() * slot, *p = v + slot / 2;                             \
        const int b0 = k * per, b1 = b0 + per < B ? b0 + per : B;                                 \
        const long tiles = (long)(b1 - b0) * th * tw;                                             \
        for (int b = b0; b < b1; b++)                                                             \
            for (int i = 0; i < th; i++)                                                          \
                for (int j = 0; j < tw; j++)                                                      \
                    tile_to_freqs_##S(adjoint, src, b, i, j, ((long)(b - b0) * th + i) * tw + j,  \
                                      tiles, adjoint ? Ho : H, adjoint ? Wo : W, c_from, pad, m,  \
                                      n, t_in, L_in, v);                                          \
        for (int f = 0; f < nf; f++)                                                              \
            gemm_##S(v + f * tiles * c_from, u + (long)f * c_from * ldu, p + f * tiles * c_to,    \
                     (int)tiles, c_from, c_to, ldu);                                              \
        if (adjoint) memset(dst + (long)b0 * H * W * Ci, 0, sizeof(T) * (b1 - b0) * H * W * Ci);  \
        for (int b = b0; b < b1; b++)                                                             \
            for (int i = 0; i < th; i++)                                                          \
                for (int j = 0; j < tw; j++)                                                      \
                    tile_from_freqs_##S(adjoint, p, b, i, j, ((long)(b - b0) * th + i) * tw + j,  \
                                        tiles, adjoint ? H : Ho, adjoint ? W : Wo, c_to, pad, m,  \
                                        n, t_out, L_out, bias, dst);                              \
    }                                                                                             \
    return 0;                                                                                     \
}


DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
