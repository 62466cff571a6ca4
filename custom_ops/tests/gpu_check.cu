// normexport_gpu_check: a stand-alone check of the CUDA kernels on a real GPU.
//
// Calls each op's CUDA launcher (ops/<op>/*_cuda.h) directly on device buffers
// (cudaMalloc, never managed memory) for seeded random inputs at a few shapes,
// float32 and float16, and compares with a double-precision CPU reference
// computed here (sharing no code with the kernels). Prints one line per case with
// the max abs / rel error and PASS/FAIL. A few cases put NaN / inf into the inputs: where
// the reference is not finite, the kernel must give NaN where it is NaN and the same
// infinity where it is +-inf.
//
// Exit status: 0 every case PASS; 1 a case FAILED (or a CUDA call failed);
//              2 bad arguments; 3 no usable CUDA device or driver
//              (cudaGetDeviceCount failed or found 0 devices).
//
// Adding an op: write `bool Check<Op>(Ctx&)` below (cases + reference, see
// CheckFrn) and one line in kChecks, guarded by NX_GPU_CHECK_<FOLDER> (CMake
// defines it when ops/<folder>/ holds both a *_cuda.h and a *.cu file).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "normexport/common.h"

#if defined(NX_GPU_CHECK_FILTER_RESPONSE_NORM)
#include "filter_response_norm/frn_cuda.h"
#endif
#if defined(NX_GPU_CHECK_GROUP_NORM)
#include "group_norm/gn_cuda.h"
#endif
#if defined(NX_GPU_CHECK_POSITIONAL_NORM)
#include "positional_norm/pono_cuda.h"
#endif
#if defined(NX_GPU_CHECK_ADAIN)
#include "adain/adain_cuda.h"
#endif
#if defined(NX_GPU_CHECK_SPADE)
#include "spade/spade_cuda.h"
#endif
#if defined(NX_GPU_CHECK_SWITCHABLE_NORM)
#include "switchable_norm/sn_cuda.h"
#endif

namespace {

using normexport::half;
using Vec = std::vector<double>;

constexpr int kExitPass = 0, kExitFail = 1, kExitUsage = 2, kExitNoDevice = 3;

// ---- context: stream, RNG, tallies --------------------------------------------------------
struct Ctx {
  cudaStream_t stream = nullptr;
  std::mt19937_64 rng{20251129};
  int cases = 0, failed = 0;
  bool verbose = false;
};

template <typename T> const char* DtypeName();
template <> const char* DtypeName<float>() { return "float32"; }
template <> const char* DtypeName<half>() { return "float16"; }

// tolerances of the GPU (float accumulation) vs the float64 reference on the same
// (T-rounded) inputs: |got - ref| <= atol + rtol * |ref|
template <typename T> struct Tol;
template <> struct Tol<float> { static constexpr double rtol = 1e-4, atol = 1e-5; };
template <> struct Tol<half> { static constexpr double rtol = 1e-2, atol = 2e-3; };

Vec Random(Ctx& ctx, size_t n, double scale = 1.0, double shift = 0.0) {
  std::normal_distribution<double> d(0.0, 1.0);
  Vec v(n);
  for (auto& x : v) x = d(ctx.rng) * scale + shift;
  return v;
}
Vec Uniform(Ctx& ctx, size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(n);
  for (auto& x : v) x = d(ctx.rng);
  return v;
}

// Round to T in place (the reference then sees exactly the values the kernel reads).
template <typename T>
Vec& Quantize(Vec& v) {
  for (auto& x : v) x = static_cast<double>(normexport::to_float(normexport::from_float<T>(static_cast<float>(x))));
  return v;
}

// ---- device buffers -----------------------------------------------------------------------
[[noreturn]] void CudaFatal(const char* what, cudaError_t e) {
  std::fprintf(stderr, "normexport_gpu_check: %s failed: %s (%s)\n", what, cudaGetErrorName(e), cudaGetErrorString(e));
  std::exit(kExitFail);
}
#define NX_CUDA_CALL(expr)                     \
  do {                                         \
    cudaError_t _e = (expr);                   \
    if (_e != cudaSuccess) CudaFatal(#expr, _e); \
  } while (0)

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_) NX_CUDA_CALL(cudaMalloc(&p_, n_ * sizeof(T)));
  }
  explicit DeviceBuffer(const Vec& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  void Upload(const Vec& host) {
    std::vector<T> tmp(host.size());
    for (size_t i = 0; i < host.size(); ++i) tmp[i] = normexport::from_float<T>(static_cast<float>(host[i]));
    if (n_) NX_CUDA_CALL(cudaMemcpy(p_, tmp.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  // NaN sentinel fill, so that an element the kernel never writes is caught
  void Poison() {
    if (n_) NX_CUDA_CALL(cudaMemset(p_, 0xff, n_ * sizeof(T)));
  }
  Vec Download() const {
    std::vector<T> tmp(n_);
    if (n_) NX_CUDA_CALL(cudaMemcpy(tmp.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    Vec out(n_);
    for (size_t i = 0; i < n_; ++i) out[i] = static_cast<double>(normexport::to_float(tmp[i]));
    return out;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- comparison ---------------------------------------------------------------------------
struct Errors {
  double max_abs = 0, max_rel = 0;
  int64_t bad = 0, n = 0;
};

template <typename T>
void Compare(const Vec& got, const Vec& ref, Errors& e) {
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i])) {  // NaN for NaN, the same infinity for +-inf
      const bool same = std::isnan(ref[i]) ? std::isnan(got[i]) : got[i] == ref[i];
      if (!same) ++e.bad, e.max_abs = INFINITY, e.max_rel = INFINITY;
      continue;
    }
    const double d = std::fabs(got[i] - ref[i]);
    const bool ok = std::isfinite(got[i]) && d <= Tol<T>::atol + Tol<T>::rtol * std::fabs(ref[i]);
    if (!ok) ++e.bad;
    const double dd = std::isfinite(got[i]) ? d : INFINITY;
    if (dd > e.max_abs) e.max_abs = dd;
    const double rel = dd / std::fmax(std::fabs(ref[i]), 1e-6);
    if (rel > e.max_rel) e.max_rel = rel;
  }
  e.n += static_cast<int64_t>(ref.size());
}

template <typename T>
void Report(Ctx& ctx, const char* op, const std::string& shape, int launch_err, const Errors& e) {
  ++ctx.cases;
  const bool pass = launch_err == 0 && e.bad == 0;
  if (!pass) ++ctx.failed;
  if (launch_err != 0) {
    std::printf("%-20s %-8s %-26s launch error %s (%s)  FAIL\n", op, DtypeName<T>(), shape.c_str(),
                cudaGetErrorName(static_cast<cudaError_t>(launch_err)),
                cudaGetErrorString(static_cast<cudaError_t>(launch_err)));
    return;
  }
  std::printf("%-20s %-8s %-26s max abs %.3e  max rel %.3e  (%lld/%lld outside rtol %.0e atol %.0e)  %s\n", op,
              DtypeName<T>(), shape.c_str(), e.max_abs, e.max_rel, static_cast<long long>(e.bad),
              static_cast<long long>(e.n), Tol<T>::rtol, Tol<T>::atol, pass ? "PASS" : "FAIL");
}

int Finish(Ctx& ctx, int launch_err) {
  if (launch_err != 0) return launch_err;
  return static_cast<int>(cudaStreamSynchronize(ctx.stream));
}

std::string Dims(std::initializer_list<int64_t> d) {
  std::string s = "(";
  for (auto it = d.begin(); it != d.end(); ++it) s += (it == d.begin() ? "" : ", ") + std::to_string(*it);
  return s + ")";
}

// (N, C, S) planes x per-plane moments in double
void Moments(const Vec& x, int64_t plane, int64_t p, double& mean, double& var) {
  double s = 0;
  for (int64_t i = 0; i < plane; ++i) s += x[p * plane + i];
  mean = s / plane;
  double q = 0;
  for (int64_t i = 0; i < plane; ++i) q += (x[p * plane + i] - mean) * (x[p * plane + i] - mean);
  var = q / plane;
}

// Cases shared by the per-(N, C, S) ops: odd sizes, a plane longer than one block's
// sweep, a single element, and more planes than one wave.
struct NCS {
  int64_t n, c, s;
};
const NCS kShapes[] = {{1, 1, 1}, {2, 3, 7}, {2, 5, 63}, {3, 17, 1023}, {2, 8, 65537}, {4, 96, 33}};
const NCS kHalfShapes[] = {{2, 5, 63}, {2, 16, 4099}};

// ---- FilterResponseNorm -------------------------------------------------------------------
#if defined(NX_GPU_CHECK_FILTER_RESPONSE_NORM)
template <typename T>
void FrnCase(Ctx& ctx, NCS sh, bool tlu) {
  const int64_t planes = sh.n * sh.c;
  const float eps = 1e-6f;
  Vec x = Random(ctx, planes * sh.s, 2.0, 0.5), g = Uniform(ctx, sh.c, 0.5, 1.5), b = Random(ctx, sh.c, 0.3),
      tau = Random(ctx, sh.c, 0.3);
  Quantize<T>(x), Quantize<T>(g), Quantize<T>(b), Quantize<T>(tau);
  DeviceBuffer<T> dx(x), dy(x.size()), dg(g), db(b), dt(tau);
  dy.Poison();
  int err = normexport::frn::LaunchFilterResponseNorm<T>(ctx.stream, dx.get(), dy.get(), dg.get(), db.get(),
                                                         tlu ? dt.get() : nullptr, planes, sh.c, sh.s, eps, tlu);
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t c = p % sh.c;
      double nu2 = 0;
      for (int64_t i = 0; i < sh.s; ++i) nu2 += x[p * sh.s + i] * x[p * sh.s + i];
      const double inv = 1.0 / std::sqrt(nu2 / sh.s + static_cast<double>(eps));
      for (int64_t i = 0; i < sh.s; ++i) {
        double y = g[c] * x[p * sh.s + i] * inv + b[c];
        ref[p * sh.s + i] = tlu ? std::fmax(y, tau[c]) : y;
      }
    }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "FilterResponseNorm", Dims({sh.n, sh.c, sh.s}) + (tlu ? " tlu" : " no-tlu"), err, e);
}

// channels last: X (N, S, C), element (n, s, c) at (n * S + s) * C + c
template <typename T>
void FrnNhwcCase(Ctx& ctx, NCS sh, bool tlu) {
  const float eps = 1e-6f;
  Vec x = Random(ctx, sh.n * sh.s * sh.c, 2.0, 0.5), g = Uniform(ctx, sh.c, 0.5, 1.5), b = Random(ctx, sh.c, 0.3),
      tau = Random(ctx, sh.c, 0.3);
  Quantize<T>(x), Quantize<T>(g), Quantize<T>(b), Quantize<T>(tau);
  DeviceBuffer<T> dx(x), dy(x.size()), dg(g), db(b), dt(tau);
  const size_t scratch_bytes = normexport::frn::FilterResponseNormNhwcScratchBytes(sh.n, sh.c, sh.s);
  DeviceBuffer<unsigned char> scratch(scratch_bytes);
  dy.Poison();
  int err = normexport::frn::LaunchFilterResponseNormNhwc<T>(ctx.stream, dx.get(), dy.get(), dg.get(), db.get(),
                                                             tlu ? dt.get() : nullptr, sh.n, sh.c, sh.s, eps, tlu,
                                                             scratch.get());
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    for (int64_t n = 0; n < sh.n; ++n)
      for (int64_t c = 0; c < sh.c; ++c) {
        double nu2 = 0;
        for (int64_t i = 0; i < sh.s; ++i) nu2 += std::pow(x[(n * sh.s + i) * sh.c + c], 2);
        const double inv = 1.0 / std::sqrt(nu2 / sh.s + static_cast<double>(eps));
        for (int64_t i = 0; i < sh.s; ++i) {
          const int64_t k = (n * sh.s + i) * sh.c + c;
          const double y = g[c] * x[k] * inv + b[c];
          ref[k] = tlu ? std::fmax(y, tau[c]) : y;
        }
      }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "FilterResponseNorm",
            "nhwc " + Dims({sh.n, sh.s, sh.c}) + (tlu ? " tlu" : " no-tlu") + (scratch_bytes ? " split" : ""), err, e);
}

bool CheckFrn(Ctx& ctx) {
  for (const NCS& s : kShapes) FrnCase<float>(ctx, s, true);
  FrnCase<float>(ctx, {2, 5, 63}, false);
  for (const NCS& s : kHalfShapes) FrnCase<half>(ctx, s, true);
  // channels last: C below / at / above one warp's 32 channels, one row, long columns
  for (const NCS& s : kShapes) FrnNhwcCase<float>(ctx, s, true);
  FrnNhwcCase<float>(ctx, {2, 33, 63}, false);
  FrnNhwcCase<float>(ctx, {3, 200, 1}, true);
  for (const NCS& s : kHalfShapes) FrnNhwcCase<half>(ctx, s, true);
  return true;
}
#endif

// ---- GroupNorm ----------------------------------------------------------------------------
#if defined(NX_GPU_CHECK_GROUP_NORM)
template <typename T>
void GnCase(Ctx& ctx, NCS sh, int64_t groups, int act) {
  const float eps = 1e-5f;
  Vec x = Random(ctx, sh.n * sh.c * sh.s, 2.0, 0.5), sc = Uniform(ctx, sh.c, 0.5, 1.5), bi = Random(ctx, sh.c, 0.3);
  Quantize<T>(x), Quantize<T>(sc), Quantize<T>(bi);
  DeviceBuffer<T> dx(x), dy(x.size()), ds(sc), db(bi);
  dy.Poison();
  int err = normexport::gn::LaunchGroupNorm<T>(ctx.stream, dx.get(), dy.get(), ds.get(), db.get(), sh.n, sh.c, sh.s,
                                               groups, eps, act);
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    const int64_t group_size = sh.c / groups * sh.s;
    for (int64_t p = 0; p < sh.n * groups; ++p) {
      double mean, var;
      Moments(x, group_size, p, mean, var);
      const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
      for (int64_t i = 0; i < group_size; ++i) {
        const int64_t idx = p * group_size + i, c = (idx / sh.s) % sh.c;
        double y = sc[c] * (x[idx] - mean) * inv + bi[c];
        if (act == 1) y = std::fmax(y, 0.0);
        if (act == 2) y = y / (1.0 + std::exp(-y));
        ref[idx] = y;
      }
    }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "GroupNorm", Dims({sh.n, sh.c, sh.s}) + " g" + std::to_string(groups) + " act" + std::to_string(act),
            err, e);
}

// channels last: X (N, S, C), element (n, s, c) at (n * S + s) * C + c
template <typename T>
void GnNhwcCase(Ctx& ctx, NCS sh, int64_t groups, int act) {
  const float eps = 1e-5f;
  Vec x = Random(ctx, sh.n * sh.s * sh.c, 2.0, 0.5), sc = Uniform(ctx, sh.c, 0.5, 1.5), bi = Random(ctx, sh.c, 0.3);
  Quantize<T>(x), Quantize<T>(sc), Quantize<T>(bi);
  DeviceBuffer<T> dx(x), dy(x.size()), ds(sc), db(bi);
  const size_t scratch_bytes = normexport::gn::GroupNormNhwcScratchBytes(sh.n, sh.c, sh.s, groups);
  DeviceBuffer<unsigned char> scratch(scratch_bytes);
  dy.Poison();
  int err = normexport::gn::LaunchGroupNormNhwc<T>(ctx.stream, dx.get(), dy.get(), ds.get(), db.get(), sh.n, sh.c,
                                                   sh.s, groups, eps, act, scratch.get());
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    const int64_t cpg = sh.c / groups;
    for (int64_t n = 0; n < sh.n; ++n)
      for (int64_t g = 0; g < groups; ++g) {
        double s = 0, q = 0;
        for (int64_t i = 0; i < sh.s; ++i)
          for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) s += x[(n * sh.s + i) * sh.c + c];
        const double mean = s / static_cast<double>(cpg * sh.s);
        for (int64_t i = 0; i < sh.s; ++i)
          for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) q += std::pow(x[(n * sh.s + i) * sh.c + c] - mean, 2);
        const double inv = 1.0 / std::sqrt(q / static_cast<double>(cpg * sh.s) + static_cast<double>(eps));
        for (int64_t i = 0; i < sh.s; ++i)
          for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
            const int64_t k = (n * sh.s + i) * sh.c + c;
            double y = sc[c] * (x[k] - mean) * inv + bi[c];
            if (act == 1) y = std::fmax(y, 0.0);
            if (act == 2) y = y / (1.0 + std::exp(-y));
            ref[k] = y;
          }
      }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "GroupNorm",
            "nhwc " + Dims({sh.n, sh.s, sh.c}) + " g" + std::to_string(groups) + " act" + std::to_string(act) +
                (scratch_bytes ? " split" : ""),
            err, e);
}

bool CheckGroupNorm(Ctx& ctx) {
  GnCase<float>(ctx, {1, 1, 1}, 1, 0);
  GnCase<float>(ctx, {2, 6, 7}, 3, 0);
  GnCase<float>(ctx, {3, 15, 63}, 5, 1);
  GnCase<float>(ctx, {2, 32, 1023}, 8, 2);
  GnCase<float>(ctx, {2, 8, 65537}, 2, 0);
  GnCase<half>(ctx, {2, 6, 63}, 3, 0);
  GnCase<half>(ctx, {2, 16, 4099}, 4, 2);
  // channels last (shapes as {n, c, s}): one channel per group, odd group widths below and
  // above a warp, a group wider than the block, one row, long columns
  GnNhwcCase<float>(ctx, {1, 1, 1}, 1, 0);
  GnNhwcCase<float>(ctx, {2, 6, 7}, 3, 0);
  GnNhwcCase<float>(ctx, {3, 15, 63}, 5, 1);
  GnNhwcCase<float>(ctx, {2, 32, 1023}, 32, 2);
  GnNhwcCase<float>(ctx, {2, 96, 257}, 2, 0);
  GnNhwcCase<float>(ctx, {2, 1100, 3}, 1, 2);
  GnNhwcCase<float>(ctx, {4, 64, 1}, 8, 0);
  GnNhwcCase<float>(ctx, {2, 8, 65537}, 2, 0);
  GnNhwcCase<half>(ctx, {2, 6, 63}, 3, 0);
  GnNhwcCase<half>(ctx, {2, 16, 4099}, 4, 2);
  return true;
}
#endif

// ---- PositionalNorm -----------------------------------------------------------------------
#if defined(NX_GPU_CHECK_POSITIONAL_NORM)
// nonfinite (n >= 2, c >= 2, s >= 5): NaN at one position, +inf in channel 0 at another
// (the kernel's shift), +inf and -inf at a third, -inf in the last channel at a fourth.
// offset: the inputs' common mean.
template <typename T>
void PonoCase(Ctx& ctx, NCS sh, bool unbiased, bool nonfinite = false, double offset = 0.5) {
  const float eps = 1e-5f;
  Vec x = Random(ctx, sh.n * sh.c * sh.s, 2.0, offset);
  if (nonfinite) {
    auto at = [&](int64_t n, int64_t c, int64_t p) -> double& { return x[(n * sh.c + c) * sh.s + p]; };
    at(0, sh.c - 1, 1) = NAN;
    at(0, 0, 2) = INFINITY;
    at(1, 0, 3) = INFINITY, at(1, 1, 3) = -INFINITY;
    at(1, sh.c - 1, 4) = -INFINITY;
  }
  Quantize<T>(x);
  DeviceBuffer<T> dx(x), dy(x.size()), dm(sh.n * sh.s), dsd(sh.n * sh.s);
  dy.Poison(), dm.Poison(), dsd.Poison();
  int err = normexport::pono::LaunchPositionalNorm<T>(ctx.stream, dx.get(), dy.get(), dm.get(), dsd.get(), sh.n, sh.c,
                                                      sh.s, eps, unbiased);
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ry(x.size()), rm(sh.n * sh.s), rs(sh.n * sh.s);
    for (int64_t n = 0; n < sh.n; ++n)
      for (int64_t p = 0; p < sh.s; ++p) {
        double s = 0;
        for (int64_t c = 0; c < sh.c; ++c) s += x[(n * sh.c + c) * sh.s + p];
        const double mean = s / sh.c;
        double q = 0;
        for (int64_t c = 0; c < sh.c; ++c) q += std::pow(x[(n * sh.c + c) * sh.s + p] - mean, 2);
        const double sd = std::sqrt(q / (sh.c - (unbiased ? 1 : 0)) + static_cast<double>(eps));
        rm[n * sh.s + p] = mean, rs[n * sh.s + p] = sd;
        for (int64_t c = 0; c < sh.c; ++c) ry[(n * sh.c + c) * sh.s + p] = (x[(n * sh.c + c) * sh.s + p] - mean) / sd;
      }
    Compare<T>(dy.Download(), ry, e);
    Compare<T>(dm.Download(), rm, e);
    Compare<T>(dsd.Download(), rs, e);
  }
  Report<T>(ctx, "PositionalNorm",
            Dims({sh.n, sh.c, sh.s}) + (unbiased ? " unbiased" : " biased") + (nonfinite ? " nan/inf" : "") +
                (offset != 0.5 ? " mean " + std::to_string(static_cast<int>(offset)) : ""),
            err, e);
}

bool CheckPositionalNorm(Ctx& ctx) {
  PonoCase<float>(ctx, {1, 2, 1}, true);
  PonoCase<float>(ctx, {2, 3, 7}, true);
  PonoCase<float>(ctx, {2, 5, 63}, false);
  PonoCase<float>(ctx, {3, 17, 1023}, true);
  PonoCase<float>(ctx, {1, 513, 257}, true);
  PonoCase<float>(ctx, {2, 64, 65537}, true);
  PonoCase<half>(ctx, {2, 5, 63}, true);
  PonoCase<half>(ctx, {2, 16, 4099}, false);
  PonoCase<float>(ctx, {4, 96, 33}, true, false, 1000.0);  // a large common mean (the shift)
  PonoCase<float>(ctx, {2, 5, 63}, true, true);
  PonoCase<half>(ctx, {2, 5, 63}, false, true);
  return true;
}
#endif

// ---- AdaIN --------------------------------------------------------------------------------
#if defined(NX_GPU_CHECK_ADAIN)
template <typename T>
void AdainCase(Ctx& ctx, NCS sh, int64_t style_plane, float alpha) {
  const float eps = 1e-5f;
  const int64_t planes = sh.n * sh.c;
  Vec x = Random(ctx, planes * sh.s, 2.0, 0.5), st = Random(ctx, planes * style_plane, 1.5, -0.7);
  Quantize<T>(x), Quantize<T>(st);
  DeviceBuffer<T> dx(x), ds(st), dy(x.size());
  dy.Poison();
  int err = normexport::adain::LaunchAdaIN<T>(ctx.stream, dx.get(), ds.get(), dy.get(), planes, sh.s, style_plane,
                                              eps, alpha);
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    for (int64_t p = 0; p < planes; ++p) {
      double mc, vc, ms, vs;
      Moments(x, sh.s, p, mc, vc);
      Moments(st, style_plane, p, ms, vs);
      const double k = std::sqrt(vs + static_cast<double>(eps)) / std::sqrt(vc + static_cast<double>(eps));
      for (int64_t i = 0; i < sh.s; ++i) {
        const double v = x[p * sh.s + i];
        ref[p * sh.s + i] = alpha * (k * (v - mc) + ms) + (1.0 - alpha) * v;
      }
    }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "AdaIN", Dims({sh.n, sh.c, sh.s}) + " style " + std::to_string(style_plane) +
                              " a" + std::to_string(alpha).substr(0, 4), err, e);
}

// channels last: content (N, S, C), style (N, S', C), element (n, s, c) at (n * S + s) * C + c
template <typename T>
void AdainNhwcCase(Ctx& ctx, NCS sh, int64_t style_plane, float alpha) {
  const float eps = 1e-5f;
  Vec x = Random(ctx, sh.n * sh.s * sh.c, 2.0, 0.5), st = Random(ctx, sh.n * style_plane * sh.c, 1.5, -0.7);
  Quantize<T>(x), Quantize<T>(st);
  DeviceBuffer<T> dx(x), ds(st), dy(x.size());
  const size_t scratch_bytes = normexport::adain::AdaINNhwcScratchBytes(sh.n, sh.c, sh.s, style_plane);
  DeviceBuffer<unsigned char> scratch(scratch_bytes);
  dy.Poison();
  int err = normexport::adain::LaunchAdaINNhwc<T>(ctx.stream, dx.get(), ds.get(), dy.get(), sh.n, sh.c, sh.s,
                                                  style_plane, eps, alpha, scratch.get());
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(x.size());
    auto column = [&](const Vec& v, int64_t n, int64_t c, int64_t rows, double& mean, double& var) {
      double s = 0, q = 0;
      for (int64_t i = 0; i < rows; ++i) s += v[(n * rows + i) * sh.c + c];
      mean = s / rows;
      for (int64_t i = 0; i < rows; ++i) q += std::pow(v[(n * rows + i) * sh.c + c] - mean, 2);
      var = q / rows;
    };
    for (int64_t n = 0; n < sh.n; ++n)
      for (int64_t c = 0; c < sh.c; ++c) {
        double mc, vc, ms, vs;
        column(x, n, c, sh.s, mc, vc);
        column(st, n, c, style_plane, ms, vs);
        const double k = std::sqrt(vs + static_cast<double>(eps)) / std::sqrt(vc + static_cast<double>(eps));
        for (int64_t i = 0; i < sh.s; ++i) {
          const int64_t idx = (n * sh.s + i) * sh.c + c;
          ref[idx] = alpha * (k * (x[idx] - mc) + ms) + (1.0 - alpha) * x[idx];
        }
      }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "AdaIN", "nhwc " + Dims({sh.n, sh.s, sh.c}) + " style " + std::to_string(style_plane) + " a" +
                              std::to_string(alpha).substr(0, 4) + (scratch_bytes ? " split" : ""), err, e);
}

bool CheckAdaIN(Ctx& ctx) {
  AdainCase<float>(ctx, {1, 1, 1}, 1, 1.0f);
  AdainCase<float>(ctx, {2, 3, 7}, 13, 1.0f);
  AdainCase<float>(ctx, {2, 5, 63}, 91, 0.75f);
  AdainCase<float>(ctx, {3, 17, 1023}, 257, 1.0f);
  AdainCase<float>(ctx, {2, 8, 65537}, 4099, 0.5f);
  AdainCase<half>(ctx, {2, 5, 63}, 35, 1.0f);
  AdainCase<half>(ctx, {2, 16, 4099}, 1023, 0.75f);
  // channels last (shapes as {n, c, s}): C below / above one warp's 32 channels, one row
  AdainNhwcCase<float>(ctx, {1, 1, 1}, 1, 1.0f);
  AdainNhwcCase<float>(ctx, {2, 3, 7}, 13, 1.0f);
  AdainNhwcCase<float>(ctx, {2, 5, 63}, 91, 0.75f);
  AdainNhwcCase<float>(ctx, {3, 40, 1023}, 257, 1.0f);
  AdainNhwcCase<float>(ctx, {2, 8, 65537}, 4099, 0.5f);
  AdainNhwcCase<float>(ctx, {2, 200, 1}, 3, 1.0f);
  AdainNhwcCase<float>(ctx, {2, 4, 63}, 20000, 0.9f);  // only the style split
  AdainNhwcCase<half>(ctx, {2, 5, 63}, 35, 1.0f);
  AdainNhwcCase<half>(ctx, {2, 16, 4099}, 1023, 0.75f);
  return true;
}
#endif

// ---- SPADE (normalize + modulate) ---------------------------------------------------------
#if defined(NX_GPU_CHECK_SPADE)
// nonfinite (n * c >= 3, s >= 6): a NaN in x of plane 1 (the whole plane NaN in instance
// mode) and +inf in beta_map of plane 2.
template <typename T>
void SpadeCase(Ctx& ctx, NCS sh, int mode, bool nonfinite = false) {
  const float eps = 1e-5f;
  const int64_t planes = sh.n * sh.c, total = planes * sh.s;
  Vec x = Random(ctx, total, 2.0, 0.5), gm = Random(ctx, total, 0.3), bm = Random(ctx, total, 0.3),
      rm = Random(ctx, sh.c, 0.1, 0.5), rv = Uniform(ctx, sh.c, 3.0, 5.0);
  if (nonfinite) x[1 * sh.s + 3] = NAN, bm[2 * sh.s + 5] = INFINITY;
  Quantize<T>(x), Quantize<T>(gm), Quantize<T>(bm), Quantize<T>(rm), Quantize<T>(rv);
  DeviceBuffer<T> dx(x), dg(gm), db(bm), drm(rm), drv(rv), dy(total);
  dy.Poison();
  int err = normexport::spade::LaunchSpade<T>(ctx.stream, dx.get(), dg.get(), db.get(), drm.get(), drv.get(), dy.get(),
                                              planes, sh.c, sh.s, eps, mode);
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    Vec ref(total);
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t c = p % sh.c;
      double mean = rm[c], var = rv[c];
      if (mode == 1) Moments(x, sh.s, p, mean, var);
      const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
      for (int64_t i = 0; i < sh.s; ++i) {
        const int64_t k = p * sh.s + i;
        ref[k] = (x[k] - mean) * inv * (1.0 + gm[k]) + bm[k];
      }
    }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "SPADE", Dims({sh.n, sh.c, sh.s}) + (mode ? " instance" : " batch") + (nonfinite ? " nan/inf" : ""),
            err, e);
}

bool CheckSpade(Ctx& ctx) {
  for (int mode = 0; mode < 2; ++mode) {
    SpadeCase<float>(ctx, {1, 1, 1}, mode);
    SpadeCase<float>(ctx, {2, 3, 7}, mode);
    SpadeCase<float>(ctx, {3, 17, 1023}, mode);
    SpadeCase<float>(ctx, {2, 8, 65537}, mode);
    SpadeCase<half>(ctx, {2, 5, 63}, mode);
    SpadeCase<float>(ctx, {4, 96, 33}, mode);
    SpadeCase<float>(ctx, {2, 5, 63}, mode, true);
  }
  SpadeCase<half>(ctx, {2, 16, 4099}, 1);
  SpadeCase<half>(ctx, {2, 5, 63}, 1, true);
  return true;
}
#endif

// ---- SwitchableNorm (eval form) -----------------------------------------------------------
#if defined(NX_GPU_CHECK_SWITCHABLE_NORM)
Vec Softmax(const Vec& v) {
  double m = -INFINITY, s = 0;
  for (double x : v) m = std::fmax(m, x);
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i) s += (out[i] = std::exp(v[i] - m));
  for (auto& x : out) x /= s;
  return out;
}

// in: the IN branch (rank >= 3 in the op, also with one spatial element: (N, C, 1, 1));
// -1 = present iff s > 1 (a (N, C) input has none). poke: 1 a NaN in x of the last sample
// (that sample all NaN through the LN statistics), 2 a NaN variance logit (all NaN).
template <typename T>
void SnCase(Ctx& ctx, NCS sh, bool using_bn, int in = -1, int poke = 0) {
  const float eps = 1e-5f;
  const bool has_in = in < 0 ? sh.s > 1 : in != 0;
  const int64_t k = (has_in ? 1 : 0) + 1 + (using_bn ? 1 : 0), planes = sh.n * sh.c, total = planes * sh.s;
  Vec x = Random(ctx, total, 2.0, 0.5), sc = Uniform(ctx, sh.c, 0.5, 1.5), bi = Random(ctx, sh.c, 0.3),
      rm = Random(ctx, sh.c, 0.1, 0.5), rv = Uniform(ctx, sh.c, 3.0, 5.0), mw = Random(ctx, k), vw = Random(ctx, k);
  if (poke == 1) x[total - 1 - sh.s / 2] = NAN;
  if (poke == 2) vw[k - 1] = NAN;
  for (Vec* v : {&x, &sc, &bi, &rm, &rv, &mw, &vw}) Quantize<T>(*v);
  DeviceBuffer<T> dx(x), ds(sc), db(bi), drm(rm), drv(rv), dmw(mw), dvw(vw), dy(total);
  DeviceBuffer<unsigned char> scratch(normexport::switchable_norm::CudaScratchBytes(planes));
  dy.Poison();
  int err = normexport::switchable_norm::LaunchSwitchableNorm<T>(
      ctx.stream, dx.get(), ds.get(), db.get(), drm.get(), drv.get(), dmw.get(), dvw.get(), dy.get(), sh.n, sh.c, sh.s,
      has_in, using_bn, eps, scratch.get());
  err = Finish(ctx, err);
  Errors e;
  if (err == 0) {
    const Vec wm = Softmax(mw), wv = Softmax(vw);
    Vec ref(total);
    for (int64_t n = 0; n < sh.n; ++n) {
      double m_ln, v_ln;
      Moments(x, sh.c * sh.s, n, m_ln, v_ln);
      for (int64_t c = 0; c < sh.c; ++c) {
        const int64_t p = n * sh.c + c;
        double m_in, v_in;
        Moments(x, sh.s, p, m_in, v_in);
        int b = 0;
        double mu = 0, var = 0;
        if (has_in) mu += wm[b] * m_in, var += wv[b] * v_in, ++b;
        mu += wm[b] * m_ln, var += wv[b] * v_ln, ++b;
        if (using_bn) mu += wm[b] * rm[c], var += wv[b] * rv[c];
        const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
        for (int64_t i = 0; i < sh.s; ++i) ref[p * sh.s + i] = sc[c] * (x[p * sh.s + i] - mu) * inv + bi[c];
      }
    }
    Compare<T>(dy.Download(), ref, e);
  }
  Report<T>(ctx, "SwitchableNorm",
            Dims({sh.n, sh.c, sh.s}) + (has_in ? " in" : " no-in") + (using_bn ? " bn" : " no-bn") +
                (poke == 1 ? " nan x" : poke == 2 ? " nan logit" : ""),
            err, e);
}

bool CheckSwitchableNorm(Ctx& ctx) {
  SnCase<float>(ctx, {2, 3, 1}, true);  // (N, C): IN branch absent
  SnCase<float>(ctx, {2, 3, 7}, true);
  SnCase<float>(ctx, {2, 5, 63}, false);
  SnCase<float>(ctx, {3, 17, 1023}, true);
  SnCase<float>(ctx, {2, 8, 65537}, true);
  SnCase<float>(ctx, {4, 96, 33}, true);
  SnCase<half>(ctx, {2, 5, 63}, true);
  SnCase<half>(ctx, {2, 16, 4099}, false);
  SnCase<float>(ctx, {3, 5, 1}, false);     // (N, C) without BN: a single branch
  SnCase<float>(ctx, {3, 5, 1}, true, 1);   // (N, C, 1, 1): IN of one element
  SnCase<float>(ctx, {2, 2500, 3}, true);   // more channels than a block's threads
  SnCase<float>(ctx, {3, 5, 63}, true, -1, 1);
  SnCase<float>(ctx, {2, 3, 7}, false, -1, 2);
  SnCase<half>(ctx, {3, 5, 63}, true, -1, 1);
  return true;
}
#endif

// ---- the table ----------------------------------------------------------------------------
struct OpCheck {
  const char* op;
  bool (*run)(Ctx&);
};

const OpCheck kChecks[] = {
#if defined(NX_GPU_CHECK_FILTER_RESPONSE_NORM)
    {"FilterResponseNorm", CheckFrn},
#endif
#if defined(NX_GPU_CHECK_GROUP_NORM)
    {"GroupNorm", CheckGroupNorm},
#endif
#if defined(NX_GPU_CHECK_POSITIONAL_NORM)
    {"PositionalNorm", CheckPositionalNorm},
#endif
#if defined(NX_GPU_CHECK_ADAIN)
    {"AdaIN", CheckAdaIN},
#endif
#if defined(NX_GPU_CHECK_SPADE)
    {"SPADE", CheckSpade},
#endif
#if defined(NX_GPU_CHECK_SWITCHABLE_NORM)
    {"SwitchableNorm", CheckSwitchableNorm},
#endif
    {nullptr, nullptr},  // keeps the array non-empty whatever is compiled in
};

void Usage() {
  std::printf(
      "usage: normexport_gpu_check [--list] [--device N] [OP ...]\n"
      "Runs the normexport CUDA launchers on GPU buffers against a float64 CPU reference.\n"
      "  --list      print the ops compiled in and exit\n"
      "  --device N  use CUDA device N (default 0)\n"
      "  OP          only these ops (default: all)\n"
      "exit status: 0 all PASS, 1 a FAIL, 2 bad arguments, 3 no CUDA device or driver\n");
}

}  // namespace

int main(int argc, char** argv) {
  int device = 0;
  std::vector<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      Usage();
      return kExitPass;
    } else if (a == "--list") {
      for (const OpCheck& c : kChecks)
        if (c.op) std::printf("%s\n", c.op);
      return kExitPass;
    } else if (a == "--device" && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "normexport_gpu_check: unknown option %s\n", a.c_str());
      Usage();
      return kExitUsage;
    } else {
      bool known = false;
      for (const OpCheck& c : kChecks) known |= c.op && a == c.op;
      if (!known) {
        std::fprintf(stderr, "normexport_gpu_check: no check for op %s (see --list)\n", a.c_str());
        return kExitUsage;
      }
      only.push_back(a);
    }
  }

  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("normexport_gpu_check: no CUDA device (cudaGetDeviceCount: %s)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return kExitNoDevice;
  }
  if (device < 0 || device >= count) {
    std::fprintf(stderr, "normexport_gpu_check: --device %d, but %d device(s)\n", device, count);
    return kExitUsage;
  }
  NX_CUDA_CALL(cudaSetDevice(device));
  cudaDeviceProp prop;
  NX_CUDA_CALL(cudaGetDeviceProperties(&prop, device));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("device %d: %s (sm_%d%d, %.1f GiB), driver %d, runtime %d\n", device, prop.name, prop.major,
              prop.minor, prop.totalGlobalMem / 1073741824.0, driver, runtime);

  Ctx ctx;
  NX_CUDA_CALL(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
  for (const OpCheck& c : kChecks) {
    if (!c.op) continue;
    bool selected = only.empty();
    for (const auto& o : only) selected |= o == c.op;
    if (selected) c.run(ctx);
  }
  NX_CUDA_CALL(cudaStreamDestroy(ctx.stream));
  std::printf("%d case(s), %d failed: %s\n", ctx.cases, ctx.failed, ctx.failed ? "FAIL" : "PASS");
  return ctx.failed ? kExitFail : kExitPass;
}
