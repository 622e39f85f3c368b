/* Measured fp32 peak of this machine: independent FMA chains on every core (OpenMP).
   Built and run by bench/index.ts; prints the best GFLOP/s of argv[1] (default 3) windows of
   about 40 ms each. */
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>

#define CHAINS 16
#define WIDTH 16

int main(int argc, char **argv) {
  const long iters = 200000000;
  const int reps = argc > 1 ? atoi(argv[1]) : 3;
  double best = 0;
  for (int rep = 0; rep < reps; rep++) {
    double t0 = omp_get_wtime();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
      float acc[CHAINS][WIDTH];
      for (int c = 0; c < CHAINS; c++)
        for (int w = 0; w < WIDTH; w++) acc[c][w] = 1.0f + 1e-7f * (float)(c * WIDTH + w);
      const float m = 0.999999f, a = 1e-7f;
      for (long i = 0; i < iters / CHAINS; i++)
        for (int c = 0; c < CHAINS; c++)
#pragma omp simd
          for (int w = 0; w < WIDTH; w++) acc[c][w] = acc[c][w] * m + a;
      for (int c = 0; c < CHAINS; c++)
        for (int w = 0; w < WIDTH; w++) sink += acc[c][w];
    }
    double dt = omp_get_wtime() - t0;
    double flops = 2.0 * (double)(iters / CHAINS) * CHAINS * WIDTH * omp_get_max_threads();
    double g = flops / dt / 1e9;
    if (g > best) best = g;
    if (sink == 12345.0f) printf("!");
  }
  printf("%.1f\n", best);
  return 0;
}
