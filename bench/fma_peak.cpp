// The machine's float32 multiply-add ceiling: GFLOP/s of independent 512-bit (or, without
// AVX-512, 256-bit) FMAs on registers, nothing from memory. No GEMM can run faster; bench/
// ceiling.py compiles this and reads a layer's rate as a share of it.
//
//   g++ -O2 -march=native -fopenmp fma_peak.cpp -o fma_peak && ./fma_peak THREADS REPEATS
//
// Prints one line per repeat: the GFLOP/s of all threads together.
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#ifdef __AVX512F__
typedef __m512 V;
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define LANES 16
#else
typedef __m256 V;
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define LANES 8
#endif

int main(int argc, char **argv) {
    const int nt = argc > 1 ? std::atoi(argv[1]) : 1, repeats = argc > 2 ? std::atoi(argv[2]) : 5;
    const long iters = 20000000;
    const int NACC = 24;  // independent chains: more than FMA latency x ports, as a GEMM tile
    for (int rep = 0; rep < repeats; rep++) {
        float sink = 0;
        auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : sink)
        {
            V a[NACC], b = SET(0.999f), c = SET(0.001f);
            for (int i = 0; i < NACC; i++) a[i] = SET(float(i));
            for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
                for (int i = 0; i < NACC; i++) a[i] = FMA(a[i], b, c);
            }
            for (int i = 0; i < NACC; i++)
                for (int l = 0; l < LANES; l++) sink += a[i][l];
        }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%.1f %g\n", 2.0 * LANES * NACC * iters * nt / s / 1e9, double(sink));
    }
    return 0;
}
