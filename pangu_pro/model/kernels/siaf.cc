// SIAF on the CPU in one pass over [rows, F] (pangu_pro.model.layers.SeriesInformedActivation):
//   forward   y = sum_t silu(a_t * x + b_t)
//   backward  dx = sum_t g_t * a_t,  da_t = sum_rows g_t * x,  db_t = sum_rows g_t,
//             g_t = dy * silu'(z_t),  silu'(z) = s (1 + z (1 - s)),  s = sigmoid(z),  z_t = a_t * x + b_t
// MindSpore 2.9 has no element-wise fusion on the CPU: as primitives this is 4n - 1 passes forward and,
// backward, 4n reductions over rows, each a kernel. Signature: MindSpore's Custom "aot" CPU kernels.
// Built by pangu_pro.model.kernels with exact IEEE arithmetic (no -ffast-math: its reciprocal and
// finite-math shortcuts gave NaN for z <= -89 and wrong gradients for large z).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

// glibc's vectorised expf (libmvec), which math.h announces only under -ffast-math; declared here so
// that the loops below vectorise with exact IEEE arithmetic everywhere else.
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));

namespace {

// sigmoid(z) from e = exp(-|z|) in (0, 1]: no overflow for any finite z
inline float sigmoid(float z) {
  const float e = expf(-std::fabs(z));
  return (z >= 0.0f ? 1.0f : e) / (1.0f + e);
}

constexpr int64_t kParallelElements = 1 << 16;  // below this, threads cost more than they save

// OpenMP threads for n elements: at most one per kParallelElements, so that a many-core host does not
// wake every core (beside MindSpore's own pool) for a small tensor
int threads_for(int64_t n) {
  const int64_t useful = n / kParallelElements;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), useful)));
}

int64_t leading_rows(int ndim, const int64_t *shape) {
  int64_t rows = 1;
  for (int i = 0; i < ndim - 1; ++i) rows *= shape[i];
  return rows;
}

}  // namespace

// inputs x [..., F], a [n, F], b [n, F]; output y [..., F]
extern "C" int SiafForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *a = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t f = shapes[0][ndims[0] - 1], rows = leading_rows(ndims[0], shapes[0]), terms = shapes[1][0];
#pragma omp parallel for num_threads(threads_for(rows * f)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * f;
    float *yr = y + r * f;
    for (int64_t c = 0; c < f; ++c) yr[c] = 0.0f;
    for (int64_t t = 0; t < terms; ++t) {
      const float *at = a + t * f, *bt = b + t * f;
#pragma omp simd
      for (int64_t c = 0; c < f; ++c) {
        const float z = at[c] * xr[c] + bt[c];
        yr[c] += z * sigmoid(z);
      }
    }
  }
  return 0;
}

// inputs x [..., F], a [n, F], b [n, F], dy [..., F]; outputs dx [..., F], da [n, F], db [n, F]
extern "C" int SiafBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  if (nparam != 7) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *a = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *da = static_cast<float *>(params[5]);
  float *db = static_cast<float *>(params[6]);
  const int64_t f = shapes[0][ndims[0] - 1], rows = leading_rows(ndims[0], shapes[0]), terms = shapes[1][0];
  const int64_t table = terms * f;
  const int threads = threads_for(rows * f);
  // per-thread sums of da and db in double: a fixed order per thread, then a fixed-order total
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * table, 0.0);
#pragma omp parallel num_threads(threads)
  {
    double *sum_a = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * table;
    double *sum_b = sum_a + table;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *xr = x + r * f, *gr = dy + r * f;
      float *dxr = dx + r * f;
      for (int64_t c = 0; c < f; ++c) dxr[c] = 0.0f;
      for (int64_t t = 0; t < terms; ++t) {
        const float *at = a + t * f, *bt = b + t * f;
        double *sat = sum_a + t * f, *sbt = sum_b + t * f;
#pragma omp simd
        for (int64_t c = 0; c < f; ++c) {
          const float z = at[c] * xr[c] + bt[c];
          const float s = sigmoid(z);
          const float g = gr[c] * s * (1.0f + z * (1.0f - s));
          dxr[c] += g * at[c];
          sat[c] += g * xr[c];
          sbt[c] += g;
        }
      }
    }
  }
  for (int64_t i = 0; i < table; ++i) {
    double total_a = 0.0, total_b = 0.0;
    for (int t = 0; t < threads; ++t) {
      total_a += partial[static_cast<size_t>(t) * 2 * table + i];
      total_b += partial[static_cast<size_t>(t) * 2 * table + table + i];
    }
    da[i] = static_cast<float>(total_a);
    db[i] = static_cast<float>(total_b);
  }
  return 0;
}
