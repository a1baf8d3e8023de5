// Causal attention over packed rows in bf16, forward and backward, for training (train/attention.py).
//
// A packed row holds several examples back to back (boundaries `cu`); attention runs inside each example
// only. PyTorch's CPU flash attention issues five small GEMMs per 64 query rows and head through oneDNN in its
// backward (~20 us of set-up each), which made its backward 5-11x its forward and ~30% of a bf16 LoRA step on
// the bench's 175-511-token articles. Here one task owns one (example, key/value head): it packs that head's
// K and V once, then for each query head of its group and each block of 64 query rows keeps the whole score
// block [64 x keys] in fp32 in its own cache (keys <= a few thousand), so the softmax, its gradient and the
// products run back to back on data that is already there. Tasks own their outputs (dq rows, dk/dv of their
// head), so the result does not depend on the number of threads or on who ran what: runs are reproducible.
//
// Numerics, as in PyTorch's flash attention for bf16: products of bf16 inputs summed in fp32, softmax in fp32,
// probabilities (and their gradient) rounded to bf16 for the products that use them; the log-sum-exp of each
// row is kept from the forward, so the backward recomputes P = exp(scale S - lse) instead of storing it.
//
// Products go through `vdpbf16ps` (AVX512-BF16): B operands in the layout of bf16_linear.cpp's `pack`,
// [N/16][K/2][16][2], so the 16 sums of a block of outputs are one register; A operands are bf16 rows.

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <tuple>
#include <vector>

#define TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512dq,avx512vl")))

namespace {

constexpr int64_t BQ = 64;  // query rows per block
constexpr int64_t KA = 32;  // keys are padded to a multiple of this (a product's K must be even; 32 keeps blocks whole)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// dst = the rows [0, L) of x (row stride rs, D columns) as the B operand of C = A X^T: [TP/16][D/2][16][2],
// zero rows up to TP.
void pack_nk(const uint16_t* x, int64_t rs, int64_t L, int64_t D, int64_t TP, uint16_t* dst) {
  const int64_t KP = D / 2;
  std::memset(dst, 0, static_cast<size_t>(TP * D) * sizeof(uint16_t));
  for (int64_t t = 0; t < L; ++t) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(x + t * rs);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst) + (t / 16) * KP * 16 + t % 16;
    for (int64_t kp = 0; kp < KP; ++kp) d[kp * 16] = row[kp];
  }
}

// dst = the rows [0, L) of x as the B operand of C = A X (the sum runs over rows): [D/16][TP/2][16][2]. A pair of
// rows interleaved is one 512-bit store per 16 columns.
TARGET inline __m512i widen(const uint16_t* x, bool real) {  // 16 bf16 -> the low halves of 16 words
  return real ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))) : _mm512_setzero_si512();
}

TARGET void pack_kn(const uint16_t* x, int64_t rs, int64_t L, int64_t D, int64_t TP, uint16_t* dst) {
  const int64_t KP = TP / 2;
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  for (int64_t tp = 0; tp < KP; ++tp)
    for (int64_t db = 0; db < D / 16; ++db) {
      const __m512i lo = widen(x + 2 * tp * rs + 16 * db, 2 * tp < L);
      const __m512i hi = widen(x + (2 * tp + 1) * rs + 16 * db, 2 * tp + 1 < L);
      _mm512_storeu_si512(d32 + (db * KP + tp) * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

// dst [D][BQ] = x^T for a block x [BQ][D] (row-major bf16): the A operand of a product summing over x's rows.
void transpose_block(const uint16_t* x, int64_t D, uint16_t* dst) {
  for (int64_t i = 0; i < BQ; ++i)
    for (int64_t d = 0; d < D; ++d) dst[d * BQ + i] = x[i * D + d];
}

// C[MR rows][16 NR] (+)= A[MR rows][2 KP] B, B = NR consecutive blocks `bs` elements apart.
template <int MR, int NR>
TARGET inline void tile(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t bs, int64_t KP, float* C,
                        int64_t ldc, bool acc) {
  __m512 c[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) c[m][n] = acc ? _mm512_loadu_ps(C + m * ldc + 16 * n) : _mm512_setzero_ps();
  const uint32_t* a = reinterpret_cast<const uint32_t*>(A);
  const int64_t la = lda / 2;
  for (int64_t kp = 0; kp < KP; ++kp) {
    __m512bh b[NR];
    for (int n = 0; n < NR; ++n) b[n] = (__m512bh)_mm512_loadu_si512(B + n * bs + kp * 32);
    for (int m = 0; m < MR; ++m) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[m * la + kp]));
      for (int n = 0; n < NR; ++n) c[m][n] = _mm512_dpbf16_ps(c[m][n], b[n], av);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) _mm512_storeu_ps(C + m * ldc + 16 * n, c[m][n]);
}

// C[M][16 NB] (+)= A[M][2 KP] B (B blocks `bs` apart); M a multiple of 8.
TARGET void gemm(const uint16_t* A, int64_t lda, int64_t M, const uint16_t* B, int64_t bs, int64_t KP, int64_t NB,
                 float* C, int64_t ldc, bool acc) {
  for (int64_t nb = 0; nb < NB; nb += 2) {
    const bool two = nb + 1 < NB;
    for (int64_t m = 0; m < M; m += 8) {
      if (two)
        tile<8, 2>(A + m * lda, lda, B + nb * bs, bs, KP, C + m * ldc + 16 * nb, ldc, acc);
      else
        tile<8, 1>(A + m * lda, lda, B + nb * bs, bs, KP, C + m * ldc + 16 * nb, ldc, acc);
    }
  }
}

// exp(x) for x <= 0 (x < -87 gives 0): 2^n e^r, |r| <= ln2/2, e^r by its Taylor series to r^6 (rel. error ~2e-7).
TARGET inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), 0);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 first(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << std::max<int64_t>(n, 0)) - 1); }

TARGET inline void store_bf16(uint16_t* dst, __m512 v, __mmask16 mk) {
  _mm256_mask_storeu_epi16(dst, mk, (__m256i)_mm512_cvtneps_pbh(v));
}

TARGET inline __m512 load_bf16(const uint16_t* src, __mmask16 mk) {
  const __m256i h = _mm256_maskz_loadu_epi16(mk, src);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// rows [0, n) of a block of x (row stride rs) into dst [BQ][D], zero rows after
void copy_rows(const uint16_t* x, int64_t rs, int64_t n, int64_t D, uint16_t* dst) {
  for (int64_t r = 0; r < n; ++r) std::memcpy(dst + r * D, x + r * rs, static_cast<size_t>(D) * sizeof(uint16_t));
  std::memset(dst + n * D, 0, static_cast<size_t>((BQ - n) * D) * sizeof(uint16_t));
}

struct Geometry {
  int64_t H, Hkv, T, D, group;
  int64_t qh, qt, kh, kt, vh, vt;  // strides (elements) of head and position
};

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention_bf16: q, k, v must be [heads, T, D]");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "attention_bf16: q, k, v must be bf16");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1,
              "attention_bf16: the last dimension must be contiguous");
  Geometry g{q.size(0), k.size(0), q.size(1), q.size(2), 0, q.stride(0), q.stride(1),
             k.stride(0), k.stride(1), v.stride(0), v.stride(1)};
  TORCH_CHECK(g.D % 32 == 0 && g.D <= 256, "attention_bf16: head size must be a multiple of 32, <= 256");
  TORCH_CHECK(k.size(1) == g.T && v.size(1) == g.T && k.size(2) == g.D && v.size(2) == g.D && v.size(0) == g.Hkv,
              "attention_bf16: q, k, v sizes differ");
  TORCH_CHECK(g.Hkv > 0 && g.H % g.Hkv == 0, "attention_bf16: query heads must be a multiple of key/value heads");
  g.group = g.H / g.Hkv;
  return g;
}

// (example, key/value head) tasks, longest examples first (dynamic scheduling then balances the threads)
std::vector<std::pair<int64_t, int64_t>> tasks(const std::vector<int64_t>& cu, int64_t T, int64_t Hkv) {
  TORCH_CHECK(!cu.empty() && cu.front() == 0 && cu.back() <= T, "attention_bf16: boundaries must run from 0 to <= T");
  std::vector<int64_t> ex;
  for (size_t e = 0; e + 1 < cu.size(); ++e) {
    TORCH_CHECK(cu[e + 1] >= cu[e], "attention_bf16: boundaries must not decrease");
    if (cu[e + 1] > cu[e]) ex.push_back(static_cast<int64_t>(e));
  }
  std::stable_sort(ex.begin(), ex.end(), [&](int64_t a, int64_t b) { return cu[a + 1] - cu[a] > cu[b + 1] - cu[b]; });
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t e : ex)
    for (int64_t g = 0; g < Hkv; ++g) out.emplace_back(e, g);
  return out;
}

const uint16_t* ptr(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<c10::BFloat16>()); }
uint16_t* mptr(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>()); }

// q [H, T, D], k/v [Hkv, T, D] bf16 (any strides, D contiguous); cu: example boundaries. Returns the output
// [T, H, D] bf16 (zero after cu[-1]) and the log-sum-exp of every score row [H, T] fp32.
TARGET std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  std::vector<int64_t> cu, double scale_) {
  const Geometry G = geometry(q, k, v);
  const int64_t H = G.H, D = G.D, T = G.T;
  const float scale = static_cast<float>(scale_);
  at::Tensor o = at::zeros({T, H, D}, q.options());
  at::Tensor lse = at::zeros({H, T}, q.options().dtype(at::kFloat));
  const auto work = tasks(cu, T, G.Hkv);
  const uint16_t *qp = ptr(q), *kp = ptr(k), *vp = ptr(v);
  uint16_t* op = mptr(o);
  float* lp = lse.data_ptr<float>();
  const int64_t n = static_cast<int64_t>(work.size());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<uint16_t> Kp, Vp, Qb(BQ * D), Pb;
    std::vector<float> S, Ob(BQ * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n; ++w) {
      const auto [e, g] = work[w];
      const int64_t s = cu[e], L = cu[e + 1] - s, TP = round_up(L, KA);
      Kp.resize(TP * D);
      Vp.resize(TP * D);
      S.resize(BQ * TP);
      Pb.resize(BQ * TP);
      pack_nk(kp + g * G.kh + s * G.kt, G.kt, L, D, TP, Kp.data());
      pack_kn(vp + g * G.vh + s * G.vt, G.vt, L, D, TP, Vp.data());
      for (int64_t h = g * G.group; h < (g + 1) * G.group; ++h) {
        for (int64_t i0 = 0; i0 < L; i0 += BQ) {
          const int64_t rows = std::min(BQ, L - i0), NP = round_up(i0 + rows, KA);
          copy_rows(qp + h * G.qh + (s + i0) * G.qt, G.qt, rows, D, Qb.data());
          gemm(Qb.data(), D, BQ, Kp.data(), D * 16, D / 2, NP / 16, S.data(), NP, false);
          for (int64_t r = 0; r < BQ; ++r) {
            uint16_t* pr = Pb.data() + r * NP;
            if (r >= rows) {
              std::memset(pr, 0, static_cast<size_t>(NP) * sizeof(uint16_t));
              continue;
            }
            const int64_t nv = i0 + r + 1;  // keys this row sees
            float* sr = S.data() + r * NP;  // scores, then in place exp(scale S - m)
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int64_t j = 0; j < nv; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, first(nv - j), sr + j));
            const float m = _mm512_reduce_max_ps(mx) * scale;
            const __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(m);
            __m512 sum = _mm512_setzero_ps();
            for (int64_t j = 0; j < nv; j += 16) {
              const __mmask16 mk = first(nv - j);
              const __m512 p = _mm512_maskz_mov_ps(mk, exp512(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), vs, vm)));
              _mm512_storeu_ps(sr + j, p);
              sum = _mm512_add_ps(sum, p);
            }
            const float tot = _mm512_reduce_add_ps(sum);
            lp[h * T + s + i0 + r] = m + std::log(tot);
            const __m512 inv = _mm512_set1_ps(1.f / tot);
            int64_t j = 0;
            for (; j < nv; j += 16) store_bf16(pr + j, _mm512_maskz_mul_ps(first(nv - j), _mm512_loadu_ps(sr + j), inv), 0xFFFF);
            for (; j < NP; j += 16) store_bf16(pr + j, _mm512_setzero_ps(), 0xFFFF);
          }
          gemm(Pb.data(), NP, BQ, Vp.data(), TP * 16, NP / 2, D / 16, Ob.data(), D, false);
          for (int64_t r = 0; r < rows; ++r) {
            uint16_t* dst = op + ((s + i0 + r) * H + h) * D;
            for (int64_t d = 0; d < D; d += 16) store_bf16(dst + d, _mm512_loadu_ps(Ob.data() + r * D + d), 0xFFFF);
          }
        }
      }
    }
  }
  return {o, lse};
}

// The gradients of forward's q, k, v (same sizes and strides as them) from the output's gradient dout [T, H, D],
// the output o and the log-sum-exp lse that forward returned.
TARGET std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& dout_, const at::Tensor& q,
                                                               const at::Tensor& k, const at::Tensor& v,
                                                               const at::Tensor& o_, const at::Tensor& lse_,
                                                               std::vector<int64_t> cu, double scale_) {
  const Geometry G = geometry(q, k, v);
  const int64_t H = G.H, D = G.D, T = G.T;
  const float scale = static_cast<float>(scale_);
  const at::Tensor dout = dout_.to(at::kBFloat16).contiguous(), o = o_.contiguous(), lse = lse_.contiguous();
  TORCH_CHECK(dout.sizes() == o.sizes() && o.size(0) == T && o.size(1) == H && o.size(2) == D,
              "attention_bf16: the output's gradient must be [T, H, D]");
  // laid out as q, k, v where they are dense (a view of a model's projection), else contiguous
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  const int64_t dqh = dq.stride(0), dqt = dq.stride(1), dkh = dk.stride(0), dkt = dk.stride(1);
  const int64_t dvh = dv.stride(0), dvt = dv.stride(1);
  TORCH_CHECK(dq.stride(2) == 1 && dk.stride(2) == 1 && dv.stride(2) == 1, "attention_bf16: unexpected layout");
  const auto work = tasks(cu, T, G.Hkv);
  const uint16_t *qp = ptr(q), *kp = ptr(k), *vp = ptr(v), *dop = ptr(dout), *op = ptr(o);
  uint16_t *dqp = mptr(dq), *dkp = mptr(dk), *dvp = mptr(dv);
  const float* lp = lse.data_ptr<float>();
  const int64_t n = static_cast<int64_t>(work.size());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    // B operands: K, V for the scores and dP (Kn, Vn), K for dQ (Kk), P and dS over the block's rows (PB, dSB);
    // A operands: the block's rows of q and dout (Qb, dOb), and their transposes (QT, dOT), dS (dS16)
    std::vector<uint16_t> Kn, Vn, Kk, Qb(BQ * D), dOb(BQ * D), QT(BQ * D), dOT(BQ * D), dS16, PB, dSB;
    std::vector<float> S, dP, dKT, dVT, dQb(BQ * D);  // dK^T, dV^T [D][TP]: their products sum over query rows
    float delta[BQ];
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n; ++w) {
      const auto [e, g] = work[w];
      const int64_t s = cu[e], L = cu[e + 1] - s, TP = round_up(L, KA);
      for (auto* b : {&Kn, &Vn, &Kk}) b->resize(TP * D);
      for (auto* b : {&dS16, &PB, &dSB}) b->resize(BQ * TP);
      S.resize(BQ * TP);
      dP.resize(BQ * TP);
      dKT.assign(D * TP, 0.f);
      dVT.assign(D * TP, 0.f);
      pack_nk(kp + g * G.kh + s * G.kt, G.kt, L, D, TP, Kn.data());
      pack_nk(vp + g * G.vh + s * G.vt, G.vt, L, D, TP, Vn.data());
      pack_kn(kp + g * G.kh + s * G.kt, G.kt, L, D, TP, Kk.data());
      for (int64_t h = g * G.group; h < (g + 1) * G.group; ++h) {
        for (int64_t i0 = 0; i0 < L; i0 += BQ) {
          const int64_t rows = std::min(BQ, L - i0), NP = round_up(i0 + rows, KA);
          copy_rows(qp + h * G.qh + (s + i0) * G.qt, G.qt, rows, D, Qb.data());
          copy_rows(dop + ((s + i0) * H + h) * D, H * D, rows, D, dOb.data());
          transpose_block(Qb.data(), D, QT.data());
          transpose_block(dOb.data(), D, dOT.data());
          for (int64_t r = 0; r < BQ; ++r) {
            __m512 acc = _mm512_setzero_ps();
            if (r < rows) {
              const uint16_t* orow = op + ((s + i0 + r) * H + h) * D;
              for (int64_t d = 0; d < D; d += 16)
                acc = _mm512_fmadd_ps(load_bf16(orow + d, 0xFFFF), load_bf16(dOb.data() + r * D + d, 0xFFFF), acc);
            }
            delta[r] = _mm512_reduce_add_ps(acc);
          }
          gemm(Qb.data(), D, BQ, Kn.data(), D * 16, D / 2, NP / 16, S.data(), NP, false);
          gemm(dOb.data(), D, BQ, Vn.data(), D * 16, D / 2, NP / 16, dP.data(), NP, false);
          // P = exp(scale S - lse), dS = scale P (dP - delta), two rows at a time: each as bf16 rows (dS, the A
          // operand of dQ) and the pair interleaved into the B layout over rows (P and dS for dV^T and dK^T)
          const __m512 vs = _mm512_set1_ps(scale);
          uint32_t* pb32 = reinterpret_cast<uint32_t*>(PB.data());
          uint32_t* db32 = reinterpret_cast<uint32_t*>(dSB.data());
          for (int64_t r = 0; r < BQ; r += 2) {
            int64_t nv[2];  // keys each row sees (0 for padding rows), its log-sum-exp and delta
            __m512 vl[2], vd[2];
            for (int64_t u = 0; u < 2; ++u) {
              const int64_t rr = r + u;
              nv[u] = rr < rows ? i0 + rr + 1 : 0;
              vl[u] = _mm512_set1_ps(rr < rows ? lp[h * T + s + i0 + rr] : 0.f);
              vd[u] = _mm512_set1_ps(delta[rr]);
            }
            __m512i pw[2], dw[2];
            for (int64_t j = 0; j < NP; j += 16) {
              for (int64_t u = 0; u < 2; ++u) {
                const int64_t rr = r + u;
                const __m512 p = _mm512_maskz_mov_ps(
                    first(nv[u] - j), exp512(_mm512_fmsub_ps(_mm512_loadu_ps(S.data() + rr * NP + j), vs, vl[u])));
                const __m512 dpv = _mm512_sub_ps(_mm512_loadu_ps(dP.data() + rr * NP + j), vd[u]);
                const __m512 ds = _mm512_mul_ps(_mm512_mul_ps(p, dpv), vs);
                const __m256i p16 = (__m256i)_mm512_cvtneps_pbh(p), d16 = (__m256i)_mm512_cvtneps_pbh(ds);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(dS16.data() + rr * NP + j), d16);
                pw[u] = _mm512_cvtepu16_epi32(p16);
                dw[u] = _mm512_cvtepu16_epi32(d16);
              }
              const int64_t at = ((j / 16) * (BQ / 2) + r / 2) * 16;
              _mm512_storeu_si512(pb32 + at, _mm512_or_si512(pw[0], _mm512_slli_epi32(pw[1], 16)));
              _mm512_storeu_si512(db32 + at, _mm512_or_si512(dw[0], _mm512_slli_epi32(dw[1], 16)));
            }
          }
          gemm(dS16.data(), NP, BQ, Kk.data(), TP * 16, NP / 2, D / 16, dQb.data(), D, false);
          for (int64_t r = 0; r < rows; ++r) {
            uint16_t* dst = dqp + h * dqh + (s + i0 + r) * dqt;
            for (int64_t d = 0; d < D; d += 16) store_bf16(dst + d, _mm512_loadu_ps(dQb.data() + r * D + d), 0xFFFF);
          }
          gemm(dOT.data(), BQ, D, PB.data(), BQ * 16, BQ / 2, NP / 16, dVT.data(), TP, true);
          gemm(QT.data(), BQ, D, dSB.data(), BQ * 16, BQ / 2, NP / 16, dKT.data(), TP, true);
        }
      }
      for (int64_t t = 0; t < L; ++t) {
        c10::BFloat16* dkr = reinterpret_cast<c10::BFloat16*>(dkp + g * dkh + (s + t) * dkt);
        c10::BFloat16* dvr = reinterpret_cast<c10::BFloat16*>(dvp + g * dvh + (s + t) * dvt);
        for (int64_t d = 0; d < D; ++d) {
          dkr[d] = c10::BFloat16(dKT[d * TP + t]);
          dvr[d] = c10::BFloat16(dVT[d * TP + t]);
        }
      }
    }
  }
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tunelab, m) {
  m.def("attention_bf16(Tensor q, Tensor k, Tensor v, int[] cu, float scale) -> (Tensor, Tensor)", forward);
  m.def(
      "attention_bf16_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, int[] cu, "
      "float scale) -> (Tensor, Tensor, Tensor)",
      backward);
}
