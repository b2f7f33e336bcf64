// float32 matrix products for XLA:CPU as an XLA FFI custom call: OpenBLAS's single-threaded sgemm, called on
// row blocks (or on the matrices of a batch) spread over XLA's own intra-op thread pool.
//
// Why (benchmarks/NOTES.md, 2026-12-03): on a 2-core CPU the training step's matrix products are small
// (768 x 128 x 512, and 48 attention heads of 64 x 32 x 64). XLA:CPU's own kernels run them at 40-100 GFLOP/s
// because they split each product over the two threads with a fork/join that costs more than the product;
// one sgemm per thread on independent blocks, with the calling thread taking blocks itself, does not.
//
// C = op(A) · op(B), row-major, op = identity or transpose (attributes trans_a, trans_b); any leading batch
// dimensions, the same on A, B and C. No threads of OpenBLAS's own run: it is set to one thread at init.
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define JF_PAUSE() _mm_pause()
#else
#define JF_PAUSE() ((void)0)
#endif

namespace ffi = xla::ffi;

namespace {

using sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
using set_threads_t = void (*)(int);
sgemm_t g_sgemm = nullptr;

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Rows [r0, r1) of C = op(A) op(B) for one M x K by K x N product.
void RowBlock(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
              int64_t r0, int64_t r1) {
  const float* a = ta ? A + r0 : A + r0 * K;
  g_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(r1 - r0),
          static_cast<int>(N), static_cast<int>(K), 1.0f, a, static_cast<int>(ta ? M : K), B,
          static_cast<int>(tb ? K : N), 0.0f, C + r0 * N, static_cast<int>(N));
}

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("jaxformer gemm: no BLAS loaded (jf_gemm_init)");
  auto ad = a.dimensions(), bd = b.dimensions();
  const size_t ra = ad.size(), rb = bd.size();
  if (ra < 2 || ra != rb) return ffi::Error::InvalidArgument("jaxformer gemm: operands need equal ranks >= 2");
  const int64_t M = trans_a ? ad[ra - 1] : ad[ra - 2], K = trans_a ? ad[ra - 2] : ad[ra - 1];
  const int64_t N = trans_b ? bd[rb - 2] : bd[rb - 1];
  if ((trans_b ? bd[rb - 1] : bd[rb - 2]) != K)
    return ffi::Error::InvalidArgument("jaxformer gemm: contracting dimensions differ");
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < ra; ++i) {
    if (ad[i] != bd[i]) return ffi::Error::InvalidArgument("jaxformer gemm: batch dimensions differ");
    batch *= ad[i];
  }
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (M > kMax || N > kMax || K > kMax || M * K > kMax || K * N > kMax || M * N > kMax)
    return ffi::Error::InvalidArgument("jaxformer gemm: a matrix exceeds 32-bit BLAS indexing");
  const float* A = a.typed_data();
  const float* B = b.typed_data();
  float* C = c->typed_data();
  if (batch == 0 || M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) {
    for (int64_t i = 0; i < batch * M * N; ++i) C[i] = 0.0f;
    return ffi::Error::Success();
  }

  int64_t threads = pool.num_threads();
  if (threads < 1) threads = 1;
  // Work units: whole matrices when a batch has enough of them, else row blocks of at least 16 rows.
  int64_t row_blocks = batch >= threads ? 1 : threads;
  if (M < 16 * row_blocks) row_blocks = M >= 32 ? M / 16 : 1;
  const int64_t units = batch * row_blocks;
  auto unit = [=](int64_t i) {
    const int64_t m = i / row_blocks, j = i % row_blocks;
    const int64_t r0 = M * j / row_blocks, r1 = M * (j + 1) / row_blocks;
    RowBlock(trans_a, trans_b, M, N, K, A + m * M * K, B + m * K * N, C + m * M * N, r0, r1);
  };
  if (threads == 1 || units == 1) {
    for (int64_t i = 0; i < units; ++i) unit(i);
    return ffi::Error::Success();
  }
  // Units are claimed from a shared counter by the calling thread and by helper tasks on the pool. The caller
  // only ever waits for units another thread has claimed and is running, so no wait depends on a free thread.
  const int64_t chunk = units / (4 * threads) > 0 ? units / (4 * threads) : 1;
  auto progress = std::make_shared<Progress>();  // outlives this call if a helper task starts late
  auto work = [=]() {
    for (;;) {
      const int64_t i0 = progress->next.fetch_add(chunk);
      if (i0 >= units) return;
      const int64_t i1 = i0 + chunk < units ? i0 + chunk : units;
      for (int64_t i = i0; i < i1; ++i) unit(i);
      progress->done.fetch_add(i1 - i0, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min(threads, (units + chunk - 1) / chunk) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(work));
  work();
  for (int spins = 0; progress->done.load(std::memory_order_acquire) < units; ++spins) {
    if (spins < 4096) JF_PAUSE(); else sched_yield();
  }
  return ffi::Error::Success();
}

}  // namespace

// Loads the BLAS: `library` (a path), its cblas_sgemm under `sgemm_symbol`, and sets it to one thread through
// `set_threads_symbol`. Returns 0, or 1 (dlopen failed), 2 (no sgemm symbol), 3 (no thread-count symbol).
extern "C" int jf_gemm_init(const char* library, const char* sgemm_symbol, const char* set_threads_symbol) {
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return 1;
  auto sgemm = reinterpret_cast<sgemm_t>(dlsym(handle, sgemm_symbol));
  if (sgemm == nullptr) return 2;
  auto set_threads = reinterpret_cast<set_threads_t>(dlsym(handle, set_threads_symbol));
  if (set_threads == nullptr) return 3;
  set_threads(1);
  g_sgemm = sgemm;
  return 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxformerGemmF32, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
