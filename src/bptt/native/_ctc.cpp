// CTC forward-backward for a batch: the loss of each sequence and y - gamma, the gradient that
// bptt.ctc returns before its reduction. The twin of bptt.ctc.forward_backward_numpy (the
// reference, whose docstring and module carry the equations); one sequence per task, the
// sequences spread over OpenMP threads, so the results do not depend on the thread count.
//
// In log space, as the reference. A step needs log(e^a + e^b + e^c) for every cell s from three
// cells of the step before. Rather than shifting each cell by its own maximum (three exps and a
// log per cell), the whole previous row is shifted once by its maximum M:
//
//     p(s) = exp(prev(s) - M),    q(s) = p(s) + p(s-1) + k_s p(s-2),    cur(s) = M + log q(s)
//
// one exp and one log per cell. Where q(s) < min_normal / epsilon, some term may have lost digits
// to underflow (a cell far below the row's best one), and that cell is taken again with its own
// maximum, exactly.

#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <omp.h>

namespace {

// One call: the arrays of bptt.native.ctc.forward_backward, C-contiguous. Reals are float or
// double as the entry point says.
struct CtcArgs {
    const void* log_probs;          // (T, B, C)
    const void* probs;              // (T, B, C): exp(log_probs)
    const int64_t* labels;          // (B, S): padded targets
    const int64_t* input_lengths;   // (B,)
    const int64_t* target_lengths;  // (B,)
    int64_t T, B, C, S, blank;
    void* nll;                      // (B,) out: -log p(l | x), inf when infeasible
    void* grad;                     // (T, B, C) out: y - gamma for t < T_b, 0 beyond, nan if inf
};

template <class R>
constexpr R kNegInf = -std::numeric_limits<R>::infinity();

// q below this may hold a term that underflowed: min_normal / epsilon (2^-103, 2^-970)
template <class R>
constexpr R kSafe = std::numeric_limits<R>::min() / std::numeric_limits<R>::epsilon();

template <class R>
R log_add_exp3(R a, R b, R c) {
    R m = std::max(a, std::max(b, c));
    if (m == kNegInf<R>) return m;
    return m + std::log(std::exp(a - m) + std::exp(b - m) + std::exp(c - m));
}

template <class R>
struct Scratch {
    std::vector<R> alpha, p, beta_hat, beta, beta_next, occupancy;
    std::vector<int64_t> ext;
    std::vector<char> skip;
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

    // l' = blank, l_1, blank, ..., l_S, blank; k_s = a label other than l'_{s-2}
    w.ext.resize(Sx);
    w.skip.assign(Sx, 0);
    for (int64_t s = 0; s < Sx; ++s)
        w.ext[s] = s % 2 ? a.labels[b * a.S + s / 2] : a.blank;
    for (int64_t s = 3; s < Sx; s += 2) w.skip[s] = w.ext[s] != w.ext[s - 2];
    const int64_t* ext = w.ext.data();
    const char* skip = w.skip.data();

    // forward: alpha_t(s) = log y_t(l'_s) + log(e^alpha(s) + e^alpha(s-1) + k_s e^alpha(s-2))
    w.alpha.assign(T * Sx, kNegInf<R>);
    w.p.resize(Sx);
    R* alpha = w.alpha.data();
    R* p = w.p.data();
    alpha[0] = lp[row(0) + a.blank];
    if (S > 0) alpha[1] = lp[row(0) + ext[1]];
    bool feasible = true;
    for (int64_t t = 1; t < T && feasible; ++t) {
        const R* prev = alpha + (t - 1) * Sx;
        R* cur = alpha + t * Sx;
        const R* lpt = lp + row(t);
        R M = *std::max_element(prev, prev + Sx);
        if (M == kNegInf<R>) {
            feasible = false;
            break;
        }
        for (int64_t s = 0; s < Sx; ++s) p[s] = std::exp(prev[s] - M);
        for (int64_t s = 0; s < Sx; ++s) {
            R q = p[s] + (s >= 1 ? p[s - 1] : R(0)) + (skip[s] ? p[s - 2] : R(0));
            R lse = q >= kSafe<R> ? M + std::log(q)
                                  : log_add_exp3(prev[s], s >= 1 ? prev[s - 1] : kNegInf<R>,
                                                 skip[s] ? prev[s - 2] : kNegInf<R>);
            cur[s] = lse + lpt[ext[s]];
        }
    }
    const R* last = alpha + (T - 1) * Sx;
    R end1 = last[Sx - 1], end2 = S > 0 ? last[Sx - 2] : kNegInf<R>;
    R m = std::max(end1, end2);
    R nll = m == kNegInf<R> || !feasible
                ? std::numeric_limits<R>::infinity()
                : -(m + std::log(std::exp(end1 - m) + std::exp(end2 - m)));
    nll_out[b] = nll;
    if (std::isinf(nll)) {  // p(l | x) = 0: no gradient (torch gives nan; zero_infinity zeroes it)
        for (int64_t t = 0; t < T; ++t)
            std::fill(grad + row(t), grad + row(t) + C, std::numeric_limits<R>::quiet_NaN());
        return;
    }

    // backward, one row at a time, with gamma_t(c) = sum_{l'_s = c} e^{alpha_t(s) + beta-hat_t(s)
    // + nll} and the gradient row y_t - gamma_t as soon as beta-hat_t is known
    w.beta_hat.assign(Sx, kNegInf<R>);
    w.beta.resize(Sx);
    w.beta_next.resize(Sx);
    w.occupancy.resize(C);
    R* beta_hat = w.beta_hat.data();
    R* beta = w.beta.data();          // beta_t = beta-hat_t + log y_t(l'_s)
    R* beta_next = w.beta_next.data();  // beta_{t+1}
    R* occupancy = w.occupancy.data();
    beta_hat[Sx - 1] = 0;
    if (S > 0) beta_hat[Sx - 2] = 0;
    for (int64_t t = T - 1; t >= 0; --t) {
        const R* lpt = lp + row(t);
        if (t < T - 1) {
            std::swap(beta, beta_next);
            R M = *std::max_element(beta_next, beta_next + Sx);  // finite: a path runs through t+1
            for (int64_t s = 0; s < Sx; ++s) p[s] = std::exp(beta_next[s] - M);
            for (int64_t s = 0; s < Sx; ++s) {
                bool k = s + 2 < Sx && skip[s + 2];
                R q = p[s] + (s + 1 < Sx ? p[s + 1] : R(0)) + (k ? p[s + 2] : R(0));
                beta_hat[s] = q >= kSafe<R>
                                  ? M + std::log(q)
                                  : log_add_exp3(beta_next[s],
                                                 s + 1 < Sx ? beta_next[s + 1] : kNegInf<R>,
                                                 k ? beta_next[s + 2] : kNegInf<R>);
            }
        }
        const R* alpha_t = alpha + t * Sx;
        std::fill(occupancy, occupancy + C, R(0));
        for (int64_t s = 0; s < Sx; ++s) {
            occupancy[ext[s]] += std::exp(alpha_t[s] + beta_hat[s] + nll);
            beta[s] = beta_hat[s] + lpt[ext[s]];
        }
        const R* y = probs + row(t);
        R* g = grad + row(t);
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
EXPORT int ctc_max_threads() { return omp_get_max_threads(); }

// importable as a module (setuptools builds it as one); the entry points go through ctypes
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctc", nullptr, -1, nullptr,
                                    nullptr, nullptr, nullptr, nullptr};
PyMODINIT_FUNC PyInit__ctc(void) { return PyModule_Create(&module); }
