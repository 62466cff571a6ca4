// Unit tests of the framework-free pieces: half conversions and the CPU core.
// Build with -DNORMEXPORT_BUILD_TESTS=ON, run with ctest; tests/test_native_core.py compiles and runs it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "adain/adain_core.h"
#include "filter_response_norm/frn_core.h"
#include "group_norm/gn_core.h"
#include "positional_norm/pono_core.h"
#include "spade/spade_core.h"
#include "switchable_norm/sn_core.h"
#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_stream.h"

using normexport::half;

static int g_failures = 0;
#define EXPECT(cond, ...)                             \
  do {                                                \
    if (!(cond)) {                                    \
      ++g_failures;                                   \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                       \
      std::printf("\n");                              \
    }                                                 \
  } while (0)

static uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference float->half by exhaustive nearest search with ties to even (double math).
static double HalfValue(uint16_t h) { return static_cast<double>(normexport::half_bits_to_float(h)); }

static void TestHalfRoundTrip() {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = normexport::half_bits_to_float(static_cast<uint16_t>(h));
    const bool is_nan = ((h & 0x7c00) == 0x7c00) && (h & 0x3ff);
    if (is_nan) {
      EXPECT(std::isnan(f), "half %04x should be NaN", h);
      EXPECT(std::isnan(normexport::half_bits_to_float(normexport::float_to_half_bits(f))), "NaN roundtrip %04x", h);
      continue;
    }
    EXPECT(normexport::float_to_half_bits(f) == h, "roundtrip %04x -> %a -> %04x", h, f,
           normexport::float_to_half_bits(f));
  }
  EXPECT(normexport::half_bits_to_float(0x0001) == std::ldexp(1.0f, -24), "min subnormal");
  EXPECT(normexport::half_bits_to_float(0x7bff) == 65504.0f, "max half");
}

static void TestHalfRounding() {
  // Every float between consecutive halves (incl. ties) over the positive range, sampled.
  std::mt19937 rng(123);
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = HalfValue(static_cast<uint16_t>(h));
    const double hi = (h + 1 == 0x7c00) ? 65536.0 : HalfValue(static_cast<uint16_t>(h + 1));
    const double mid = 0.5 * (lo + hi);
    const float fmid = static_cast<float>(mid);  // exact: midpoints of halves fit in float
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    EXPECT(normexport::float_to_half_bits(fmid) == even, "tie at %a (h=%04x)", fmid, h);
    EXPECT(normexport::float_to_half_bits(std::nextafter(fmid, 0.0f)) == h, "below tie h=%04x", h);
    EXPECT(normexport::float_to_half_bits(std::nextafter(fmid, 1e9f)) == static_cast<uint16_t>(h + 1),
           "above tie h=%04x", h);
    EXPECT(normexport::float_to_half_bits(-fmid) == (even | 0x8000), "negative tie h=%04x", h);
  }
  EXPECT(normexport::float_to_half_bits(65519.996f) == 0x7bff, "just below overflow");
  EXPECT(normexport::float_to_half_bits(65520.0f) == 0x7c00, "overflow tie -> inf");
  EXPECT(normexport::float_to_half_bits(std::numeric_limits<float>::infinity()) == 0x7c00, "inf");
  EXPECT(normexport::float_to_half_bits(-std::numeric_limits<float>::infinity()) == 0xfc00, "-inf");
  EXPECT(normexport::float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000, "2^-25 ties to 0");
  EXPECT(normexport::float_to_half_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001, "above 2^-25");
  EXPECT(normexport::float_to_half_bits(-0.0f) == 0x8000, "-0");
  EXPECT(normexport::float_to_half_bits(1e-30f) == 0x0000, "tiny");
}

static void TestBulkMatchesScalar() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any;
  const size_t n = 1 << 20;
  std::vector<float> f(n), back(n);
  std::vector<half> h1(n), h2(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t u = any(rng);
    if ((u & 0x7f800000u) == 0x7f800000u) u &= ~0x00400000u;  // keep some inf, avoid NaN
    if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xff800000u;
    // bias exponents into the half range half of the time
    if (i & 1) u = (u & 0x807fffffu) | ((100u + (u >> 23) % 45u) << 23);
    f[i] = FromBits(u);
  }
  normexport::float_to_half_n(f.data(), h1.data(), n);
  normexport::float_to_half_n_scalar(f.data(), h2.data(), n);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += h1[i].bits != h2[i].bits;
  EXPECT(bad == 0, "bulk float->half differs from scalar in %zu cases", bad);
  normexport::half_to_float_n(h1.data(), back.data(), n);
  bad = 0;
  for (size_t i = 0; i < n; ++i) bad += Bits(back[i]) != Bits(normexport::half_bits_to_float(h1[i].bits));
  EXPECT(bad == 0, "bulk half->float differs from scalar in %zu cases", bad);
}

template <typename T>
static double AsDouble(T v) {
  if constexpr (std::is_same<T, half>::value) {
    return normexport::half_bits_to_float(v.bits);
  } else {
    return static_cast<double>(v);
  }
}
template <typename T>
static T FromFloat(float v) {
  if constexpr (std::is_same<T, half>::value) {
    return normexport::from_float<half>(v);
  } else {
    return static_cast<T>(v);
  }
}

template <typename T>
static void TestCore(int64_t N, int64_t C, int64_t S, bool tlu, double tol) {
  std::mt19937 rng(static_cast<unsigned>(N * 1000 + C * 10 + S));
  std::normal_distribution<float> nd(0.5f, 2.0f);
  const int64_t total = N * C * S;
  std::vector<float> xf(total), g(C), b(C), t(C);
  for (auto& v : xf) v = nd(rng);
  for (int64_t c = 0; c < C; ++c) {
    g[c] = nd(rng);
    b[c] = nd(rng);
    t[c] = nd(rng);
  }
  std::vector<T> x(total), y(total), gt(C), bt(C), tt(C);
  for (int64_t i = 0; i < total; ++i) x[i] = FromFloat<T>(xf[i]);
  for (int64_t c = 0; c < C; ++c) {
    gt[c] = FromFloat<T>(g[c]);
    bt[c] = FromFloat<T>(b[c]);
    tt[c] = FromFloat<T>(t[c]);
  }
  const float eps = 1e-6f;
  // split in two ranges to exercise the range interface
  const int64_t P = N * C, mid = P / 2;
  normexport::frn::filter_response_norm_planes<T>(x.data(), y.data(), gt.data(), bt.data(), tt.data(), C, S,
                                                   {0, mid}, eps, tlu);
  normexport::frn::filter_response_norm_planes<T>(x.data(), y.data(), gt.data(), bt.data(), tt.data(), C, S,
                                                   {mid, P}, eps, tlu);
  double max_err = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t c = p % C;
    double ss = 0;
    for (int64_t i = 0; i < S; ++i) {
      const double v = AsDouble(x[p * S + i]);
      ss += v * v;
    }
    const double r = 1.0 / std::sqrt(ss / S + eps);
    for (int64_t i = 0; i < S; ++i) {
      double ref = AsDouble(gt[c]) * AsDouble(x[p * S + i]) * r + AsDouble(bt[c]);
      if (tlu) ref = std::max(ref, static_cast<double>(AsDouble(tt[c])));
      const double got = AsDouble(y[p * S + i]);
      const double err = std::fabs(got - ref) / (1.0 + std::fabs(ref));
      max_err = std::max(max_err, err);
    }
  }
  EXPECT(max_err <= tol, "core %s N=%lld C=%lld S=%lld tlu=%d: max err %g > %g",
         sizeof(T) == 4 ? "float" : sizeof(T) == 2 ? "half" : "double", (long long)N, (long long)C, (long long)S, tlu, max_err, tol);
}

static const char* TypeName(size_t size) { return size == 4 ? "float" : size == 2 ? "half" : "double"; }

template <typename T>
static std::vector<T> RandomTensor(int64_t n, unsigned seed, float mean, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(mean, stddev);
  std::vector<T> v(n);
  for (auto& e : v) e = FromFloat<T>(nd(rng));
  return v;
}

// AdaIN core vs a float64 two-pass reference; planes split into two ranges.
template <typename T>
static void TestAdainCore(int64_t P, int64_t S, int64_t SS, float alpha, float mean, float stddev, double tol) {
  const std::vector<T> x = RandomTensor<T>(P * S, 7 + static_cast<unsigned>(S), mean, stddev);
  const std::vector<T> z = RandomTensor<T>(P * SS, 11 + static_cast<unsigned>(SS), -0.7f, 1.5f);
  std::vector<T> y(P * S);
  const float eps = 1e-5f;
  normexport::adain::adain_planes<T>(x.data(), z.data(), y.data(), S, SS, {0, P / 2}, eps, alpha);
  normexport::adain::adain_planes<T>(x.data(), z.data(), y.data(), S, SS, {P / 2, P}, eps, alpha);
  auto moments = [](const std::vector<T>& v, int64_t base, int64_t n, double* m, double* var) {
    double s = 0, q = 0;
    for (int64_t i = 0; i < n; ++i) s += AsDouble(v[base + i]);
    *m = s / n;
    for (int64_t i = 0; i < n; ++i) q += (AsDouble(v[base + i]) - *m) * (AsDouble(v[base + i]) - *m);
    *var = q / n;
  };
  double max_err = 0;
  for (int64_t p = 0; p < P; ++p) {
    double mx, vx, mz, vz;
    moments(x, p * S, S, &mx, &vx);
    moments(z, p * SS, SS, &mz, &vz);
    const double k = std::sqrt(vz + eps) / std::sqrt(vx + eps);
    for (int64_t i = 0; i < S; ++i) {
      const double v = AsDouble(x[p * S + i]);
      const double ref = alpha * (k * (v - mx) + mz) + (1.0 - alpha) * v;
      max_err = std::max(max_err, std::fabs(AsDouble(y[p * S + i]) - ref) / (1.0 + std::fabs(ref)));
    }
  }
  EXPECT(max_err <= tol, "adain core %s P=%lld S=%lld SS=%lld alpha=%g mean=%g: max err %g > %g",
         TypeName(sizeof(T)), (long long)P, (long long)S, (long long)SS, alpha, mean, max_err, tol);
}

// PositionalNorm core vs a float64 two-pass reference; blocks split into two ranges.
template <typename T>
static void TestPonoCore(int64_t N, int64_t C, int64_t S, bool unbiased, float mean, float stddev, double tol) {
  const std::vector<T> x = RandomTensor<T>(N * C * S, 13 + static_cast<unsigned>(C * S), mean, stddev);
  std::vector<T> y(N * C * S), m(N * S), sd(N * S);
  const float eps = 1e-5f;
  const int64_t block = normexport::pono::BlockSize(C, S), bps = (S + block - 1) / block, nb = N * bps;
  normexport::pono::pono_blocks<T>(x.data(), y.data(), m.data(), sd.data(), C, S, block, bps, 0, nb / 2, eps,
                                   unbiased);
  normexport::pono::pono_blocks<T>(x.data(), y.data(), m.data(), sd.data(), C, S, block, bps, nb / 2, nb, eps,
                                   unbiased);
  double max_err = 0;
  auto err = [&](double got, double ref) { max_err = std::max(max_err, std::fabs(got - ref) / (1.0 + std::fabs(ref))); };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < S; ++p) {
      double s = 0, q = 0;
      for (int64_t c = 0; c < C; ++c) s += AsDouble(x[(n * C + c) * S + p]);
      const double mu = s / C;
      for (int64_t c = 0; c < C; ++c) q += std::pow(AsDouble(x[(n * C + c) * S + p]) - mu, 2);
      const double st = std::sqrt(q / (C - (unbiased ? 1 : 0)) + eps);
      err(AsDouble(m[n * S + p]), mu);
      err(AsDouble(sd[n * S + p]), st);
      for (int64_t c = 0; c < C; ++c) err(AsDouble(y[(n * C + c) * S + p]), (AsDouble(x[(n * C + c) * S + p]) - mu) / st);
    }
  EXPECT(max_err <= tol, "pono core %s N=%lld C=%lld S=%lld unbiased=%d mean=%g: max err %g > %g",
         TypeName(sizeof(T)), (long long)N, (long long)C, (long long)S, unbiased, mean, max_err, tol);
}

static void TestNaN() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {1, 2, 3, 4}, y(4);
  float g = 1, b = 0, t = nan;
  normexport::frn::filter_response_norm_planes<float>(x.data(), y.data(), &g, &b, &t, 1, 4, {0, 1}, 1e-6f, true);
  for (float v : y) EXPECT(std::isnan(v), "tau NaN must give NaN");
  t = 100.f;
  x[1] = nan;
  normexport::frn::filter_response_norm_planes<float>(x.data(), y.data(), &g, &b, &t, 1, 4, {0, 1}, 1e-6f, true);
  for (float v : y) EXPECT(std::isnan(v), "NaN in x must give NaN (through nu2) even with a large tau");
}

// moments::plane_moments (chunked two-pass, Chan-combined) vs a float64 two-pass reference:
// several chunks and a partial one, large mean / small spread, Inf and NaN in a later chunk.
template <typename T>
static void TestPlaneMoments(int64_t n, float mean, float stddev, double tol) {
  const std::vector<T> x = RandomTensor<T>(n, 31 + static_cast<unsigned>(n), mean, stddev);
  double s = 0, q = 0;
  for (int64_t i = 0; i < n; ++i) s += AsDouble(x[i]);
  const double m = s / n;
  for (int64_t i = 0; i < n; ++i) q += (AsDouble(x[i]) - m) * (AsDouble(x[i]) - m);
  const double v = q / n;
  const normexport::moments::Moments got = normexport::moments::plane_moments(x.data(), n);
  EXPECT(std::fabs(got.mean - m) <= tol * (std::fabs(m) + std::sqrt(v)) && std::fabs(got.var - v) <= tol * v,
         "plane_moments %s n=%lld mean %g: got (%.17g, %.17g) want (%.17g, %.17g)", TypeName(sizeof(T)),
         (long long)n, mean, got.mean, got.var, m, v);
  if (n > normexport::moments::kMomentChunk) {
    std::vector<T> y = x;
    y[n - 5] = FromFloat<T>(std::numeric_limits<float>::infinity());
    const normexport::moments::Moments gi = normexport::moments::plane_moments(y.data(), n);
    EXPECT(std::isinf(gi.mean) && gi.mean > 0 && std::isnan(gi.var), "plane_moments %s with +Inf: (%g, %g)",
           TypeName(sizeof(T)), gi.mean, gi.var);
    y[3] = FromFloat<T>(std::numeric_limits<float>::quiet_NaN());
    const normexport::moments::Moments gn = normexport::moments::plane_moments(y.data(), n);
    EXPECT(std::isnan(gn.mean) && std::isnan(gn.var), "plane_moments %s with NaN", TypeName(sizeof(T)));
  }
}

// ---- streaming stores (normexport/cpu_stream.h) ----

// Store: every (destination misalignment, length) copies exactly and touches nothing else.
static void TestStreamStore() {
  std::vector<unsigned char> src(4096 + 64), dst(4096 + 128);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 37 + 11);
  for (size_t mis = 0; mis < 16; ++mis) {
    for (size_t len : {size_t{0}, size_t{1}, size_t{3}, size_t{15}, size_t{16}, size_t{17}, size_t{63}, size_t{64},
                       size_t{65}, size_t{100}, size_t{1000}, size_t{4096}}) {
      std::fill(dst.begin(), dst.end(), 0xA5);
      unsigned char* d = dst.data() + 32 + mis;
      normexport::stream::StoreBytes(d, src.data() + mis, len);
      normexport::stream::Fence();
      bool ok = std::memcmp(d, src.data() + mis, len) == 0;
      for (unsigned char* q = dst.data(); q < d; ++q) ok = ok && *q == 0xA5;
      for (unsigned char* q = d + len; q < dst.data() + dst.size(); ++q) ok = ok && *q == 0xA5;
      EXPECT(ok, "StoreBytes misalignment %zu length %zu", mis, len);
    }
  }
  using normexport::stream::ParseThreshold;
  EXPECT(ParseThreshold(nullptr) == -1 && ParseThreshold("") == -1, "unset threshold");
  EXPECT(ParseThreshold("0") == 0 && ParseThreshold("268435456") == 268435456, "threshold values");
  EXPECT(ParseThreshold("-1") == -1 && ParseThreshold("12x") == -1 && ParseThreshold("x") == -1, "bad thresholds");
  EXPECT(normexport::stream::DefaultThresholdBytes() > 0, "default threshold");
}

template <typename T>
static bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Every op core gives bit-identical outputs with and without streaming stores (odd sizes: the
// unaligned heads and tails; sub-ranges starting inside planes).
template <typename T>
static void TestStreamingCores() {
  const char* tn = TypeName(sizeof(T));
  const int64_t N = 2, C = 6, S = 1237, total = N * C * S;
  const std::vector<T> x = RandomTensor<T>(total, 21, 0.5f, 2.0f);
  const std::vector<T> g = RandomTensor<T>(total, 22, 0.0f, 0.3f), b = RandomTensor<T>(total, 23, 0.0f, 0.3f);
  std::vector<T> pc = RandomTensor<T>(C, 24, 1.0f, 0.3f), pb = RandomTensor<T>(C, 25, 0.0f, 0.3f);
  std::vector<T> pv = RandomTensor<T>(C, 26, 3.0f, 0.5f);
  std::vector<T> y0(total), y1(total);
  auto both = [&](const char* what, auto run) {
    std::fill(y0.begin(), y0.end(), FromFloat<T>(0.0f));
    std::fill(y1.begin(), y1.end(), FromFloat<T>(0.0f));
    run(y0.data(), false);
    run(y1.data(), true);
    normexport::stream::Fence();
    EXPECT(SameBits(y0, y1), "%s %s: streaming stores change the output", what, tn);
  };
  namespace gn = normexport::gn;
  for (int act : {0, 1, 2}) {
    both("GroupNorm groups", [&](T* y, bool nt) {
      gn::group_norm_groups<T>(x.data(), y, pc.data(), pb.data(), C, S, 3, {0, N * 3}, 1e-5f, act, nt);
    });
    both("GroupNorm range", [&](T* y, bool nt) {  // split group: two ranges, one starting mid-channel
      const int64_t m = 2 * S;
      for (int64_t grp = 0; grp < N * 3; ++grp) {
        const gn::Moments mom = gn::moments<T>(x.data() + grp * m, m);
        gn::normalize_range<T>(x.data() + grp * m, y + grp * m, 0, 777, S, pc.data(), pb.data(), (grp % 3) * 2, mom,
                               1e-5f, act, nt);
        gn::normalize_range<T>(x.data() + grp * m, y + grp * m, 777, m, S, pc.data(), pb.data(), (grp % 3) * 2, mom,
                               1e-5f, act, nt);
      }
    });
  }
  for (bool tlu : {false, true}) {
    both("FilterResponseNorm", [&](T* y, bool nt) {
      normexport::frn::filter_response_norm_planes<T>(x.data(), y, pc.data(), pb.data(), pv.data(), C, S,
                                                      {0, N * C}, 1e-6f, tlu, nt);
    });
  }
  both("AdaIN", [&](T* y, bool nt) {
    normexport::adain::adain_planes<T>(x.data(), g.data(), y, S, S, {0, N * C}, 1e-5f, 0.7f, nt);
  });
  for (int mode : {0, 1}) {
    both(mode ? "SPADE instance" : "SPADE batch", [&](T* y, bool nt) {
      normexport::spade::Tensors<T> t{x.data(), g.data(), b.data(), pb.data(), pv.data(), y, C, S, 1e-5f};
      t.nt = nt;
      if (mode == 0) {
        normexport::spade::spade_batch_elements<T>(t, 0, 5001);
        normexport::spade::spade_batch_elements<T>(t, 5001, total);
      } else {
        normexport::spade::spade_instance_planes<T>(t, 0, N * C);
      }
    });
  }
  both("SwitchableNorm apply", [&](T* y, bool nt) {
    std::vector<double> st(2 * N * C);
    for (int64_t p = 0; p < N * C; ++p) {
      st[p] = 0.3 + 0.01 * static_cast<double>(p);
      st[N * C + p] = 1.7 - 0.02 * static_cast<double>(p);
    }
    normexport::switchable_norm::Tensors<T> t{x.data(), pc.data(), pb.data(), pb.data(), pv.data(), y, C, S, 1e-5f,
                                              {}, {}, st.data(), st.data() + N * C};
    t.nt = nt;
    normexport::switchable_norm::apply_planes<T>(t, 0, N * C);
  });
  both("PositionalNorm", [&](T* y, bool nt) {
    std::vector<T> mean(N * S), sd(N * S);
    const int64_t block = normexport::pono::BlockSize(C, S), per = (S + block - 1) / block;
    normexport::pono::pono_blocks<T>(x.data(), y, mean.data(), sd.data(), C, S, block, per, 0, N * per, 1e-5f, true,
                                     nt);
  });
}

int main() {
  TestHalfRoundTrip();
  TestHalfRounding();
  TestBulkMatchesScalar();
  for (bool tlu : {false, true}) {
    TestCore<float>(2, 3, 35, tlu, 2e-6);
    TestCore<float>(1, 4, 100003, tlu, 2e-6);
    TestCore<float>(3, 2, 1, tlu, 2e-6);
    TestCore<half>(2, 3, 35, tlu, 2e-3);
    TestCore<half>(1, 2, 5000, tlu, 2e-3);  // multi-chunk path
    TestCore<double>(2, 3, 35, tlu, 1e-12);
    TestCore<double>(1, 2, 100003, tlu, 1e-12);
  }
  for (float alpha : {1.0f, 0.5f, 0.0f}) {
    TestAdainCore<float>(6, 35, 17, alpha, 0.5f, 2.0f, 2e-6);
    TestAdainCore<float>(2, 70001, 3001, alpha, 0.5f, 2.0f, 2e-6);
    TestAdainCore<half>(4, 5000, 300, alpha, 0.5f, 2.0f, 4e-3);  // multi-chunk path
    TestAdainCore<double>(3, 1001, 77, alpha, 0.5f, 2.0f, 1e-12);
  }
  TestAdainCore<float>(2, 4096, 1024, 1.0f, 1e3f, 1e-2f, 2e-5);   // large mean, small spread
  for (bool unbiased : {true, false}) {
    TestPonoCore<float>(2, 5, 37, unbiased, 0.5f, 2.0f, 2e-6);
    TestPonoCore<float>(2, 700, 129, unbiased, 0.5f, 2.0f, 2e-6);  // several blocks per sample
    TestPonoCore<float>(1, 3, 3000, unbiased, 0.5f, 2.0f, 2e-6);
    TestPonoCore<half>(2, 16, 1100, unbiased, 0.5f, 2.0f, 4e-3);
    TestPonoCore<double>(2, 9, 2049, unbiased, 0.5f, 2.0f, 1e-12);
  }
  TestPonoCore<float>(1, 64, 2048, true, 1e3f, 1e-2f, 2e-5);       // large mean, small spread
  TestNaN();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003}}) {
    TestPlaneMoments<float>(n, 0.5f, 2.0f, 1e-6);
    TestPlaneMoments<float>(n, 1e3f, 1e-2f, 1e-5);
    TestPlaneMoments<half>(n, 0.5f, 2.0f, 1e-6);
    TestPlaneMoments<double>(n, 1e3f, 1e-2f, 1e-12);
  }
  TestStreamStore();
  TestStreamingCores<float>();
  TestStreamingCores<half>();
  TestStreamingCores<double>();
  if (g_failures) {
    std::printf("%d failures\n", g_failures);
    return 1;
  }
  std::printf("all core tests passed\n");
  return 0;
}
