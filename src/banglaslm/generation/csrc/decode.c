/* One decoding step of banglaslm's GPT on a CPU, in fp32: the whole forward pass of one new
 * token per row of a batch, in a single call.
 *
 * Why this exists: at batch 1 a decoding step has to read every weight once (55 MB for a
 * 13.7 M model), which takes about 1.5-1.9 ms here, and PyTorch's eager mode spends about as
 * much again dispatching the ~120 small operators around those mat-vecs (norms, attention
 * over the cache, GELU, adds). This file does the same arithmetic as model.py's
 * `GPT.forward` with a KVCache, for one token, with no per-operator overhead: one OpenMP
 * parallel region per step, mat-vecs split by output rows across the threads, and the small
 * operations fused into the loops that produce their inputs.
 *
 * It is compiled on first use by cpu_decode.py (cc -O3 -march=native -fopenmp) and called
 * through ctypes; model.py stays the reference, and tests/generation/test_cpu_decode.py checks that the
 * logits agree with it for both architectures, with padding, batches and a full cache.
 *
 * Weight matrices may be stored quantized (quantize.py): int8 rows with one float32 scale
 * per row, or bf16. Every sum stays float32; an int8 row's sum is multiplied by its scale at
 * the end, as QuantLinear.forward does. At batch 1 the weights are widened in registers as
 * they are read; for larger batches each group of four rows is widened once into a per-thread
 * tile that every row of the batch then reads.
 *
 * Layout conventions (all row-major, contiguous, float32 unless quantized):
 *   linear weights (out, in) as in torch.nn.Linear; y = W x + b
 *   KV cache per layer: (rows, n_head, block, head_dim); slot `length` receives the new token
 *   rope tables: (block, head_dim) in the "rotate half" layout
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

enum { F32 = 0, I8 = 1, BF16 = 2 }; /* how the weight matrices are stored (Model.wtype) */

typedef struct {
    const void *w;      /* (rows, cols) of Model.wtype */
    const float *scale; /* I8: (rows,), the row's float32 scale; otherwise NULL */
} Mat;

typedef struct {
    const float *norm1_w, *norm1_b;   /* LayerNorm (gpt) or RMSNorm (modern, no bias) */
    Mat qkv; const float *qkv_b;      /* (3C, C): q, k, v stacked */
    Mat proj; const float *proj_b;    /* (C, C) */
    const float *norm2_w, *norm2_b;
    Mat up; const float *up_b;        /* gpt: (4C, C) GELU; modern: (hidden, C) */
    Mat gate;                         /* modern only: (hidden, C), silu(gate) * up */
    Mat down; const float *down_b;    /* (C, hidden) */
} Layer;

typedef struct {
    int32_t modern, n_layer, n_head, n_embd, hidden, vocab, block, wtype;
    float eps;
    Mat tok_emb;                          /* (vocab, C) */
    const float *pos_emb;                 /* gpt: (block, C); modern: NULL */
    const float *rope_cos, *rope_sin;     /* modern: (block, head_dim); gpt: NULL */
    const float *normf_w, *normf_b;
    Mat head;                             /* (vocab, C); tok_emb itself when tied */
    const Layer *layers;
} Model;

static int64_t tile_floats(const Model *m) { /* one thread's tile: eight widened rows */
    return 8 * (int64_t)(m->hidden > m->n_embd ? m->hidden : m->n_embd);
}

/* Floats of scratch space a step over B rows on `threads` threads needs (the caller allocates it). */
int64_t bslm_scratch_floats(const Model *m, int32_t B, int32_t threads) {
    int64_t C = m->n_embd;
    return (int64_t)B * (C /* x */ + C /* normed */ + 3 * C /* qkv */ + C /* attention out */
                         + m->hidden /* mlp */ + (int64_t)m->n_head * m->block /* scores */)
           + threads * tile_floats(m);
}

static inline float bf16_to_float(uint16_t h) { /* exact: bf16 is float32's upper half */
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float row_scale(const Mat *W, int64_t o) { return W->scale ? W->scale[o] : 1.0f; }

static inline float dot(const float *restrict w, const float *restrict x, int n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < n; i++) acc += w[i] * x[i];
    return acc;
}

/* out[b] = norm(x[b]) for every row; called by one thread (a row is only C floats). */
static void norm_rows(const Model *m, const float *w, const float *bias, const float *x,
                      float *out, int B) {
    const int C = m->n_embd;
    for (int b = 0; b < B; b++) {
        const float *xb = x + (int64_t)b * C;
        float *ob = out + (int64_t)b * C;
        if (m->modern) { /* RMSNorm */
            float ss = 0.0f;
            for (int i = 0; i < C; i++) ss += xb[i] * xb[i];
            const float r = 1.0f / sqrtf(ss / C + m->eps);
            for (int i = 0; i < C; i++) ob[i] = xb[i] * r * w[i];
        } else { /* LayerNorm, biased variance like torch */
            float mean = 0.0f, var = 0.0f;
            for (int i = 0; i < C; i++) mean += xb[i];
            mean /= C;
            for (int i = 0; i < C; i++) var += (xb[i] - mean) * (xb[i] - mean);
            const float r = 1.0f / sqrtf(var / C + m->eps);
            for (int i = 0; i < C; i++) ob[i] = (xb[i] - mean) * r * w[i] + bias[i];
        }
    }
}

enum { STORE, ADD, SWIGLU }; /* what matvec does with each sum */

/* e^x for x <= 0, vectorizable (libm's expf is not, without -ffast-math): x = n ln2 + r with
 * |r| <= ln2 / 2, e^r by its Taylor series to r^7 (error < 1e-8), 2^n put in the exponent. */
static inline float exp_nonpositive(float x) {
    x = x >= -87.0f ? x : -87.0f; /* e^-87 is 1.6e-38, about the smallest normal float; also
                                      * maps NaN to a number, so the int conversion below is defined */
    const float n = rintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-6f; /* ln2 in two parts */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    return p * two_n.f;
}

/* The exact (erf) GELU that F.gelu computes: 0.5 v (1 + erf(v / sqrt 2)). With z = |v| / sqrt 2,
 * 1 - erf(z) = tail(z) e^(-z^2) by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7),
 * so 1 + erf = 2 - tail e^(-z^2) for v >= 0 and tail e^(-z^2) for v < 0 (no cancellation in
 * the negative tail). Built from multiplies and one exponential, a loop over it vectorizes. */
static inline float gelu(float v) {
    const float z = fabsf(v) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float tail = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const float below = tail * exp_nonpositive(-z * z); /* 1 - erf(z) */
    return 0.5f * v * (v >= 0.0f ? 2.0f - below : below);
}

/* y = W x + bias, stored (STORE), added into y (ADD: the residual stream), or SwiGLU's
 * silu(gate . x) * (up . x) with v the gate's sum and u the up's. */
static inline float finish(float v, float u, float bias, int op, float y) {
    v += bias;
    return op == ADD ? y + v : op == SWIGLU ? v / (1.0f + expf(-v)) * u : v;
}

/* Four sums of rows w0..w3 (T: float, int8_t or uint16_t bf16 bits, widened by CVT) with x.
 * Four independent sums keep more loads in flight, and x is read once for all four. */
#define DOT4(T, CVT)                                                                       \
    static inline void dot4_##T(const T *w0, int in, const float *restrict x, float acc[4]) { \
        const T *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;                               \
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                  \
        _Pragma("omp simd reduction(+ : a0, a1, a2, a3)")                                  \
        for (int i = 0; i < in; i++) {                                                     \
            a0 += CVT(w0[i]) * x[i];                                                       \
            a1 += CVT(w1[i]) * x[i];                                                       \
            a2 += CVT(w2[i]) * x[i];                                                       \
            a3 += CVT(w3[i]) * x[i];                                                       \
        }                                                                                  \
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;                                \
    }
#define AS_FLOAT(v) ((float)(v))

/* Quantized rows, widened in registers: compilers vectorize the loops above for int8 and bf16
 * with two-step widenings and extracts, about a third of the speed of one sign-extending load
 * per vector. So with AVX-512 or AVX2 (+FMA) these spell it out; the compiler's -march=native
 * decides which; other CPUs get the portable loops above, slower but still faster than float32. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define VW 16
typedef __m512 vf;
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
static inline void v_store(float *p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_int8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline vf v_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define VW 8
typedef __m256 vf;
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float v_sum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline void v_store(float *p, vf a) { _mm256_storeu_ps(p, a); }
static inline vf v_int8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline vf v_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#endif

#ifdef VW
/* The rows are read once per step from memory (L3 or DRAM): asking for the next group of four
 * rows while this one is summed keeps the loads from waiting (about 15% faster for int8 here). */
#define PREFETCH_NEXT_ROWS(T, w0, in, i)                                                   \
    for (int p = 0; p < 4 * VW * (int)sizeof(T); p += 64)                                  \
        _mm_prefetch((const char *)((w0) + 4 * (int64_t)(in)) + 4 * (int64_t)(i) * sizeof(T) + p, _MM_HINT_T0)
#define DOT4_SIMD(T, WIDEN, CVT)                                                           \
    static inline void dot4_##T(const T *w0, int in, const float *restrict x, float acc[4]) { \
        const T *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;                               \
        vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();                     \
        int i = 0;                                                                         \
        for (; i + VW <= in; i += VW) {                                                    \
            PREFETCH_NEXT_ROWS(T, w0, in, i);                                              \
            const vf xv = v_load(x + i);                                                   \
            a0 = v_fma(WIDEN(w0 + i), xv, a0);                                             \
            a1 = v_fma(WIDEN(w1 + i), xv, a1);                                             \
            a2 = v_fma(WIDEN(w2 + i), xv, a2);                                             \
            a3 = v_fma(WIDEN(w3 + i), xv, a3);                                             \
        }                                                                                  \
        acc[0] = v_sum(a0), acc[1] = v_sum(a1), acc[2] = v_sum(a2), acc[3] = v_sum(a3);    \
        for (; i < in; i++) {                                                              \
            acc[0] += CVT(w0[i]) * x[i];                                                   \
            acc[1] += CVT(w1[i]) * x[i];                                                   \
            acc[2] += CVT(w2[i]) * x[i];                                                   \
            acc[3] += CVT(w3[i]) * x[i];                                                   \
        }                                                                                  \
    }
/* float32 rows too, so that every row's sum is made in one order, lane by lane then across
 * the lanes, whether the batch is summed four rows at a time (dot4x4) or one: a sequence's
 * logits do not depend on what else is in the batch (docs/generation.md). */
DOT4_SIMD(float, v_load, AS_FLOAT)
DOT4_SIMD(int8_t, v_int8, AS_FLOAT)
DOT4_SIMD(uint16_t, v_bf16, bf16_to_float)

/* Four float32 rows w0.. (`in` apart) with four inputs x0.. (`in` apart): acc[j][r] = row r . x_j.
 * Sixteen sums at once: each loaded vector feeds four multiply-adds, so for batches the loop
 * is bound by the multiply-adds, not by the loads. */
static inline void dot4x4(const float *w0, int in, const float *x0, float acc[4][4]) {
    vf a[4][4];
    for (int j = 0; j < 4; j++)
        for (int r = 0; r < 4; r++) a[j][r] = v_zero();
    int i = 0;
    for (; i + VW <= in; i += VW) {
        const vf w[4] = {v_load(w0 + i), v_load(w0 + in + i), v_load(w0 + 2 * in + i), v_load(w0 + 3 * in + i)};
        for (int j = 0; j < 4; j++) {
            const vf xv = v_load(x0 + (int64_t)j * in + i);
            for (int r = 0; r < 4; r++) a[j][r] = v_fma(w[r], xv, a[j][r]);
        }
    }
    for (int j = 0; j < 4; j++)
        for (int r = 0; r < 4; r++) {
            acc[j][r] = v_sum(a[j][r]);
            for (int k = i; k < in; k++) acc[j][r] += w0[(int64_t)r * in + k] * x0[(int64_t)j * in + k];
        }
}
#else
DOT4(float, AS_FLOAT)
DOT4(int8_t, AS_FLOAT)
DOT4(uint16_t, bf16_to_float)
#endif

/* Row `o` of W (`in` columns) as float32 into `out`, unscaled (an int8 row's scale is applied to its sums). */
static inline void widen_row(const Model *m, const Mat *W, int64_t o, int in, float *restrict out) {
    int i = 0;
    if (m->wtype == I8) {
        const int8_t *w = (const int8_t *)W->w + o * in;
#ifdef VW
        for (; i + VW <= in; i += VW) v_store(out + i, v_int8(w + i));
#endif
        for (; i < in; i++) out[i] = (float)w[i];
    } else if (m->wtype == BF16) {
        const uint16_t *w = (const uint16_t *)W->w + o * in;
#ifdef VW
        for (; i + VW <= in; i += VW) v_store(out + i, v_bf16(w + i));
#endif
        for (; i < in; i++) out[i] = bf16_to_float(w[i]);
    } else {
        memcpy(out, (const float *)W->w + o * in, sizeof(float) * in);
    }
}

/* Sums of W's rows o..o+3 with x, reading the stored type directly (batch 1). */
static inline void dot4_stored(const Model *m, const Mat *W, int64_t o, int in, const float *x, float acc[4]) {
    if (m->wtype == I8) dot4_int8_t((const int8_t *)W->w + o * in, in, x, acc);
    else if (m->wtype == BF16) dot4_uint16_t((const uint16_t *)W->w + o * in, in, x, acc);
    else dot4_float((const float *)W->w + o * in, in, x, acc);
}

/* Rows o..o+3 of W as float32 in `tile` (4 x in floats); the tile. */
static inline const float *widen4(const Model *m, const Mat *W, int64_t o, int in, float *tile) {
    for (int r = 0; r < 4; r++) widen_row(m, W, o + r, in, tile + (int64_t)r * in);
    return tile;
}

/* acc[r] = (row o + r of W) . x, scaled, for r < 4: from the stored rows, or from `tile`
 * (widen4 of them) when it is not NULL. */
static inline void sums4(const Model *m, const Mat *W, int64_t o, int in, const float *x, const float *tile,
                         float acc[4]) {
    if (tile) dot4_float(tile, in, x, acc);
    else dot4_stored(m, W, o, in, x, acc);
    for (int r = 0; r < 4; r++) acc[r] *= row_scale(W, o + r);
}

/* y[b, o] (op)= W[o] . x[b] + bias[o] for the rows o this thread gets; with op SWIGLU, y[b, o] =
 * silu(W[o] . x[b]) * (W2[o] . x[b]). Must be called by every thread of the team (an `omp for`,
 * with its barrier at the end). Four rows at a time; quantized rows are widened once into this
 * thread's tile when B > 1. */
static void matvec(const Model *m, const Mat *W, const Mat *W2, const float *bias, const float *x, int in,
                   float *y, int out, int B, int op, float *tiles) {
    float *tile = tiles + omp_get_thread_num() * tile_floats(m);
    const int widen = m->wtype != F32 && B > 1;
#pragma omp for schedule(static) nowait /* the loop below has the barrier */
    for (int o4 = 0; o4 < out / 4; o4++) {
        const int o = 4 * o4;
        const float *t = widen ? widen4(m, W, o, in, tile) : NULL;
        const float *t2 = widen && W2 ? widen4(m, W2, o, in, tile + 4 * (int64_t)in) : NULL;
        int b = 0;
#ifdef VW
        if (B >= 4) { /* float32 rows: the tile, or the weights themselves */
            const float *r1 = t ? t : (const float *)W->w + (int64_t)o * in;
            const float *r2 = !W2 ? NULL : t2 ? t2 : (const float *)W2->w + (int64_t)o * in;
            for (; b + 4 <= B; b += 4) {
                float acc[4][4], acc2[4][4] = {{0.0f}};
                dot4x4(r1, in, x + (int64_t)b * in, acc);
                if (r2) dot4x4(r2, in, x + (int64_t)b * in, acc2);
                for (int j = 0; j < 4; j++) {
                    float *dst = y + (int64_t)(b + j) * out + o;
                    for (int r = 0; r < 4; r++)
                        dst[r] = finish(acc[j][r] * row_scale(W, o + r), acc2[j][r] * (W2 ? row_scale(W2, o + r) : 0.0f),
                                        bias ? bias[o + r] : 0.0f, op, dst[r]);
                }
            }
        }
#endif
        for (; b < B; b++) {
            const float *xb = x + (int64_t)b * in;
            float *dst = y + (int64_t)b * out + o, acc[4], acc2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            sums4(m, W, o, in, xb, t, acc);
            if (W2) sums4(m, W2, o, in, xb, t2, acc2);
            for (int r = 0; r < 4; r++) dst[r] = finish(acc[r], acc2[r], bias ? bias[o + r] : 0.0f, op, dst[r]);
        }
    }
    /* the last out % 4 rows, if any */
#pragma omp for schedule(static)
    for (int o = out - out % 4; o < out; o++) {
        widen_row(m, W, o, in, tile);
        if (W2) widen_row(m, W2, o, in, tile + in);
        for (int b = 0; b < B; b++) {
            const float *xb = x + (int64_t)b * in;
            float *dst = y + (int64_t)b * out + o;
            const float u = W2 ? dot(tile + in, xb, in) * row_scale(W2, o) : 0.0f;
            *dst = finish(dot(tile, xb, in) * row_scale(W, o), u, bias ? bias[o] : 0.0f, op, *dst);
        }
    }
}

/* Rotate pairs (v[i], v[i + d/2]) by the angles of position `pos` (model.py's apply_rope). */
static void rope(const Model *m, float *v, int pos, int d) {
    const float *c = m->rope_cos + (int64_t)pos * d, *s = m->rope_sin + (int64_t)pos * d;
    const int half = d / 2;
    for (int i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
    }
}

/* One token per row. Row b lives in row slot[b] of every layer's cache (slot NULL: row b),
 * which holds length[b] filled slots, the first pad[b] of them padding (pad NULL: none); its
 * new token tokens[b] sits at position length[b] - pad[b]. Writes the new keys/values into
 * slot length[b] of that cache row and the logits (B, vocab). `cache_rows`: how many rows
 * the cache buffers have. Returns non-zero, touching nothing, for input out of range. */
int bslm_decode_step(const Model *m, int32_t B, const int64_t *length, const int64_t *pad,
                     const int64_t *slot, int32_t cache_rows, const int64_t *tokens,
                     float *const *k_cache, float *const *v_cache, float *logits, float *scratch,
                     int32_t threads) {
    const int C = m->n_embd, H = m->n_head, d = C / H, S = m->block, F = m->hidden;
    if (B < 1 || threads < 1) return 1;
    for (int b = 0; b < B; b++) {
        if (length[b] < 0 || length[b] >= S || (pad && (pad[b] < 0 || pad[b] > length[b]))) return 1;
        if (tokens[b] < 0 || tokens[b] >= m->vocab) return 2;
        if ((slot ? slot[b] : b) < 0 || (slot ? slot[b] : b) >= cache_rows) return 3;
        for (int a = 0; slot && a < b; a++)
            if (slot[a] == slot[b]) return 3; /* two rows writing one cache row */
    }
    float *x = scratch, *xn = x + (int64_t)B * C, *qkv = xn + (int64_t)B * C;
    float *att = qkv + (int64_t)B * 3 * C, *h = att + (int64_t)B * C, *scores = h + (int64_t)B * F;
    float *tiles = scores + (int64_t)B * H * S;
    const float scale = 1.0f / sqrtf((float)d);

#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            const int pos = (int)length[b] - (pad ? (int)pad[b] : 0);
            float *xb = x + (int64_t)b * C;
            const float s = row_scale(&m->tok_emb, tokens[b]);
            widen_row(m, &m->tok_emb, tokens[b], C, xb);
            for (int i = 0; i < C; i++) xb[i] = xb[i] * s + (m->pos_emb ? m->pos_emb[(int64_t)pos * C + i] : 0.0f);
        }
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *L = &m->layers[l];
#pragma omp single
            norm_rows(m, L->norm1_w, L->norm1_b, x, xn, B);
            matvec(m, &L->qkv, NULL, L->qkv_b, xn, C, qkv, 3 * C, B, STORE, tiles);

            /* Attention, one (row, head) pair per iteration: the new key/value go into the
             * cache first, then the query attends to the row's real slots pad..length. */
#pragma omp for schedule(static)
            for (int bh = 0; bh < B * H; bh++) {
                const int b = bh / H, hd = bh % H, first = pad ? (int)pad[b] : 0, len = (int)length[b];
                float *q = qkv + (int64_t)b * 3 * C + hd * d, *k = q + C, *v = q + 2 * C;
                if (m->modern) {
                    rope(m, q, len - first, d);
                    rope(m, k, len - first, d);
                }
                const int64_t row = ((slot ? slot[b] : b) * H + hd) * (int64_t)S * d;
                float *kc = k_cache[l] + row, *vc = v_cache[l] + row;
                for (int i = 0; i < d; i++) {
                    kc[(int64_t)len * d + i] = k[i];
                    vc[(int64_t)len * d + i] = v[i];
                }
                float *sc = scores + (int64_t)bh * S, best = -INFINITY, total = 0.0f;
                for (int j = first; j <= len; j++) {
                    sc[j] = dot(q, kc + (int64_t)j * d, d) * scale;
                    best = sc[j] > best ? sc[j] : best;
                }
#pragma omp simd reduction(+ : total)
                for (int j = first; j <= len; j++) {
                    sc[j] = exp_nonpositive(sc[j] - best);
                    total += sc[j];
                }
                float *y = att + (int64_t)b * C + hd * d;
                for (int i = 0; i < d; i++) y[i] = 0.0f;
                for (int j = first; j <= len; j++) {
                    const float p = sc[j] / total, *vj = vc + (int64_t)j * d;
#pragma omp simd
                    for (int i = 0; i < d; i++) y[i] += p * vj[i];
                }
            }
            matvec(m, &L->proj, NULL, L->proj_b, att, C, x, C, B, ADD, tiles);
#pragma omp single
            norm_rows(m, L->norm2_w, L->norm2_b, x, xn, B);
            if (m->modern)
                matvec(m, &L->gate, &L->up, NULL, xn, C, h, F, B, SWIGLU, tiles);
            else {
                matvec(m, &L->up, NULL, L->up_b, xn, C, h, F, B, STORE, tiles);
#pragma omp for simd schedule(static)
                for (int64_t i = 0; i < (int64_t)B * F; i++) h[i] = gelu(h[i]);
            }
            matvec(m, &L->down, NULL, L->down_b, h, F, x, C, B, ADD, tiles);
        }
#pragma omp single
        norm_rows(m, m->normf_w, m->normf_b, x, xn, B);
        matvec(m, &m->head, NULL, NULL, xn, C, logits, m->vocab, B, STORE, tiles);
    }
    return 0;
}

/* out[i] = gelu(x[i]): the kernel's GELU on its own, for the tests. */
void bslm_gelu(const float *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gelu(x[i]);
}
