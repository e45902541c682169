// t1_jax's CPU kernel for few-row float32 products, an XLA FFI handler (t1_jax/model/cpu_kernel.py builds and
// registers it).
//
//   out[m, n] = sum_c x[m, c] * w[n, c]      x [M, C] (a few activation rows), w [N, C] (a whole weight matrix)
//
// A decode step is a chain of these: a handful of tokens against every weight of every layer, so its cost is the
// time to read the weights once. The arithmetic (2 M flops per weight read) is a fraction of what a core can do; what
// decides the speed is keeping enough reads in flight. XLA's fused multiply-reduce reaches ~70% of a plain sum's
// bandwidth on the hosts we measured; the difference is the hardware prefetcher, which does not run far enough
// ahead of a loop that also computes. This kernel issues its own prefetches kPrefetchBytes ahead of the weight rows
// it reads (docs/benchmarks.md, "Decode": the distances we measured).
//
// Work split: the weight rows are cut into one contiguous range per thread of XLA's intra-op pool (the caller thread
// takes ranges too, and waits only for ranges some thread has claimed, so it never waits on a task that has not
// started). Every output element is computed by one thread in one fixed order, so results do not depend on the
// number of threads. Needs AVX2 and FMA (checked at run time: t1_few_rows_supported).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPrefetchBytes = 16 * 1024;  // how far ahead of the rows being read the prefetches run
constexpr int64_t kBlockRows = 8;              // weight rows kept in L1 while every activation tile uses them

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Rows [m0, m0 + MT) of x against weight rows [n0, n1), WR weight rows at a time (the last ones one at a time).
template <int MT, int WR>
__attribute__((target("avx2,fma"))) void Tile(const float* x, const float* w, float* out, int64_t n_total,
                                             int64_t c_total, int64_t m0, int64_t n0, int64_t n1) {
  const int64_t c8 = c_total & ~int64_t{7};
  const int64_t ahead = kPrefetchBytes / sizeof(float);
  for (int64_t n = n0; n + WR <= n1; n += WR) {
    const float* w_rc = w + n * c_total;
    __m256 acc[WR][MT];
    for (int r = 0; r < WR; ++r)
      for (int i = 0; i < MT; ++i) acc[r][i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < c8; c += 8) {
      __m256 w_r[WR];
      for (int r = 0; r < WR; ++r) {
        // One prefetch per 64-byte line (every other 8-float step); prefetches do not fault past the end.
        if ((c & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(w_rc + r * c_total + c + ahead), _MM_HINT_T0);
        w_r[r] = _mm256_loadu_ps(w_rc + r * c_total + c);
      }
      for (int i = 0; i < MT; ++i) {
        const __m256 x_i = _mm256_loadu_ps(x + (m0 + i) * c_total + c);
        for (int r = 0; r < WR; ++r) acc[r][i] = _mm256_fmadd_ps(w_r[r], x_i, acc[r][i]);
      }
    }
    for (int r = 0; r < WR; ++r) {
      for (int i = 0; i < MT; ++i) {
        float s = HorizontalSum(acc[r][i]);
        for (int64_t c = c8; c < c_total; ++c) s += w_rc[r * c_total + c] * x[(m0 + i) * c_total + c];
        out[(m0 + i) * n_total + n + r] = s;
      }
    }
  }
  if constexpr (WR > 1) {
    const int64_t done = n0 + (n1 - n0) / WR * WR;
    if (done < n1) Tile<MT, 1>(x, w, out, n_total, c_total, m0, done, n1);
  }
}

// Weight rows [n0, n1) against every row of x, in blocks of kBlockRows that stay in L1 across the row tiles.
void Rows(const float* x, const float* w, float* out, int64_t m_total, int64_t n_total, int64_t c_total, int64_t n0,
          int64_t n1) {
  for (int64_t b = n0; b < n1; b += kBlockRows) {
    const int64_t e = std::min(b + kBlockRows, n1);
    int64_t m = 0;
    for (; m + 4 <= m_total; m += 4) Tile<4, 2>(x, w, out, n_total, c_total, m, b, e);
    switch (m_total - m) {
      case 3: Tile<3, 2>(x, w, out, n_total, c_total, m, b, e); break;
      case 2: Tile<2, 2>(x, w, out, n_total, c_total, m, b, e); break;
      case 1: Tile<1, 2>(x, w, out, n_total, c_total, m, b, e); break;
      default: break;
    }
  }
}

// The ranges of one call, shared by the caller and the pool tasks (a task may start after the call returned: it
// then finds no range left, and the shared_ptr keeps this alive until it has looked).
struct Ranges {
  const float* x;
  const float* w;
  float* out;
  int64_t m_total, n_total, c_total, per_range, n_ranges;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};

  void Work() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n_ranges;) {
      const int64_t n0 = i * per_range;
      Rows(x, w, out, m_total, n_total, c_total, n0, std::min(n_total, n0 + per_range));
      finished.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error FewRows(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> out) {
  const auto x_dims = x.dimensions();
  const auto w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1])
    return ffi::Error::InvalidArgument("t1_few_rows: expected x [M, C] and w [N, C]");
  auto ranges = std::make_shared<Ranges>();
  ranges->x = x.typed_data();
  ranges->w = w.typed_data();
  ranges->out = out->typed_data();
  ranges->m_total = x_dims[0];
  ranges->n_total = w_dims[0];
  ranges->c_total = x_dims[1];
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // One contiguous range per thread (a long sequential stream each), rows rounded to the 2-row tile.
  ranges->per_range = std::max<int64_t>(2, ((ranges->n_total + threads - 1) / threads + 1) & ~int64_t{1});
  ranges->n_ranges = (ranges->n_total + ranges->per_range - 1) / ranges->per_range;
  for (int64_t t = 1; t < ranges->n_ranges; ++t) pool.Schedule([ranges] { ranges->Work(); });
  ranges->Work();
  while (ranges->finished.load(std::memory_order_acquire) < ranges->n_ranges) _mm_pause();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(T1FewRows, FewRows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

extern "C" int t1_few_rows_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
