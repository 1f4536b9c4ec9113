// Fused time loops for the LSTM, GRU and Elman RNN cells: bptt's `backend="native"`.
//
// The same loops as bptt/kernels (numba) and bptt/cells (the NumPy reference), with the same
// buffers and tape layouts; what is different is how a step runs. Each step's small product
// with W_hh is a register-blocked GEMM over a copy of W_hh packed once per call (so it is not
// repacked at every step, as a BLAS call would), and the gate arithmetic runs in that GEMM's
// epilogue while the tile is still in registers:
//
//   forward:  the tile is MR batch rows x one block of L hidden units x all G gates, so the
//             epilogue has every gate of those units and writes h, c and the activations.
//   backward: the tile is MR rows x L units of dL/dh_{t-1}; its epilogue computes step t-1's
//             gate gradients for the same units (the elementwise part of that step).
//
// Blocks of hidden units are split over OpenMP threads, with one barrier per step. Every
// function works for float (L = 16) and double (L = 8); float uses a rational tanh (Eigen's
// ptanh_float, a few ulp), double calls libm so that it equals the reference to rounding.
//
// The functions are plain C symbols, called through ctypes from bptt/native/*.py, which own all
// the checks. The module init exists only so that setuptools can build this as an extension.

#include <Python.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#define AI inline __attribute__((always_inline))

namespace {

template <class R> struct VT;
template <> struct VT<float> {
    typedef float V __attribute__((vector_size(64)));
    enum { L = 16 };
};
template <> struct VT<double> {
    typedef double V __attribute__((vector_size(64)));
    enum { L = 8 };
};

// ---- vector helpers: n < L lanes for the last, partial block of hidden units ----------------

#ifdef __AVX512F__
// masked loads and stores: no branch, no call (the last block may hold n < L units)
template <class V> AI V ldn(const float *p, int n) {
    return (V)_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
}
template <class V> AI V ldn(const double *p, int n) {
    return (V)_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p);
}
AI void stn(float *p, VT<float>::V v, int n) {
    _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), (__m512)v);
}
AI void stn(double *p, VT<double>::V v, int n) {
    _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), (__m512d)v);
}
#else
template <class V, class R> AI V ldn(const R *p, int n) {
    V v;
    if (n == int(sizeof(V) / sizeof(R))) {
        std::memcpy(&v, p, sizeof v);
    } else {
        v = V{};
        for (int l = 0; l < n; l++) v[l] = p[l];
    }
    return v;
}

template <class V, class R> AI void stn(R *p, V v, int n) {
    if (n == int(sizeof(V) / sizeof(R))) {
        std::memcpy(p, &v, sizeof v);
    } else {
        for (int l = 0; l < n; l++) p[l] = v[l];
    }
}
#endif

template <class V, class R> AI V splat(R s) { return V{} + s; }

// A broadcast straight from memory: one load uop, where V{} + *p costs a load and a shuffle
// (on the port that also runs the second 512-bit FMA).
AI VT<float>::V bcast(const float *p) {
#ifdef __AVX512F__
    return (VT<float>::V)_mm512_set1_ps(*p);
#else
    return splat<VT<float>::V>(*p);
#endif
}
AI VT<double>::V bcast(const double *p) {
#ifdef __AVX512F__
    return (VT<double>::V)_mm512_set1_pd(*p);
#else
    return splat<VT<double>::V>(*p);
#endif
}

// a / b; for float with AVX-512 a 14-bit reciprocal and one Newton step (about 2 ulp), which
// issues every cycle where a division takes ten.
AI VT<float>::V vdiv(VT<float>::V a, VT<float>::V b) {
#ifdef __AVX512F__
    VT<float>::V r = (VT<float>::V)_mm512_rcp14_ps((__m512)b);
    r = r * (2.0f - b * r);
    return a * r;
#else
    return a / b;
#endif
}
AI VT<double>::V vdiv(VT<double>::V a, VT<double>::V b) { return a / b; }

AI VT<float>::V vtanh(VT<float>::V x) {
    typedef VT<float>::V V;
    const float clamp = 7.90531110763549805f;  // beyond it tanh rounds to +-1 in float32
    x = x < -clamp ? splat<V>(-clamp) : x;
    x = x > clamp ? splat<V>(clamp) : x;
    V x2 = x * x;
    V p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = x2 * p + -8.60467152213735e-11f;
    p = x2 * p + 5.12229709037114e-08f;
    p = x2 * p + 1.48572235717979e-05f;
    p = x2 * p + 6.37261928875436e-04f;
    p = x2 * p + 4.89352455891786e-03f;
    V q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = x2 * q + 2.26843463243900e-03f;
    q = x2 * q + 4.89352518554385e-03f;
    return vdiv(x * p, q);
}

AI VT<double>::V vtanh(VT<double>::V x) {
    for (int l = 0; l < 8; l++) x[l] = std::tanh(x[l]);
    return x;
}

template <class V> AI V sigmoid_half(V a) { return vtanh(a) * 0.5 + 0.5; }  // sigma(2a)

template <class V, class R> AI V clamp(V v, R c) {
    v = v < -c ? splat<V>(-c) : v;
    return v > c ? splat<V>(c) : v;
}

// ---- the GEMM tile ---------------------------------------------------------------------------

// acc[r][v] += sum_k A[r * lda + k] P[k][v] for r < MR, v < NP; with LAST_APART the last
// vector v = NP - 1 goes to acc[r][NP] instead (the GRU's n gate, see tile).
template <class R, int MR, int NP, int NACC, bool LAST_APART>
AI void accumulate(int K, const R *A, long lda, const R *P,
                   typename VT<R>::V (&acc)[MR][NACC]) {
    typedef typename VT<R>::V V;
    const int L = VT<R>::L;
    for (int k = 0; k < K; k++) {
        V w[NP];
#pragma GCC unroll 4
        for (int v = 0; v < NP; v++) std::memcpy(&w[v], P + (long(k) * NP + v) * L, sizeof(V));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            V a = bcast(A + r * lda + k);
#pragma GCC unroll 4
            for (int v = 0; v < NP; v++) acc[r][LAST_APART && v == NP - 1 ? NP : v] += a * w[v];
        }
    }
}

// acc[r][v] = sum_k A1[r * lda1 + k] P[k][v] + sum_k A2[r * lda2 + k] P[K1 + k][v], r < MR:
// P holds (K1 + K2) rows of NP vectors of L. With SPLIT (the GRU's n gate, whose input and
// recurrent parts stay apart), the last vector of a row goes to acc[r][NP - 1] in the first
// sum and to acc[r][NP] in the second; otherwise acc has NP vectors a row.
template <class R, int MR, int NP, bool SPLIT = false>
AI void tile(int K1, const R *A1, long lda1, int K2, const R *A2, long lda2, const R *P,
             typename VT<R>::V (&acc)[MR][NP + SPLIT]) {
    typedef typename VT<R>::V V;
    const int L = VT<R>::L;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 5
        for (int v = 0; v < NP + SPLIT; v++) acc[r][v] = V{};
    accumulate<R, MR, NP, NP + SPLIT, false>(K1, A1, lda1, P, acc);
    accumulate<R, MR, NP, NP + SPLIT, SPLIT>(K2, A2, lda2, P + long(K1) * NP * L, acc);
}

// ---- buffers for the packed weights ------------------------------------------------------------

// The packed weights (0.1 to 8 MB) are made on every call. Fresh from malloc, a buffer that size
// is new mmapped memory, which the kernel zeroes page by page on its first write: 512 page
// faults (about 1 ms) for the 2 MB of an LSTM at D = H = 256, every forward and every backward.
// The pool keeps the last few freed buffers for the next calls instead (any thread; a call takes
// the smallest that fits).
class Pool {  // sizes: multiples of 64 bytes (aligned_alloc's rule for 64-byte alignment)
    static constexpr int KEEP = 4;
    std::mutex m_;
    void *buf_[KEEP] = {};
    size_t size_[KEEP] = {};
    int n_ = 0;

  public:
    void *get(size_t bytes) {
        {
            std::lock_guard<std::mutex> lock(m_);
            int best = -1;
            for (int i = 0; i < n_; i++)
                if (size_[i] >= bytes && (best < 0 || size_[i] < size_[best])) best = i;
            if (best >= 0) {
                void *p = buf_[best];
                n_--;
                buf_[best] = buf_[n_], size_[best] = size_[n_];
                return p;
            }
        }
        return std::aligned_alloc(64, bytes);
    }
    // bytes: the size get was asked for
    void put(void *p, size_t bytes) {
        if (!p) return;
        std::lock_guard<std::mutex> lock(m_);
        if (n_ == KEEP) {  // make room: drop the smallest
            int small = 0;
            for (int i = 1; i < n_; i++)
                if (size_[i] < size_[small]) small = i;
            if (size_[small] > bytes) {
                std::free(p);
                return;
            }
            std::free(buf_[small]);
            n_--;
            buf_[small] = buf_[n_], size_[small] = size_[n_];
        }
        buf_[n_] = p, size_[n_] = bytes, n_++;
    }
    void clear() {
        std::lock_guard<std::mutex> lock(m_);
        for (int i = 0; i < n_; i++) std::free(buf_[i]);
        n_ = 0;
    }
};
Pool pool;

// A buffer of the pool for one call: p (NULL if out of memory), given back when it goes.
template <class R> struct Packed {
    size_t bytes;
    R *p;
    explicit Packed(size_t n) : bytes((n + 63) / 64 * 64), p(static_cast<R *>(pool.get(bytes))) {}
    ~Packed() { pool.put(p, bytes); }
    Packed(const Packed &) = delete;
    Packed &operator=(const Packed &) = delete;
};

// The forward's weights, packed: P[jb][k][q][L] = s_q [W_ih^T; W_hh^T][k, q * H + jb * L + l],
// k < D + H (zero past H): the input and the recurrent product of a step in one pass. Wx (G*H,
// D) and Wh (G*H, H) come in the cell's gate order, as the tape keeps them; s_q = 1/2 for the
// first nhalf gates (the sigmoid gates' rows halved, exactly, see bptt.cells.gates), else 1.
// Packed<R>(forward_bytes) holds the buffer; pack_forward fills blocks jb0 .. jb1-1 (each thread
// packs the blocks it multiplies by, see run_steps).
template <class R> size_t forward_bytes(int D, int H, int G) {
    const int L = VT<R>::L, nb = (H + L - 1) / L;
    return sizeof(R) * size_t(nb) * (D + H) * G * L;
}

#ifdef __AVX512F__
// out[k * stride + l] = s * W[l * ld + k] for l < L (L whole rows of W) and k < K: L rows turned
// into K vectors, one gather each (the rows stay in L1/L2 across the K gathers).
AI void rows_to_vectors(float *out, long stride, const float *W, long ld, int K, float s) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(int(ld)));
    const __m512 vs = _mm512_set1_ps(s);
    for (int k = 0; k < K; k++)
        _mm512_storeu_ps(out + k * stride, _mm512_mul_ps(_mm512_i32gather_ps(idx, W + k, 4), vs));
}
AI void rows_to_vectors(double *out, long stride, const double *W, long ld, int K, double s) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(int(ld)));
    const __m512d vs = _mm512_set1_pd(s);
    for (int k = 0; k < K; k++)
        _mm512_storeu_pd(out + k * stride, _mm512_mul_pd(_mm512_i32gather_pd(idx, W + k, 8), vs));
}
#endif

template <class R>
void pack_forward(R *p, const R *Wx, int D, const R *Wh, int H, int G, int nhalf, int jb0,
                  int jb1) {
    const int L = VT<R>::L, K = D + H, KB = 16;
    for (int jb = jb0; jb < jb1; jb++) {
        R *pj = p + long(jb) * K * G * L;
        const int n = std::min(L, H - jb * L);
#ifdef __AVX512F__
        // a whole block: each gate's L rows of W_ih and W_hh gathered into vectors of L units
        // (a scalar copy read W column by column, one float per cache line: 1-4 ms a call)
        if (n == L && long(L - 1) * std::max(D, H) < (1L << 31) / long(sizeof(R))) {
            for (int q = 0; q < G; q++) {
                const R s = q < nhalf ? R(0.5) : R(1);
                const long j = long(q) * H + long(jb) * L;  // the block's first row of W
                rows_to_vectors(pj + q * L, long(G) * L, Wx + j * D, D, D, s);
                rows_to_vectors(pj + long(D) * G * L + q * L, long(G) * L, Wh + j * H, H, H, s);
            }
            continue;
        }
#endif
        // in blocks of KB columns of W, so that both the rows read and the panel rows written
        // stay in L1
        for (int k0 = 0; k0 < K; k0 += KB) {
            const int k1 = std::min(K, k0 + KB);
            for (int q = 0; q < G; q++) {
                const R s = q < nhalf ? R(0.5) : R(1);
                for (int l = 0; l < L; l++) {
                    const long j = long(q) * H + jb * L + l;  // the row of W
                    R *out = pj + long(q) * L + l;
                    for (int k = k0; k < k1; k++)
                        out[long(k) * G * L] = l >= n ? R(0)
                                               : k < D ? Wx[j * D + k] * s
                                                       : Wh[j * H + (k - D)] * s;
                }
            }
        }
    }
}

// The panels of a unit loop (unit_steps): the nvec vectors of L units (ceil(H / L)) split
// evenly between nt threads, and each thread's share cut in panels of 3 vectors, the widest
// tile of 8 rows that keeps its 24 accumulators and 3 weight vectors in the 32 registers: at
// (B, K) = (128, 512) it ran at 166-171 GFLOP/s on one core against 130-139 for panels of 2.
// A share that 3 does not divide ends in one panel of 2, or two (n = 3q + 1, q > 0), or is one
// vector. Panel p is vectors v0[p] .. v0[p] + w[p] - 1; thread t's panels are bound[t] ..
// bound[t+1] - 1.
struct Panels {
    std::vector<int> v0, w, bound;
    Panels(int nvec, int nt) {
        bound.push_back(0);
        for (int t = 0; t < nt; t++) {
            int a = int(long(nvec) * t / nt), n = int(long(nvec) * (t + 1) / nt) - a;
            int tail[2] = {n % 3, 0};                         // 3q, 3q + 2, or 1
            if (n % 3 == 1 && n > 1) tail[0] = tail[1] = 2;   // 3q + 1 = 3(q - 1) + 2 + 2
            for (int q = 0; q < (n - tail[0] - tail[1]) / 3; q++) add(a, 3);
            for (int x : tail)
                if (x) add(a, x);
            bound.push_back(int(v0.size()));
        }
    }
    void add(int &a, int width) { v0.push_back(a), w.push_back(width), a += width; }
    int size() const { return int(v0.size()); }
};

// A (K + K2, H) matrix, W's K rows then W2's K2, packed by panels (Panels): panel p's rows of
// w[p] vectors at P + v0[p] * (K + K2) * L, P[k][v][l] = [W; W2][k, j],
// j = (v0[p] + v) * L + l (zero past H). The backward's W_hh (K = G * H, no W2); the RNN's
// [W_ih^T; W_hh^T]. Packed<R>(units_bytes) holds the buffer, pack_units fills panels
// p0 .. p1-1.
template <class R> size_t units_bytes(int H, int K) {
    const int L = VT<R>::L, nvec = (H + L - 1) / L;
    return sizeof(R) * size_t(nvec) * K * L;
}

template <class R>
void pack_units(R *P, const R *W, int H, int K, const R *W2, int K2, const Panels &pn, int p0,
                int p1) {
    const int L = VT<R>::L, KK = K + K2;
    for (int p = p0; p < p1; p++) {
        const int v0 = pn.v0[p], w = pn.w[p];
        R *out = P + long(v0) * KK * L;
        for (int k = 0; k < KK; k++) {
            const R *row = k < K ? W + long(k) * H : W2 + long(k - K) * H;
            for (int v = 0; v < w; v++)
                for (int l = 0; l < L; l++) {
                    int j = (v0 + v) * L + l;
                    out[(long(k) * w + v) * L + l] = j < H ? row[j] : R(0);
                }
        }
    }
}

// p[0 .. n) += v: a bias gradient's running sum over rows and steps (NULL: not wanted). Each
// thread owns its blocks of units, so the sums need no atomics.
template <class V, class R> AI void add_to(R *p, V v, int n) {
    if (p) stn(p, ldn<V>(p, n) + v, n);
}

// Asks for the cache lines of p[0 .. n) ahead of their use: to read, or to write (prefetchw).
// The elementwise parts of the loops read and write a row's few lines 4 H bytes and more apart,
// a pattern the hardware's prefetchers do not foresee: in a profile of the RNN's backward loop
// at (100, 128, 512), one thread, a quarter of the samples sat on the loads of dy and h. So
// each tile asks first for the lines that the next row block's elementwise part will use.
// (Inline asm: GCC 12 dropped __builtin_prefetch from these loops.)
template <bool WRITE> AI void fetch_line(const char *c) {
#if defined(__x86_64__) || defined(__i386__)
    if (WRITE) asm volatile("prefetchw %0" : : "m"(*c));
    else asm volatile("prefetcht0 %0" : : "m"(*c));
#else
    __builtin_prefetch(c, WRITE, 3);
#endif
}

template <bool WRITE = false, class R> AI void fetch(const R *p, int n) {
    const char *c = reinterpret_cast<const char *>(p);
    const long bytes = long(n) * sizeof(R);
    for (long o = 0; o < bytes; o += 64) fetch_line<WRITE>(c + o);
    fetch_line<WRITE>(c + bytes - 1);
}

// ---- the time loop driver --------------------------------------------------------------------

// float32 messages that vanish down a long sequence become subnormal numbers, which the FPU
// handles in microcode (2-5x slower steps). For float the loops run with flush-to-zero and
// denormals-are-zero (results below 1.2e-38 in magnitude read as 0); MXCSR is per thread, so
// each thread sets it and puts it back. float64 keeps IEEE behaviour (the reference checks).
template <class R> struct FlushSubnormals {
    FlushSubnormals() {}
};
#ifdef __SSE2__
template <> struct FlushSubnormals<float> {
    unsigned saved;
    FlushSubnormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
    ~FlushSubnormals() { _mm_setcsr(saved); }
};
#endif

// Calls init(lo, hi) once, then step(s, lo, hi, r0, r1) for s = 0 .. nsteps-1, over nt threads
// (nt = 1: no OpenMP). init packs blocks lo .. hi-1 of the weights, this thread's share of the
// nb blocks of units: an even share, or bound[t] .. bound[t+1] - 1 for thread t (bound: nt + 1
// values; should OpenMP give fewer threads than nt, each takes whole neighbouring shares). The
// steps are split one of two ways:
//   by units (by_rows false): [lo, hi) as init's, all rows [0, B), a barrier between steps,
//     since every row of a step reads every unit of the one before; no barrier after init,
//     since a thread reads no other thread's blocks;
//   by rows (by_rows true): all units [0, nb), this thread's rows [r0, r1) (an even share of
//     the B rows), and no barrier between steps at all: a row's recurrence reads only its own
//     row.
//     One barrier after init, since every thread reads every block.
template <class R, class I, class F>
void run_steps(int nsteps, int nb, int nt, int B, bool by_rows, I init, F step,
               const int *bound = nullptr) {
    if (nt <= 1) {
        FlushSubnormals<R> flush;
        init(0, nb);
        for (int s = 0; s < nsteps; s++) step(s, 0, nb, 0, B);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
        FlushSubnormals<R> flush;
        int tid = omp_get_thread_num(), n = omp_get_num_threads();
        int lo = int(long(nb) * tid / n), hi = int(long(nb) * (tid + 1) / n);
        if (bound) lo = bound[long(nt) * tid / n], hi = bound[long(nt) * (tid + 1) / n];
        init(lo, hi);
        if (by_rows) {
            const int r0 = int(long(B) * tid / n), r1 = int(long(B) * (tid + 1) / n);
#pragma omp barrier
            for (int s = 0; s < nsteps; s++) step(s, 0, nb, r0, r1);
        } else {
            for (int s = 0; s < nsteps; s++) {
#pragma omp barrier
                step(s, lo, hi, 0, B);
            }
        }
    }
#else
    FlushSubnormals<R> flush;
    init(0, nb);
    for (int s = 0; s < nsteps; s++) step(s, 0, nb, 0, B);
#endif
}

// Whether a loop splits its threads by rows rather than by units (run_steps): where each thread
// has at least a block of MR rows and every thread can keep all the packed weights
// (`packed` bytes) in its L2 cache. Small steps then lose no time to a barrier and to moving
// the other core's half of h_t at every step: at (T, B, H) = (100, 32, 128) a training step
// took 13-21% less (LSTM, GRU, RNN); at (1000, 16, 64), with one block a thread (sixth
// session; two before), an LSTM training step about a third less. split_mode (set_split) 1 or
// 2 forces rows or units.
int split_mode = 0;
bool split_by_rows(int B, int MR, int nt, size_t packed) {
    if (nt <= 1) return false;
    if (split_mode == 1) return B >= nt;
    if (split_mode == 2) return false;
    return B >= MR * nt && packed <= (size_t(1) << 20);
}

int threads_for(long work, int nb, long min_work) {
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    if (work < min_work) nt = 1;
    return std::max(1, std::min(nt, nb));
}

// Calls blk<MR>(b0) for full row blocks and blk<rem> for the rest, rows r0 .. r1-1.
#define ROWS_CASE(n) case n: blk.template operator()<n>(b0); break;
template <int MR, class F> AI void rows(int r0, int r1, F &&blk) {
    int b0 = r0;
    for (; b0 + MR <= r1; b0 += MR) blk.template operator()<MR>(b0);
    switch (r1 - b0) {
        case 0: break;
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(5) ROWS_CASE(6) ROWS_CASE(7)
        default: break;
    }
}

// The forward of a gated cell: every step, for each row block and block of L units, the tile
// [x_t, h_t][rows] @ P (all gates of those units; NACC accumulators a row, see tile) and
// epi(t, b, j0, n, acc[r]) on each of its rows. pack(lo, hi) packs blocks lo .. hi-1 of P first.
// The threads split the units or, for small steps, the rows (split_by_rows, run_steps).
template <class R, int G, int MR, bool SPLIT = false, class Pack, class Epi, class Pre>
void gate_steps(const R *P, const R *x, int D, const R *h, int T, int B, int H, long min_work,
                Pack pack, Epi epi, Pre pre) {
    typedef typename VT<R>::V V;
    const int L = VT<R>::L, nb = (H + L - 1) / L;
    int nt = threads_for(long(B) * G * H * (D + H), nb, min_work);
    bool by_rows = split_by_rows(B, MR, nt, forward_bytes<R>(D, H, G));
    run_steps<R>(T, nb, nt, B, by_rows, pack, [&](int t, int lo, int hi, int r0, int r1) {
        for (int jb = lo; jb < hi; jb++) {
            const int j0 = jb * L, n = std::min(L, H - j0);
            rows<MR>(r0, r1, [&]<int M>(int b0) {
                V acc[M][G + SPLIT];
                for (int b = b0 + M; b < std::min(r1, b0 + 2 * M); b++) pre(t, long(b), j0, n);
                tile<R, M, G, SPLIT>(D, x + (long(t) * B + b0) * D, D, H,
                                     h + (long(t) * B + b0) * H, H,
                                     P + long(jb) * (D + H) * G * L, acc);
                for (int r = 0; r < M; r++) epi(t, long(b0 + r), j0, n, acc[r]);
            });
        }
    });
}

// Unit panels (Panels, pack_units): every step i with a(i) not null, for each row block and
// panel, the tile [a(i), a2(i)][rows] @ P (K + K2 deep; rows lda, lda2 apart) and
// epi(i, b, j0, n, rec) on each row and block of units; a step with a(i) null calls epi with
// rec = 0 (nothing to multiply). pack(lo, hi) packs panels lo .. hi-1 of P first.
constexpr int UNIT_MR = 8;

// The threads of a unit_steps loop over B rows, K deep (both parts), H units: at most one
// thread for each pair of vectors of units.
template <class R> int unit_threads(int B, int K, int H, long min_work) {
    const int L = VT<R>::L, pairs = (H + 2 * L - 1) / (2 * L);
    return threads_for(long(B) * K * H, pairs, min_work);
}

// by_rows: see run_steps (the caller decides, with split_by_rows, for its own bookkeeping).
template <class R, class Pack, class A, class Epi, class A2, class Pre>
void unit_steps(const R *P, const Panels &pn, int K, long lda, int nsteps, int B, int H, int nt,
                bool by_rows, Pack pack, A a, Epi epi, int K2, long lda2, A2 a2, Pre pre) {
    typedef typename VT<R>::V V;
    const int L = VT<R>::L;
    run_steps<R>(nsteps, pn.size(), nt, B, by_rows, pack, [&](int i, int lo, int hi,
                                                                        int r0, int r1) {
        const R *Ai = a(i), *A2i = a2(i);
        for (int jp = lo; jp < hi; jp++) {
            const int v0 = pn.v0[jp], w = pn.w[jp];
            if (!Ai) {
                for (int v = v0; v < v0 + w && v * L < H; v++) {
                    const int j0 = v * L, n = std::min(L, H - j0);
                    for (long b = r0; b < r1; b++) epi(i, b, j0, n, V{});
                }
                continue;
            }
            const R *Pp = P + long(v0) * (K + K2) * L;
            auto panel = [&]<int NP>() {
                rows<UNIT_MR>(r0, r1, [&]<int M>(int b0) {
                    V acc[M][NP];
                    for (int b = b0 + M; b < std::min(r1, b0 + 2 * M); b++)
                        pre(i, long(b), v0 * L, std::min(NP * L, H - v0 * L));
                    tile<R, M, NP>(K, Ai + b0 * lda, lda, K2, A2i + b0 * lda2, lda2, Pp, acc);
                    for (int r = 0; r < M; r++)
                        for (int v = 0; v < NP && (v0 + v) * L < H; v++) {
                            const int j0 = (v0 + v) * L;
                            epi(i, long(b0 + r), j0, std::min(L, H - j0), acc[r][v]);
                        }
                });
            };
            if (w == 3) panel.template operator()<3>();
            else if (w == 2) panel.template operator()<2>();
            else panel.template operator()<1>();
        }
    }, pn.bound.data());
}

// dL/dh_s for row sb = s * B + b, units j0 .. j0+n: what arrives from step s+1 (rec) plus the
// loss's own gradient at s (zero where the mask is), clipped to [-clip, clip] (clip < 0: off,
// Graves 2013) and kept in record (NULL: off, else diagnostics). m: the mask's value there.
template <class V, class R>
AI V message(V rec, const R *dy, const R *mask, R clip, R *record, long sb, int H, int j0, int n,
             R &m) {
    m = mask ? mask[sb] : R(1);
    V d = rec + ldn<V>(dy + sb * H + j0, n) * m;
    if (clip >= 0) d = clamp(d, clip);
    if (record) stn(record + sb * H + j0, d, n);
    return d;
}

// The backward loop every cell shares. Step i = 0 runs step T-1's elementwise part from dh_n;
// step i = T - s (s = T-1 .. 0) multiplies the gradients of step s's pre-activations, dA[s]
// (B rows of K, lda apart; and dA2[s], K2 more columns, where they are kept apart), by
// W_hh (K + K2 rows), which gives dL/dh_{s-1} (plus extra(s, b, j0, n): what reaches h_{s-1}
// around the product), and runs step s-1's elementwise part on it (dh0 after step 0).
// elem(s, b, j0, n, rec, sums) adds its bias gradients into sums: db (ndb values, or NULL), or,
// where the threads split the rows, a zeroed copy per thread, added into db at the end.
template <class R, class Elem, class Extra, class Touch>
int backward_steps(const R *W, const R *dA, int K, long lda, const R *dA2, int K2, long lda2,
                   const R *dh_n, R *dh0, R *db, int ndb, int T, int B, int H, long min_work,
                   Elem elem, Extra extra, Touch touch) {
    typedef typename VT<R>::V V;
    const int nt = unit_threads<R>(B, K + K2, H, min_work);
    const size_t bytes = units_bytes<R>(H, K + K2);
    const Panels pn((H + VT<R>::L - 1) / VT<R>::L, nt);
    const bool by_rows = split_by_rows(B, UNIT_MR, nt, bytes);
    Packed<R> packed(bytes);
    R *P = packed.p;
    R *parts = db && by_rows ? static_cast<R *>(std::calloc(size_t(nt) * ndb, sizeof(R)))
                             : nullptr;
    if (!P || (db && by_rows && !parts)) return -1;
    auto sums = [&]() -> R * {
        if (!parts) return db;
#ifdef _OPENMP
        return parts + long(omp_get_thread_num()) * ndb;
#else
        return parts;
#endif
    };
    unit_steps<R>(
        P, pn, K, lda, T + 1, B, H, nt, by_rows,
        [&](int lo, int hi) { pack_units(P, W, H, K + K2, W, 0, pn, lo, hi); },
        [&](int i) { return i == 0 ? nullptr : dA + long(T - i) * B * lda; },
        [&](int i, long b, int j0, int n, V rec) {
            if (i == 0) return elem(T - 1, b, j0, n, ldn<V>(dh_n + b * H + j0, n), sums());
            const int s = T - i;
            rec += extra(s, b, j0, n);
            if (s > 0) elem(s - 1, b, j0, n, rec, sums());
            else stn(dh0 + b * H + j0, rec, n);
        },
        K2, lda2, [&](int i) { return i == 0 || !dA2 ? dA2 : dA2 + long(T - i) * B * lda2; },
        [&](int i, long b, int j0, int n) {
            if (i < T) touch(T - i - 1, b, j0, n);
        });
    if (parts)
        for (int t = 0; t < nt; t++)
            for (int k = 0; k < ndb; k++) db[k] += parts[long(t) * ndb + k];
    std::free(parts);
    return 0;
}

// ---- LSTM (internal gate order o, i, f, g; sigmoid rows halved) -----------------------------

template <class R>
int lstm_forward(const R *Wx, const R *Wh, const R *bias, const R *x, int D, R *gates, R *h,
                 R *c, R *tc, const R *mask, int T, int B, int H, long min_work) {
    // Wx, Wh: the true weights in gate order o, i, f, g (the tape's); bias summed and halved.
    // gates and tc: NULL for inference, where nothing is kept for a backward pass and c holds
    // two rows, not T + 1
    typedef typename VT<R>::V V;
    const int G = 4;
    Packed<R> packed(forward_bytes<R>(D, H, G));
    R *P = packed.p;
    if (!P) return -1;
    auto pack = [&](int lo, int hi) { pack_forward(P, Wx, D, Wh, H, G, 3, lo, hi); };
    gate_steps<R, G, 6>(P, x, D, h, T, B, H, min_work, pack, [&](int t, long b, int j0, int n,
                                                                  V *acc) {
        const long tb = long(t) * B + b;
        V a[G];
        for (int q = 0; q < G; q++) a[q] = bias ? acc[q] + ldn<V>(bias + q * H + j0, n) : acc[q];
        V o = sigmoid_half(a[0]), i = sigmoid_half(a[1]), f = sigmoid_half(a[2]), gg = vtanh(a[3]);
        // inference keeps two rows of c, alternating (c is (2, B, H)); training all T + 1
        R *c_prev = c + ((gates ? t : t & 1) * long(B) + b) * H + j0;
        R *c_next = c + ((gates ? t + 1 : (t + 1) & 1) * long(B) + b) * H + j0;
        V cp = ldn<V>(c_prev, n);
        V cn = f * cp + i * gg;              // c = f * c_prev + i * g
        V tcn = vtanh(cn);
        V hn = o * tcn;                      // h = o * tanh(c)
        if (gates) {
            R *g = gates + tb * G * H + j0;
            stn(g, o, n), stn(g + H, i, n), stn(g + 2 * H, f, n), stn(g + 3 * H, gg, n);
            stn(tc + tb * H + j0, tcn, n);
        }
        if (mask) {  // carry the state where the sequence is not running
            R m = mask[tb];
            V hp = ldn<V>(h + tb * H + j0, n);
            cn = (cn - cp) * m + cp;
            hn = (hn - hp) * m + hp;
        }
        stn(c_next, cn, n);
        stn(h + (tb + B) * H + j0, hn, n);
    }, [&](int t, long b, int j0, int n) {  // what the epilogue of row b will read and write
        const long tb = long(t) * B + b;
        fetch(c + ((gates ? t : t & 1) * long(B) + b) * H + j0, n);
        fetch<true>(c + ((gates ? t + 1 : (t + 1) & 1) * long(B) + b) * H + j0, n);
        fetch<true>(h + (tb + B) * H + j0, n);
        if (gates) {
            for (int q = 0; q < G; q++) fetch<true>(gates + tb * G * H + q * H + j0, n);
            fetch<true>(tc + tb * H + j0, n);
        }
    });
    return 0;
}

template <class R>
int lstm_backward(const R *W, const R *dy, const R *dh_n, R *dc, const R *gates, const R *c,
                  const R *tc, const R *mask, R clip, R *record, R *dG, R *db, R *dh0,
                  R *dhbuf, int T, int B, int H, long min_work) {
    // db: NULL, or the bias gradient (4H, zeroed), summed here over all rows and steps
    typedef typename VT<R>::V V;
    const int K = 4 * H;
    const R one = 1;
    // step s's elementwise part for row b, units j0 .. j0+n, given dL/dh_s arriving (rec)
    auto elem = [&](int s, long b, int j0, int n, V rec, R *sums) {
        const long sb = long(s) * B + b;
        R m;
        V d = message(rec, dy, mask, clip, record, sb, H, j0, n, m);
        if (mask) stn(dhbuf + b * H + j0, d, n);
        const R *g = gates + sb * K + j0;
        V o = ldn<V>(g, n), i = ldn<V>(g + H, n), f = ldn<V>(g + 2 * H, n), gg = ldn<V>(g + 3 * H, n);
        V t = ldn<V>(tc + sb * H + j0, n), cp = ldn<V>(c + sb * H + j0, n);
        V dcb = ldn<V>(dc + b * H + j0, n);
        V dm = d * m;
        V d_o = dm * t * o * (one - o);              // through h = o * tanh(c), sigmoid'
        dcb += dm * o * (one - t * t);               // dc += dh * o * (1 - tanh(c)^2)
        V dcm = dcb * m;
        V d_i = dcm * gg * i * (one - i);            // through c = ... + i * g
        V d_f = dcm * cp * f * (one - f);            // through c = f * c_prev + ...
        V d_g = dcm * i * (one - gg * gg);           // tanh'
        dcb *= f * m + (one - m);                    // dc_prev = dc * f, or carried
        R *dg = dG + sb * K + j0;
        stn(dg, d_o, n), stn(dg + H, d_i, n), stn(dg + 2 * H, d_f, n), stn(dg + 3 * H, d_g, n);
        if (sums) {
            R *p = sums + j0;
            add_to(p, d_o, n), add_to(p + H, d_i, n), add_to(p + 2 * H, d_f, n);
            add_to(p + 3 * H, d_g, n);
        }
        stn(dc + b * H + j0, dcb, n);
    };
    auto extra = [&](int s, long b, int j0, int n) {  // masked: dh_s passes to h_{s-1}
        return mask ? ldn<V>(dhbuf + b * H + j0, n) * (one - mask[long(s) * B + b]) : V{};
    };
    auto touch = [&](int s, long b, int j0, int n) {
        const long sb = long(s) * B + b;
        fetch(dy + sb * H + j0, n), fetch(tc + sb * H + j0, n), fetch(c + sb * H + j0, n);
        for (int q = 0; q < 4; q++) fetch(gates + sb * K + q * H + j0, n);
        for (int q = 0; q < 4; q++) fetch<true>(dG + sb * K + q * H + j0, n);
    };
    return backward_steps(W, dG, K, K, static_cast<const R *>(nullptr), 0, 0, dh_n, dh0, db, K,
                          T, B, H, min_work, elem, extra, touch);
}

// ---- GRU, reset after the product (PyTorch's; chunks r, z, n; r and z rows halved) ----------

template <class R>
int gru_forward(const R *Wx, const R *Wh, const R *bias, const R *b_hn, const R *x, int D,
                R *gates, R *h, R *hn, const R *mask, int T, int B, int H, long min_work) {
    // Wx, Wh: the true weights (gate order r, z, n, the tape's); gates and hn: NULL for
    // inference
    typedef typename VT<R>::V V;
    const int G = 3;
    Packed<R> packed(forward_bytes<R>(D, H, G));
    R *P = packed.p;
    if (!P) return -1;
    auto pack = [&](int lo, int hi) { pack_forward(P, Wx, D, Wh, H, G, 2, lo, hi); };
    // acc: r, z (input + recurrent parts), the n gate's input part, its recurrent part
    gate_steps<R, G, 6, true>(P, x, D, h, T, B, H, min_work, pack, [&](int t, long b, int j0,
                                                                        int n,
                                                                V *acc) {
        const long tb = long(t) * B + b;
        V a[G];
        for (int q = 0; q < G; q++) a[q] = bias ? acc[q] + ldn<V>(bias + q * H + j0, n) : acc[q];
        V rg = sigmoid_half(a[0]), z = sigmoid_half(a[1]);
        V hnv = b_hn ? acc[3] + ldn<V>(b_hn + j0, n) : acc[3];  // W_hn h_prev + b_hn
        V nn = vtanh(a[2] + rg * hnv);                           // n = tanh(a_n + r * hn)
        V hp = ldn<V>(h + tb * H + j0, n);
        V hnew = (hp - nn) * z + nn;                             // h = n + z * (h_prev - n)
        if (mask) {
            R m = mask[tb];
            hnew = (hnew - hp) * m + hp;
        }
        if (gates) {
            R *g = gates + tb * G * H + j0;
            stn(g, rg, n), stn(g + H, z, n), stn(g + 2 * H, nn, n);
            stn(hn + tb * H + j0, hnv, n);
        }
        stn(h + (tb + B) * H + j0, hnew, n);
    }, [&](int t, long b, int j0, int n) {
        const long tb = long(t) * B + b;
        fetch<true>(h + (tb + B) * H + j0, n);
        if (gates) {
            for (int q = 0; q < G; q++) fetch<true>(gates + tb * G * H + q * H + j0, n);
            fetch<true>(hn + tb * H + j0, n);
        }
    });
    return 0;
}

template <class R>
int gru_backward(const R *W, const R *dy, const R *dh_n, const R *gates, const R *h, const R *hn,
                 const R *mask, R clip, R *record, R *da, R *dhp_n, R *db, R *dh0, R *carry,
                 int T, int B, int H, long min_work) {
    // db: NULL, or 4H zeroed sums over all rows and steps: da's three chunks, then dhp_n
    // dL/d(W_hh h_prev + b_hh) is da for the r and z chunks; only its n chunk, da_n * r, is
    // kept apart (dhp_n, (T, B, H)), and the product reads the two where they lie
    typedef typename VT<R>::V V;
    const int K = 3 * H;
    const R one = 1;
    auto elem = [&](int s, long b, int j0, int n, V rec, R *sums) {
        const long sb = long(s) * B + b;
        R m;
        V d = message(rec, dy, mask, clip, record, sb, H, j0, n, m);
        const R *g = gates + sb * K + j0;
        V rg = ldn<V>(g, n), z = ldn<V>(g + H, n), nn = ldn<V>(g + 2 * H, n);
        V hp = ldn<V>(h + sb * H + j0, n), hnv = ldn<V>(hn + sb * H + j0, n);
        V dm = d * m;
        V da_n = dm * (one - nn * nn) * (one - z);        // h = (1-z) n + .., tanh'
        V da_z = dm * (hp - nn) * z * (one - z);          // h = .. + z (h_prev - n)
        V da_r = da_n * hnv * rg * (one - rg);            // n = tanh(.. + r hn)
        R *a = da + sb * K + j0;
        stn(a, da_r, n), stn(a + H, da_z, n), stn(a + 2 * H, da_n, n);
        stn(dhp_n + sb * H + j0, da_n * rg, n);                    // d(hn) = da_n r
        if (sums) {
            R *p = sums + j0;
            add_to(p, da_r, n), add_to(p + H, da_z, n), add_to(p + 2 * H, da_n, n);
            add_to(p + 3 * H, da_n * rg, n);
        }
        stn(carry + b * H + j0, d * (z * m + (one - m)), n);  // dh_prev += dh z, or carried
    };
    auto extra = [&](int, long b, int j0, int n) { return ldn<V>(carry + b * H + j0, n); };
    auto touch = [&](int s, long b, int j0, int n) {
        const long sb = long(s) * B + b;
        fetch(dy + sb * H + j0, n), fetch(h + sb * H + j0, n), fetch(hn + sb * H + j0, n);
        for (int q = 0; q < 3; q++) fetch(gates + sb * K + q * H + j0, n);
        for (int q = 0; q < 3; q++) fetch<true>(da + sb * K + q * H + j0, n);
        fetch<true>(dhp_n + sb * H + j0, n);
    };
    return backward_steps(W, da, 2 * H, K, static_cast<const R *>(dhp_n), H, H, dh_n, dh0, db,
                          4 * H, T, B, H, min_work, elem, extra, touch);
}

// ---- Elman RNN (tanh or relu) ----------------------------------------------------------------

template <class R>
int rnn_forward(const R *WxT, const R *WhT, const R *bias, const R *x, int D, R *h,
                const R *mask, int relu, int T, int B, int H, long min_work) {
    typedef typename VT<R>::V V;
    const size_t bytes = units_bytes<R>(H, D + H);
    Packed<R> packed(bytes);
    R *P = packed.p;
    if (!P) return -1;
    const int nt = unit_threads<R>(B, D + H, H, min_work);
    const bool by_rows = split_by_rows(B, UNIT_MR, nt, bytes);
    const Panels pn((H + VT<R>::L - 1) / VT<R>::L, nt);
    unit_steps<R>(
        P, pn, D, D, T, B, H, nt, by_rows,
        [&](int lo, int hi) { pack_units(P, WxT, H, D, WhT, H, pn, lo, hi); },
        [&](int t) { return x + long(t) * B * D; },
        [&](int t, long b, int j0, int n, V a) {
            const long tb = long(t) * B + b;
            if (bias) a += ldn<V>(bias + j0, n);
            a = relu ? (a < R(0) ? V{} : a) : vtanh(a);  // as np.maximum: NaN stays NaN
            if (mask) {
                R m = mask[tb];
                V hp = ldn<V>(h + tb * H + j0, n);
                a = (a - hp) * m + hp;
            }
            stn(h + (tb + B) * H + j0, a, n);
        },
        H, H, [&](int t) { return h + long(t) * B * H; },
        [&](int t, long b, int j0, int n) { fetch<true>(h + (long(t) * B + b + B) * H + j0, n); });
    return 0;
}

template <class R>
int rnn_backward(const R *W, const R *dy, const R *dh_n, const R *h, const R *mask, int relu,
                 R clip, R *record, R *da, R *db, R *dh0, R *carry, int T, int B, int H,
                 long min_work) {
    // db: NULL, or the bias gradient (H, zeroed), summed here over all rows and steps
    typedef typename VT<R>::V V;
    const R one = 1;
    auto elem = [&](int s, long b, int j0, int n, V rec, R *sums) {
        const long sb = long(s) * B + b;
        R m;
        V d = message(rec, dy, mask, clip, record, sb, H, j0, n, m);
        V hb = ldn<V>(h + (sb + B) * H + j0, n);
        V dm = d * m;
        V a = relu ? (hb > R(0) ? dm : V{}) : dm * (one - hb * hb);  // relu', tanh' = 1 - h^2
        stn(da + sb * H + j0, a, n);
        if (sums) add_to(sums + j0, a, n);
        if (mask) stn(carry + b * H + j0, d * (one - m), n);
    };
    auto extra = [&](int, long b, int j0, int n) {
        return mask ? ldn<V>(carry + b * H + j0, n) : V{};
    };
    auto touch = [&](int s, long b, int j0, int n) {
        const long sb = long(s) * B + b;
        fetch(dy + sb * H + j0, n), fetch(h + (sb + B) * H + j0, n);
        fetch<true>(da + sb * H + j0, n);
    };
    return backward_steps(W, da, H, H, static_cast<const R *>(nullptr), 0, 0, dh_n, dh0, db, H,
                          T, B, H, min_work, elem, extra, touch);
}

// ---- the products outside the time loops ------------------------------------------------------

// NumPy's OpenBLAS (the pthreads build of its wheels) has one thread count for the whole
// process: there openblas_set_num_threads_local(n) sets that one count and returns the one
// before (it is per thread only in OpenBLAS's OpenMP build, whose calls from inside a parallel
// region run on one thread anyway). So the calling thread alone sets it to 1 before the tasks
// and puts it back after them; of callers at once (Python threads, each in a backward) the
// first sets it and the last puts it back. OpenBLAS's sgemm gives other bits on one thread
// than on several for many shapes, so a count left changed would change the bits of the
// NumPy products that follow (bench/native_notes.md, Determinism).
class BlasOnOneThread {
    typedef int (*set_t)(int);
    static inline std::mutex m_;
    static inline int users_ = 0, saved_ = 0;
    set_t set_;

  public:
    explicit BlasOnOneThread(void *set_threads) : set_(reinterpret_cast<set_t>(set_threads)) {
        std::lock_guard<std::mutex> lock(m_);
        if (users_++ == 0) saved_ = set_(1);
    }
    ~BlasOnOneThread() {
        std::lock_guard<std::mutex> lock(m_);
        if (--users_ == 0) set_(saved_);
    }
    BlasOnOneThread(const BlasOnOneThread &) = delete;
    BlasOnOneThread &operator=(const BlasOnOneThread &) = delete;
};

// Runs GEMM tasks (row blocks of the backward's dx and weight gradients) on this library's
// OpenMP threads, each task one call of the caller's BLAS (NumPy's OpenBLAS, ILP64 cblas) with
// that BLAS held to one thread (BlasOnOneThread). So no second thread pool spins on the cores
// that the time loops use. Each task writes its own rows of C, whichever thread runs it, so the
// results do not depend on the schedule. d holds 8 longs a task (transA, transB, M, N, K, lda,
// ldb, ldc), p 3 pointers (A, B, C); alpha 1, beta 0, row-major.
template <class R>
void gemms(void *gemm_fn, void *set_threads, int ntasks, const long *d, void *const *p) {
    typedef void (*gemm_t)(int, int, int, long, long, long, R, const R *, long, const R *, long,
                           R, R *, long);
    gemm_t gemm = reinterpret_cast<gemm_t>(gemm_fn);
    enum { RowMajor = 101, NoTrans = 111, Trans = 112 };
    auto task = [&](int i) {
        const long *t = d + 8 * i;
        gemm(RowMajor, t[0] ? Trans : NoTrans, t[1] ? Trans : NoTrans, t[2], t[3], t[4], R(1),
             static_cast<const R *>(p[3 * i]), t[5], static_cast<const R *>(p[3 * i + 1]), t[6],
             R(0), static_cast<R *>(p[3 * i + 2]), t[7]);
    };
    int nt = threads_for(1, ntasks, 0);
#ifdef _OPENMP
    if (nt > 1) {
        BlasOnOneThread one(set_threads);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int i = 0; i < ntasks; i++) task(i);
        return;
    }
#endif
    for (int i = 0; i < ntasks; i++) task(i);
}

}  // namespace

// ---- Adam, one pass ----------------------------------------------------------------------------

// bptt.optim.Adam's update of one parameter, all its NumPy operations in one pass over memory
// instead of ten (each with a temporary the size of the parameter). The operations and their
// order are NumPy's, each rounded to R as NumPy rounds it (the scalars come already cast to R,
// as NumPy casts a Python float; no a * b + c fused into one FMA), so the results equal NumPy's
// bit for bit. wd_mode: 0 none, 1 L2 (g + wd p), 2 decoupled (p * decay);
// small_w: w < 0.5, the branch of bptt.optim._lerp_ (decided in double, as there). One thread:
// it runs at memory speed (1.3 ms for 1.37 M float32 parameters, NumPy's ten passes 6.4 ms), and
// a second thread saves little and loses much when the other core is busy.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")  // NumPy rounds a * b before adding c; no FMA here
template <class R>
void adam(R *p, const R *g, R *m, R *v, long n, int wd_mode, R wd, R decay, int small_w, R w,
          R omw, R beta2, R omb2, R c2, R eps, R step) {
    for (long i = 0; i < n; i++) {
        R gi = g[i], pi = p[i];
        if (wd_mode == 1) gi = gi + wd * pi;
        if (wd_mode == 2) pi = pi * decay;
        R mi = m[i];
        mi = small_w ? mi + w * (gi - mi) : gi - (gi - mi) * omw;  // torch.lerp's two roundings
        R vi = v[i] * beta2;
        vi = vi + (omb2 * gi) * gi;
        R d = std::sqrt(vi);
        d = d / c2;
        d = d + eps;
        p[i] = pi - step * (mi / d);
        m[i] = mi;
        v[i] = vi;
    }
}
#pragma GCC pop_options

// ---- the C symbols (ctypes) ------------------------------------------------------------------

#define EXPORT extern "C" __attribute__((visibility("default")))
#define BOTH(X) X(float, f32) X(double, f64)

#define LSTM(R, S)                                                                              \
    EXPORT int lstm_forward_##S(const R *Wx, const R *Wh, const R *bias, const R *x, int D,     \
                                R *gates, R *h, R *c, R *tc, const R *mask, int T, int B,       \
                                int H, long mw) {                                               \
        return lstm_forward<R>(Wx, Wh, bias, x, D, gates, h, c, tc, mask, T, B, H, mw);         \
    }                                                                                           \
    EXPORT int lstm_backward_##S(const R *W, const R *dy, const R *dh_n, R *dc, const R *gates, \
                                 const R *c, const R *tc, const R *mask, R clip, R *record,     \
                                 R *dG, R *db, R *dh0, R *buf, int T, int B, int H, long mw) {  \
        return lstm_backward<R>(W, dy, dh_n, dc, gates, c, tc, mask, clip, record, dG, db, dh0,\
                                buf, T, B, H, mw);                                              \
    }
#define GRU(R, S)                                                                               \
    EXPORT int gru_forward_##S(const R *Wx, const R *Wh, const R *bias, const R *b_hn,          \
                               const R *x, int D, R *gates, R *h, R *hn, const R *mask, int T,  \
                               int B, int H, long mw) {                                         \
        return gru_forward<R>(Wx, Wh, bias, b_hn, x, D, gates, h, hn, mask, T, B, H, mw);       \
    }                                                                                           \
    EXPORT int gru_backward_##S(const R *W, const R *dy, const R *dh_n, const R *gates,         \
                                const R *h, const R *hn, const R *mask, R clip, R *record,      \
                                R *da, R *dhp_n, R *db, R *dh0, R *buf, int T, int B, int H,   \
                                long mw) {                                                      \
        return gru_backward<R>(W, dy, dh_n, gates, h, hn, mask, clip, record, da, dhp_n, db,   \
                               dh0, buf, T, B, H, mw);                                          \
    }
#define RNN(R, S)                                                                               \
    EXPORT int rnn_forward_##S(const R *WxT, const R *WhT, const R *bias, const R *x, int D,    \
                               R *h, const R *mask, int relu, int T, int B, int H, long mw) {   \
        return rnn_forward<R>(WxT, WhT, bias, x, D, h, mask, relu, T, B, H, mw);                \
    }                                                                                           \
    EXPORT int rnn_backward_##S(const R *W, const R *dy, const R *dh_n, const R *h,             \
                                const R *mask, int relu, R clip, R *record, R *da, R *db,       \
                                R *dh0, R *buf, int T, int B, int H, long mw) {                 \
        return rnn_backward<R>(W, dy, dh_n, h, mask, relu, clip, record, da, db, dh0, buf, T,   \
                               B, H, mw);                                                       \
    }
#define GEMMS(R, S)                                                                             \
    EXPORT void gemms_##S(void *fn, void *set, int ntasks, const long *d, void *const *p) {     \
        gemms<R>(fn, set, ntasks, d, p);                                                      \
    }
#define ADAM(R, S)                                                                              \
    EXPORT void adam_##S(R *p, const R *g, R *m, R *v, long n, int wd_mode, R wd, R decay,      \
                         int small_w, R w, R omw, R beta2, R omb2, R c2, R eps, R step) {       \
        adam<R>(p, g, m, v, n, wd_mode, wd, decay, small_w, w, omw, beta2, omb2, c2, eps, step);\
    }
BOTH(LSTM)
BOTH(GRU)
BOTH(RNN)
BOTH(GEMMS)
BOTH(ADAM)

// How the loops split their threads: 0 by the rule of split_by_rows, 1 by rows, 2 by units.
EXPORT void set_split(int mode) { split_mode = mode; }

// Frees the packed-weight buffers the pool keeps (bptt.native.release_workspace).
EXPORT void release_packed() { pool.clear(); }

EXPORT int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_loops",
                                    "bptt's fused time loops (C symbols, called through ctypes)",
                                    -1, nullptr};

PyMODINIT_FUNC PyInit__loops(void) { return PyModule_Create(&module); }
