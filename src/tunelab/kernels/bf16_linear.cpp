// y = x W^T + b with W in bf16: every product of the lean decoder's bf16 weights (serve/lean.py).
//
// Decoding reads every weight once per token, so at a few rows a product is a stream through memory. oneDNN's
// bf16 path streams a step's weights at ~14 GB/s here and spends ~20 us a call on set-up (121 calls a step);
// this kernel reaches ~19-21 GB/s (a sum over a large array reaches ~21 on the same two cores).
//
// Layout (`pack`): [N/16][K/2][16][2] bf16, N padded to a multiple of 16 and K to a multiple of 2, zeros in the
// padding. The 512-bit vector at (nb, kp) holds W[16 nb + j][2 kp + e] at lane (j, e), which is two things:
// - for AVX512-BF16, one `vdpbf16ps` with x[m][2 kp : 2 kp + 2] broadcast adds a pair of products to 16 outputs
//   at once, so the 16 sums of an output block are one register and need no horizontal reduction;
// - for AMX, 16 consecutive kp of one output block are exactly a B tile of `tdpbf16ps` (16 rows of 64 bytes):
//   up to 16 rows of x per A tile, 16 x 16 fp32 sums per C tile. Used where the CPU and the OS allow it
//   (Sapphire Rapids and later; Linux hands the tile state out on request) and K is a multiple of 32.
// Sums are fp32 and the result is fp32; x is rounded to bf16 once per call (round to nearest even), after the
// RMSNorm when `norm` is given (fused: one pass over x instead of ~7 small tensor operations).
//
// Built on first use by tunelab.kernels (torch.utils.cpp_extension), for CPUs with AVX512-BF16 only;
// the functions that need it carry their own target attribute, so the file compiles without -march flags.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <vector>

#define TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512dq,avx512vl")))
#ifndef AMX_ROWS
#define AMX_ROWS 1  // from this many rows on, AMX tiles where the CPU has them
#endif
#define TARGET_AMX __attribute__((target("avx512f,avx512bf16,avx512bw,avx512dq,avx512vl,amx-tile,amx-bf16")))

namespace {

at::Tensor pack(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "pack_bf16: expected a matrix, got ", w.dim(), " dimensions");
  at::Tensor wc = w.detach().to(at::kBFloat16).contiguous();
  const int64_t N = wc.size(0), K = wc.size(1), NB = (N + 15) / 16, KP = (K + 1) / 2;
  at::Tensor out = at::zeros({NB, KP, 16, 2}, wc.options());
  const uint16_t* s = reinterpret_cast<const uint16_t*>(wc.data_ptr<c10::BFloat16>());
  uint16_t* d = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) d[(((n / 16) * KP + k / 2) * 16 + n % 16) * 2 + k % 2] = s[n * K + k];
  return out;
}

// M rows of x (bf16 pairs as 32-bit words, row stride xs words) times B consecutive 16-output blocks.
template <int M, int B>
TARGET inline void block(const uint32_t* x, int64_t xs, const uint16_t* w, int64_t KP, const float* bias, float* y,
                         int64_t ys, int64_t n, int64_t N) {
  __m512 acc[B][M];
  for (int b = 0; b < B; ++b)
    for (int m = 0; m < M; ++m) acc[b][m] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < KP; ++kp) {
    __m512bh wv[B];
    for (int b = 0; b < B; ++b) wv[b] = (__m512bh)_mm512_loadu_si512(w + (b * KP + kp) * 32);
    for (int m = 0; m < M; ++m) {
      __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[m * xs + kp]));
      for (int b = 0; b < B; ++b) acc[b][m] = _mm512_dpbf16_ps(acc[b][m], wv[b], xv);
    }
  }
  for (int b = 0; b < B; ++b) {
    const int64_t n0 = n + 16 * b;
    if (n0 >= N) break;
    const __mmask16 mk = N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + n0) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) _mm512_mask_storeu_ps(y + m * ys + n0, mk, _mm512_add_ps(acc[b][m], bv));
  }
}

// Output blocks [nb0, nb1) for M rows: four blocks at a time up to four rows, two at more (registers).
template <int M>
TARGET void blocks(const uint32_t* x, int64_t xs, const uint16_t* w, int64_t KP, const float* bias, float* y,
                   int64_t ys, int64_t N, int64_t nb0, int64_t nb1) {
  constexpr int B = M <= 4 ? 4 : 3;
  int64_t nb = nb0;
  for (; nb + B <= nb1; nb += B) block<M, B>(x, xs, w + nb * KP * 32, KP, bias, y, ys, nb * 16, N);
  for (; nb < nb1; ++nb) block<M, 1>(x, xs, w + nb * KP * 32, KP, bias, y, ys, nb * 16, N);
}


// --- AMX (Sapphire Rapids and later): the same packed layout is what `tdpbf16ps` wants for its B tile ---------
//
// A tile: up to 16 rows of x x 32 bf16 (16 pairs); B tile: 16 pairs of K x 16 outputs x 2, i.e. 16 consecutive kp
// of one output block, rows 64 bytes apart in the packed weight; C: up to 16 rows x 16 fp32 sums.

bool amx_usable() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return false;  // AMX-BF16, AMX-TILE
    // Linux hands out the tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TARGET_AMX void amx_config(int M) {
  TileConfig cfg;
  for (int t = 0; t < 5; ++t) {  // tiles 0-3: C (M rows of 16 fp32); tile 4: A (M rows of 32 bf16)
    cfg.rows[t] = static_cast<uint8_t>(M);
    cfg.colsb[t] = 64;
  }
  for (int t = 5; t < 7; ++t) {  // tiles 5, 6: B (16 pairs of 16 outputs)
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC 12 drops the stores above as dead before `ldtilecfg` (seen in the disassembly): make them visible
  __asm__ __volatile__("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// M (<= 16, as configured) rows of xb (bf16, row stride K2) times NB4 (1-4) consecutive output blocks at n.
template <int NB4>
TARGET_AMX void amx_block(const uint16_t* xb, int64_t K2, const uint16_t* w, int64_t KP, const float* bias, float* y,
                          int64_t ys, int64_t n, int64_t N, int M) {
  alignas(64) float tmp[4][16][16];
  _tile_zero(0);
  if constexpr (NB4 > 1) _tile_zero(1);
  if constexpr (NB4 > 2) _tile_zero(2);
  if constexpr (NB4 > 3) _tile_zero(3);
  for (int64_t c = 0; c < KP / 16; ++c) {
    _tile_loadd(4, xb + 32 * c, K2 * 2);
    _tile_loadd(5, w + (16 * c) * 32, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NB4 > 1) {
      _tile_loadd(6, w + (KP + 16 * c) * 32, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (NB4 > 2) {
      _tile_loadd(5, w + (2 * KP + 16 * c) * 32, 64);
      _tile_dpbf16ps(2, 4, 5);
    }
    if constexpr (NB4 > 3) {
      _tile_loadd(6, w + (3 * KP + 16 * c) * 32, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
  }
  _tile_stored(0, tmp[0], 64);
  if constexpr (NB4 > 1) _tile_stored(1, tmp[1], 64);
  if constexpr (NB4 > 2) _tile_stored(2, tmp[2], 64);
  if constexpr (NB4 > 3) _tile_stored(3, tmp[3], 64);
  for (int b = 0; b < NB4; ++b) {
    const int64_t n0 = n + 16 * b;
    if (n0 >= N) break;
    const __mmask16 mk = N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + n0) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m)
      _mm512_mask_storeu_ps(y + m * ys + n0, mk, _mm512_add_ps(_mm512_load_ps(tmp[b][m]), bv));
  }
}

TARGET_AMX void amx_blocks(const uint16_t* xb, int64_t K2, const uint16_t* w, int64_t KP, const float* bias, float* y,
                           int64_t ys, int64_t N, int64_t nb0, int64_t nb1, int M) {
  int64_t nb = nb0;
  for (; nb + 4 <= nb1; nb += 4) amx_block<4>(xb, K2, w + nb * KP * 32, KP, bias, y, ys, nb * 16, N, M);
  for (; nb < nb1; ++nb) amx_block<1>(xb, K2, w + nb * KP * 32, KP, bias, y, ys, nb * 16, N, M);
}

TARGET_AMX void amx_release() { _tile_release(); }

// xb = bf16(x), or with `norm` bf16(RMSNorm(x)) = bf16(norm * (x * rsqrt(mean(x^2) + eps))), in the order
// transformers computes it; rows padded with a zero to the packed K.
TARGET void to_bf16(const float* x, uint16_t* xb, int64_t M, int64_t K, int64_t K2, const float* norm, float eps) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * K;
    __m512 r = _mm512_set1_ps(1.f);
    if (norm) {
      __m512 ss = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(mk, xm + k);
        ss = _mm512_fmadd_ps(v, v, ss);
      }
      r = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(K) + eps));
    }
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
      __m512 v = _mm512_maskz_loadu_ps(mk, xm + k);
      if (norm) v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, norm + k), _mm512_mul_ps(v, r));
      const __m256bh h = _mm512_cvtneps_pbh(v);
      _mm256_mask_storeu_epi16(xb + m * K2 + k, mk, (__m256i)h);
    }
    if (K2 > K) xb[m * K2 + K] = 0;
  }
}

// x [..., K] fp32; wp = pack(W) for W [N, K]; b [N] fp32 or none. Returns x W^T + b, fp32 [..., N]; with
// `norm` [K] (fp32), RMSNorm(x; norm, eps) W^T + b, the norm fused into the rounding of x.
at::Tensor linear(const at::Tensor& x, const at::Tensor& wp, const std::optional<at::Tensor>& b, int64_t N,
                  const std::optional<at::Tensor>& norm, double eps) {
  const int64_t K = x.size(-1);
  TORCH_CHECK(wp.dim() == 4 && wp.scalar_type() == at::kBFloat16 && wp.is_contiguous(),
              "linear_bf16: the weight must come from pack_bf16");
  const int64_t NB = wp.size(0), KP = wp.size(1), K2 = 2 * KP;
  TORCH_CHECK(KP == (K + 1) / 2 && NB == (N + 15) / 16, "linear_bf16: weight packed for other sizes");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "linear_bf16: x must be fp32");
  TORCH_CHECK(!b || (b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == N),
              "linear_bf16: the bias must be fp32 [N]");
  TORCH_CHECK(!norm || (norm->scalar_type() == at::kFloat && norm->is_contiguous() && norm->numel() == K),
              "linear_bf16: the norm weight must be fp32 [K]");
  const at::Tensor xc = x.reshape({-1, K}).contiguous();
  const int64_t M = xc.size(0);
  std::vector<uint16_t> xb(static_cast<size_t>(M * K2));
  to_bf16(xc.data_ptr<float>(), xb.data(), M, K, K2, norm ? norm->data_ptr<float>() : nullptr,
          static_cast<float>(eps));
  at::Tensor y = at::empty({M, N}, xc.options());
  const uint32_t* xp = reinterpret_cast<const uint32_t*>(xb.data());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(wp.data_ptr<c10::BFloat16>());
  const float* bias = b ? b->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // tasks of `chunk` output blocks, dealt out dynamically: with 2 threads a static split of 36 blocks waits
  // for the slower thread at every call
  const int threads = at::get_num_threads();
  const int64_t chunk = std::max<int64_t>(4, (NB / (8 * threads) + 3) / 4 * 4);
  const int64_t tasks = (NB + chunk - 1) / chunk;
  const bool amx = M >= AMX_ROWS && KP % 16 == 0 && amx_usable();
#pragma omp parallel num_threads(threads)
  {
    int configured = 0;  // the rows the tiles of this thread are configured for
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t nb0 = t * chunk, nb1 = std::min(NB, nb0 + chunk);
      if (amx) {
        for (int64_t m0 = 0; m0 < M; m0 += 16) {  // the task's weights stay in L2 for the next 16 rows
          const int mm = static_cast<int>(std::min<int64_t>(16, M - m0));
          if (mm != configured) {
            amx_config(mm);
            configured = mm;
          }
          amx_blocks(xb.data() + m0 * K2, K2, w, KP, bias, yp + m0 * N, N, N, nb0, nb1, mm);
        }
        continue;
      }
      for (int64_t m0 = 0; m0 < M; m0 += 8) {  // more than 8 rows: the task's weights stay in L2 for the next 8
        const uint32_t* xm = xp + m0 * KP;
        float* ym = yp + m0 * N;
        switch (std::min<int64_t>(8, M - m0)) {
          case 1: blocks<1>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 2: blocks<2>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 3: blocks<3>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 4: blocks<4>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 5: blocks<5>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 6: blocks<6>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          case 7: blocks<7>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
          default: blocks<8>(xm, KP, w, KP, bias, ym, N, N, nb0, nb1); break;
        }
      }
    }
    if (configured) amx_release();
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

}  // namespace

TORCH_LIBRARY(tunelab, m) {
  m.def("pack_bf16(Tensor w) -> Tensor", pack);
  m.def("amx_bf16() -> bool", amx_usable);
  m.def("linear_bf16(Tensor x, Tensor wp, Tensor? b, int n, Tensor? norm=None, float eps=0.0) -> Tensor", linear);
}
