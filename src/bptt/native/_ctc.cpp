// CTC forward-backward for a batch: the loss of each sequence and y - gamma, the gradient that
// bptt.ctc returns before its reduction. The twin of bptt.ctc.forward_backward_numpy (the
// reference, whose docstring and module carry the equations); one sequence per task, the
// sequences spread over OpenMP threads, so the results do not depend on the thread count.
//
// In log space, as the reference and torch: each cell's log(e^a + e^b + e^c) is shifted by its
// own maximum, so no term underflows however far below the rest of its row it lies (an untrained
// model's target can sit hundreds of nats below the best cell of the last frame). The rows run
// through the vector units: exp_of and log_of below are polynomials the compiler vectorizes.

#include <Python.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// One call: the arrays of bptt.native.ctc.forward_backward, C-contiguous. Reals are float or
// double as the entry point says.
struct CtcArgs {
    const void* log_probs;          // (T, B, C)
    const void* probs;              // (T, B, C): exp(log_probs)
    const int64_t* labels;          // (B, S_max): padded targets
    const int64_t* input_lengths;   // (B,)
    const int64_t* target_lengths;  // (B,)
    int64_t T, B, C, S_max, blank;
    void* nll;                      // (B,) out: -log p(l | x), inf when infeasible
    void* grad;                     // (T, B, C) out: y - gamma for t < T_b, 0 beyond, nan if inf
};

template <class R>
constexpr R kNegInf = -std::numeric_limits<R>::infinity();

// exp and log with the bit layout of R: the integer of its size, its mantissa bits, its bias
template <class R>
struct Bits {
    using I = std::conditional_t<std::is_same_v<R, float>, int32_t, int64_t>;
    static constexpr int mantissa = std::numeric_limits<R>::digits - 1;   // 23, 52
    static constexpr I bias = std::numeric_limits<R>::max_exponent - 1;   // 127, 1023
    // x + shifter rounds x to an integer held in the low mantissa bits: 1.5 * 2^mantissa
    static constexpr R shifter = R(1.5) * R(I(1) << mantissa);
};

// 1/n! and 1/(2n + 1), the coefficients of the series of exp and of atanh
template <class R>
constexpr R kInverseFactorial[14] = {
    R(1),          R(1),           R(1) / 2,         R(1) / 6,          R(1) / 24,
    R(1) / 120,    R(1) / 720,     R(1) / 5040,      R(1) / 40320,      R(1) / 362880,
    R(1) / 3628800, R(1) / 39916800, R(1) / 479001600, R(1) / 6227020800};
template <class R>
constexpr R kInverseOdd[10] = {R(1),      R(1) / 3,  R(1) / 5,  R(1) / 7,  R(1) / 9,
                               R(1) / 11, R(1) / 13, R(1) / 15, R(1) / 17, R(1) / 19};

// ln 2 in two parts: ln2_hi has 15 bits, so k * ln2_hi is exact for every exponent k
template <class R>
constexpr R kLn2Hi = R(0.693145751953125);
template <class R>
constexpr R kLn2Lo = R(1.4286068203094173e-06);

// exp(x) for x <= ~1, -inf included, and 0 below log(min_normal) (no cell here needs more):
// x = k ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial to degree 7 (float) or 13
// (double), whose remainder is below half an ulp, then times 2^k built in the exponent bits.
template <class R>
inline R exp_of(R x) {
    using B = Bits<R>;
    using I = typename B::I;
    constexpr R lo = std::is_same_v<R, float> ? R(-87.3) : R(-708.3);
    R xc = std::min(std::max(x, lo), R(80));
    R t = xc * R(1.4426950408889634) + B::shifter;      // x / ln2 + shifter
    R kd = t - B::shifter;                               // k = round(x / ln2)
    I k = std::bit_cast<I>(t) - std::bit_cast<I>(B::shifter);
    R r = (xc - kd * kLn2Hi<R>) - kd * kLn2Lo<R>;
    constexpr int degree = std::is_same_v<R, float> ? 7 : 13;
    R poly = kInverseFactorial<R>[degree];
    for (int n = degree - 1; n >= 0; --n) poly = kInverseFactorial<R>[n] + r * poly;
    R scale = std::bit_cast<R>((k + B::bias) << B::mantissa);   // 2^k
    return x < lo ? R(0) : poly * scale;
}

// log(q) for a positive normal q (here in [1, 3]): q = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...) with u = (m - 1) / (m + 1), |u| <= 0.172,
// to u^9 (float) or u^19 (double), the first term left out below half an ulp.
template <class R>
inline R log_of(R q) {
    using B = Bits<R>;
    using I = typename B::I;
    I bits = std::bit_cast<I>(q);
    I e = (bits >> B::mantissa) - B::bias;
    R m = std::bit_cast<R>((bits & ((I(1) << B::mantissa) - 1)) | (B::bias << B::mantissa));
    bool big = m > R(1.4142135623730951);                // [1, 2) -> [sqrt(1/2), sqrt(2))
    m = big ? m * R(0.5) : m;
    e = big ? e + 1 : e;
    R ed = std::bit_cast<R>(e + std::bit_cast<I>(B::shifter)) - B::shifter;   // R(e)
    R u = (m - R(1)) / (m + R(1));
    R u2 = u * u;
    constexpr int terms = std::is_same_v<R, float> ? 5 : 10;
    R series = kInverseOdd<R>[terms - 1];
    for (int j = terms - 2; j >= 0; --j) series = kInverseOdd<R>[j] + u2 * series;
    return ed * kLn2Hi<R> + (R(2) * u * series + ed * kLn2Lo<R>);
}

// out(s) = log(e^{a(s)} + e^{b(s)} + e^{c(s) + k(s)}) for a row of n cells, k(s) 0 or -inf
template <class R>
void log_sum_exp_row(const R* a, const R* b, const R* c, const R* k, int64_t n, R* out) {
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) {
        R x0 = a[s], x1 = b[s], x2 = c[s] + k[s];
        R m = std::max(x0, std::max(x1, x2));
        R shift = std::max(m, std::numeric_limits<R>::lowest());  // all -inf: exps of -inf
        R q = exp_of(x0 - shift) + exp_of(x1 - shift) + exp_of(x2 - shift);  // in [1, 3]
        out[s] = m == kNegInf<R> ? m : shift + log_of(std::max(q, R(1)));
    }
}

constexpr int64_t kLanes = 16;  // floats in a 64-byte vector

template <class R>
struct Scratch {
    std::vector<R> alpha, beta, beta_next, beta_hat, emit, gamma, k, k_next, occupancy;
    std::vector<int64_t> ext;
};

// One sequence b.
template <class R>
void sequence(const CtcArgs& a, int64_t b, Scratch<R>& w) {
    const R* lp = static_cast<const R*>(a.log_probs);
    const R* probs = static_cast<const R*>(a.probs);
    R* grad = static_cast<R*>(a.grad);
    R* nll_out = static_cast<R*>(a.nll);
    const int64_t T = a.input_lengths[b], S = a.target_lengths[b], Sx = 2 * S + 1, C = a.C;
    const int64_t row_stride = a.B * C;
    auto row = [&](int64_t t) { return t * row_stride + b * C; };
    for (int64_t t = T; t < a.T; ++t) std::memset(grad + row(t), 0, sizeof(R) * C);
    if (T == 0) {  // no frame: the empty labelling has probability 1, any other 0
        nll_out[b] = S == 0 ? R(0) : std::numeric_limits<R>::infinity();
        return;
    }

    // The rows are padded to n cells, a multiple of the vector width, so that every cell runs
    // in the vector loops (a row is often shorter than two vectors); the padding never emits.
    const int64_t n = (Sx + kLanes - 1) / kLanes * kLanes;

    // l' = blank, l_1, blank, ..., l_S, blank; log k_s = 0 for a label other than l'_{s-2},
    // else -inf; k_next(s) = log k_{s+2}, the skip of the backward recursion
    w.ext.resize(Sx);
    for (int64_t s = 0; s < Sx; ++s)
        w.ext[s] = s % 2 ? a.labels[b * a.S_max + s / 2] : a.blank;
    const int64_t* ext = w.ext.data();
    w.k.assign(n, kNegInf<R>);
    w.k_next.assign(n, kNegInf<R>);
    for (int64_t s = 3; s < Sx; s += 2)
        if (ext[s] != ext[s - 2]) w.k[s] = w.k_next[s - 2] = R(0);
    w.emit.assign(n, kNegInf<R>);
    R* emit = w.emit.data();
    auto emissions = [&](int64_t t) {  // emit(s) = log y_t(l'_s)
        const R* lpt = lp + row(t);
        for (int64_t s = 0; s < Sx; ++s) emit[s] = lpt[ext[s]];
    };

    // forward: alpha_t(s) = log y_t(l'_s) + log(e^alpha(s) + e^alpha(s-1) + k_s e^alpha(s-2)).
    // Rows of n + 2 with two -inf cells in front, the cells before s = 0.
    const int64_t W = n + 2;
    w.alpha.assign(T * W, kNegInf<R>);
    auto alpha = [&](int64_t t) { return w.alpha.data() + t * W + 2; };
    alpha(0)[0] = lp[row(0) + a.blank];
    if (S > 0) alpha(0)[1] = lp[row(0) + ext[1]];
    for (int64_t t = 1; t < T; ++t) {
        const R* prev = alpha(t - 1);
        R* cur = alpha(t);
        log_sum_exp_row(prev, prev - 1, prev - 2, w.k.data(), n, cur);
        emissions(t);
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) cur[s] += emit[s];
    }
    const R* last = alpha(T - 1);
    R end1 = last[Sx - 1], end2 = last[Sx - 2];  // last[-1] = -inf when S = 0
    R m = std::max(end1, end2);
    R nll = m == kNegInf<R> ? std::numeric_limits<R>::infinity()
                            : -(m + std::log(std::exp(end1 - m) + std::exp(end2 - m)));
    nll_out[b] = nll;
    if (std::isinf(nll)) {  // p(l | x) = 0: no gradient (torch gives nan; zero_infinity zeroes it)
        for (int64_t t = 0; t < T; ++t)
            std::fill(grad + row(t), grad + row(t) + C, std::numeric_limits<R>::quiet_NaN());
        return;
    }

    // backward, one row at a time, with gamma_t(c) = sum_{l'_s = c} e^{alpha_t(s) + beta-hat_t(s)
    // + nll} and the gradient row y_t - gamma_t as soon as beta-hat_t is known. beta rows have
    // two -inf cells behind, the cells past the end.
    w.beta.assign(W, kNegInf<R>);
    w.beta_next.assign(W, kNegInf<R>);
    w.beta_hat.assign(n, kNegInf<R>);
    w.gamma.resize(n);
    w.occupancy.resize(C);
    R* beta = w.beta.data();            // beta_t = beta-hat_t + log y_t(l'_s)
    R* beta_next = w.beta_next.data();  // beta_{t+1}
    R *beta_hat = w.beta_hat.data(), *gamma = w.gamma.data(), *occupancy = w.occupancy.data();
    beta_hat[Sx - 1] = 0;
    if (S > 0) beta_hat[Sx - 2] = 0;
    for (int64_t t = T - 1; t >= 0; --t) {
        if (t < T - 1) {
            std::swap(beta, beta_next);
            log_sum_exp_row(beta_next, beta_next + 1, beta_next + 2, w.k_next.data(), n,
                            beta_hat);
        }
        const R* alpha_t = alpha(t);
        emissions(t);
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) {
            gamma[s] = exp_of(alpha_t[s] + beta_hat[s] + nll);
            beta[s] = beta_hat[s] + emit[s];
        }
        std::fill(occupancy, occupancy + C, R(0));
        for (int64_t s = 0; s < Sx; ++s) occupancy[ext[s]] += gamma[s];
        const R* y = probs + row(t);
        R* g = grad + row(t);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] = y[c] - occupancy[c];
    }
}

template <class R>
void forward_backward(const CtcArgs& a) {
#pragma omp parallel
    {
        Scratch<R> w;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < a.B; ++b) sequence<R>(a, b, w);
    }
}

}  // namespace

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT void ctc_forward_backward_f32(const CtcArgs* a) { forward_backward<float>(*a); }
EXPORT void ctc_forward_backward_f64(const CtcArgs* a) { forward_backward<double>(*a); }

// importable as a module (setuptools builds it as one); the entry points go through ctypes
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctc", nullptr, -1, nullptr,
                                    nullptr, nullptr, nullptr, nullptr};
PyMODINIT_FUNC PyInit__ctc(void) { return PyModule_Create(&module); }
