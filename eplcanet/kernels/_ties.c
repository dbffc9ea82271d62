/* The max-pool tie rule of eplcanet/energy/pool_ties.py in one pass over the windows.
 *
 * For every 2x2 pooling window of a convolution's output and every position p of it (0 top left,
 * 1 top right, 2 bottom left, 3 bottom right), the first position whose receptive field holds
 * the same input values as p's, in every channel; the max-pool index picked in each channel is
 * then moved to that first position, in place. Fields are compared value by value (==, as
 * PyTorch's comparison, so 0.0 equals -0.0) and the comparison stops at the first difference:
 * away from ties a window costs a handful of loads, which a chain of tensor operations cannot
 * match (it reads every channel of every pixel several times).
 *
 * x: the convolution's input, channels-last (B, H, W, C), zero outside (padding pad);
 * the convolution: k x k, stride s; its output Ho x Wo; idx: (B, Co, Ho/2, Wo/2) int64 indices
 * into the Ho x Wo plane, with element strides (sb, sc, sh, sw).
 */
#define BLOCK 16  /* channels compared per test: the block's comparisons vectorise */

#define DEFINE_TIES(T, S)                                                                         \
/* Whether two pixels' C channels differ; NULL stands for a pixel of the zero padding. */        \
static inline int pixels_differ_##S(const T *p1, const T *p2, int C) {                            \
    static const T zeros[BLOCK];                                                                  \
    int step1 = p1 ? BLOCK : 0, step2 = p2 ? BLOCK : 0;                                           \
    const T *a = p1 ? p1 : zeros, *b = p2 ? p2 : zeros;                                           \
    int c = 0;                                                                                    \
    for (; c + BLOCK <= C; c += BLOCK, a += step1, b += step2) {                                  \
        int d = 0;                                                                                \
        _Pragma("omp simd reduction(|:d)")                                                        \
        for (int u = 0; u < BLOCK; u++) d |= a[u] != b[u];                                        \
        if (d) return 1;                                                                          \
    }                                                                                             \
    for (int u = 0; c + u < C; u++)                                                               \
        if (a[u] != b[u]) return 1;                                                               \
    return 0;                                                                                     \
}                                                                                                 \
/* Whether the fields of output positions (y1, x1) and (y2, x2) hold the same values. */        \
static int same_field_##S(const T *x, int b, int H, int W, int C, int k, int s, int pad,          \
                          int y1, int x1, int y2, int x2) {                                       \
    for (int dy = 0; dy < k; dy++) {                                                              \
        int r1 = y1 * s + dy - pad, r2 = y2 * s + dy - pad;                                       \
        int in1 = r1 >= 0 && r1 < H, in2 = r2 >= 0 && r2 < H;                                     \
        for (int dx = 0; dx < k; dx++) {                                                          \
            int c1 = x1 * s + dx - pad, c2 = x2 * s + dx - pad;                                   \
            const T *p1 = in1 && c1 >= 0 && c1 < W ? x + (((long)b * H + r1) * W + c1) * C : 0;  \
            const T *p2 = in2 && c2 >= 0 && c2 < W ? x + (((long)b * H + r2) * W + c2) * C : 0;  \
            if (p1 != p2 && pixels_differ_##S(p1, p2, C)) return 0;                               \
        }                                                                                         \
    }                                                                                             \
    return 1;                                                                                     \
}                                                                                                 \
int pool_ties_##S(const T *x, int B, int H, int W, int C, int k, int s, int pad, int Ho, int Wo,  \
                  long long *idx, int Co, int sb, int sc, int sh, int sw) {                       \
    int H2 = Ho / 2, W2 = Wo / 2;                                                                 \
    long windows = (long)B * H2 * W2;                                                             \
    /* One thread: a pass costs about a tenth of a millisecond for a CIFAR-size layer, less than \
       waking a parallel region on a busy machine. */                                             \
    for (long w = 0; w < windows; w++) {                                                          \
        int b = (int)(w / ((long)H2 * W2)), i = (int)(w / W2 % H2), j = (int)(w % W2);          \
        int y0 = 2 * i, x0 = 2 * j;                                                               \
        int py[4] = {y0, y0, y0 + 1, y0 + 1}, px[4] = {x0, x0 + 1, x0, x0 + 1};                   \
        int first[4] = {0, 1, 2, 3}, moved = 0;                                                   \
        for (int p = 1; p < 4; p++)                                                               \
            for (int q = 0; q < p; q++)                                                           \
                if (first[q] == q &&                                                              \
                    same_field_##S(x, b, H, W, C, k, s, pad, py[q], px[q], py[p], px[p])) {      \
                    first[p] = q;                                                                 \
                    moved = 1;                                                                    \
                    break;                                                                        \
                }                                                                                 \
        if (!moved) continue;                                                                     \
        long long *row = idx + (long)b * sb + (long)i * sh + (long)j * sw;                        \
        for (int c = 0; c < Co; c++) {                                                            \
            long long v = row[(long)c * sc];                                                      \
            int p = (int)((v / Wo - y0) * 2 + (v % Wo - x0));                                     \
            if (p < 0 || p > 3) continue; /* not an index of this window: left as it is */        \
            row[(long)c * sc] = (long long)py[first[p]] * Wo + px[first[p]];                      \
        }                                                                                         \
    }                                                                                             \
    return 0;                                                                                     \
}

DEFINE_TIES(float, f32)
DEFINE_TIES(double, f64)
