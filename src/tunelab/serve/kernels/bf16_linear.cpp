// y = x W^T + b for a few rows of x, with W in bf16: the lean decoder's products in a decoding step (1-8 rows).
//
// Decoding reads every weight once per token, so at one row a product is a stream through memory. oneDNN's
// bf16 path streams a step's weights at ~14 GB/s here and spends ~20 us a call on set-up (121 calls a step);
// this kernel reaches ~19 GB/s (a sum over a large array reaches ~21 on the same two cores).
//
// Layout (`pack`): [N/16][K/2][16][2] bf16, N padded to a multiple of 16 and K to a multiple of 2, zeros in the
// padding. The 512-bit vector at (nb, kp) holds W[16 nb + j][2 kp + e] at lane (j, e): one AVX512-BF16
// `vdpbf16ps` with x[m][2 kp : 2 kp + 2] broadcast adds a pair of products to 16 outputs at once, so the
// 16 sums of an output block are one register and need no horizontal reduction. Sums are fp32; x is rounded
// to bf16 once per call (round to nearest even), as oneDNN does.
//
// Built on first use by tunelab.serve.kernels (torch.utils.cpp_extension), for CPUs with AVX512-BF16 only;
// the functions that need it carry their own target attribute, so the file compiles without -march flags.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#define TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512dq,avx512vl")))

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
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t nb0 = t * chunk, nb1 = std::min(NB, nb0 + chunk);
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
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

}  // namespace

TORCH_LIBRARY(tunelab, m) {
  m.def("pack_bf16(Tensor w) -> Tensor", pack);
  m.def("linear_bf16(Tensor x, Tensor wp, Tensor? b, int n, Tensor? norm=None, float eps=0.0) -> Tensor", linear);
}
