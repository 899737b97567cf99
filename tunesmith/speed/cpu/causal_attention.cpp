// Causal self-attention for CPU training in bf16 that computes only the blocks at or below the diagonal.
//
// Why: below 512 keys torch's CPU flash-attention kernel uses one key block as wide as the sequence, so with
// is_causal it still computes the whole score square and masks half of it (forward and backward). Here queries go
// in blocks of 64 rows and each block meets only the keys up to its last row. The matrix products run through
// torch's exported cpublas::brgemm, oneDNN's bf16 micro-kernel with fp32 accumulation, whose right operand it
// takes in VNNI layout (pairs of consecutive rows interleaved: [K/2][N][2]); softmax, its backward and the
// log-sum-exp stay in fp32. As in every flash kernel, the probabilities and their gradients are rounded to bf16
// before they enter a matrix product. For CPUs with AVX512-BF16 and without AMX: on AMX CPUs oneDNN wants its own
// packed layout, which this file does not produce (causal_attention.py does not call it there).
//
// Layouts: q [B, Hq, L, D], k and v [B, Hk, L, D] (any strides with a contiguous last dimension; D even; Hq a
// multiple of Hk: grouped-query attention reads each key/value head for its group without copies). The output is
// [B, L, Hq, D], the layout transformers' attention functions return; lse is [B, Hq, L].
//
// Segments (varlen attention): a packed row holds several samples, each attending causally to itself only. The
// segments tensor, int64 [S, 3], lists (batch row, first position, length) tiling each row in order; a plain batch
// has one segment per row. Each segment is its own causal attention, so no block meets another sample's keys.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

using at::BFloat16;
namespace cpublas = at::native::cpublas;

constexpr int64_t kBlock = 64;  // query rows per block

inline int64_t even(int64_t n) { return (n + 1) / 2 * 2; }

inline uint16_t bf16_bits(float value) {  // round to nearest even, as torch's float -> bfloat16 conversion
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

inline void store_bf16(const float* src, BFloat16* dst, int64_t n, float factor = 1.f) {
  auto* out = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = bf16_bits(src[j] * factor);
}

// An fp32 [rows x n] matrix (row stride n) written as bf16 in VNNI layout [rows/2][n][2], an odd last row paired
// with zeros.
inline void store_bf16_vnni(const float* src, BFloat16* dst, int64_t rows, int64_t n) {
  auto* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t t = 0; t < rows; t += 2, out += n) {
    const float* even_row = src + t * n;
    const float* odd_row = t + 1 < rows ? even_row + n : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
      out[j] = bf16_bits(even_row[j]) | (odd_row ? uint32_t(bf16_bits(odd_row[j])) << 16 : 0u);
  }
}

// C[m x n] (+)= A[m x k] B[k x n]: A row-major, B in VNNI layout with n columns per row pair, k even.
inline void matmul(int64_t m, int64_t n, int64_t k, const BFloat16* a, int64_t lda, const BFloat16* b_vnni,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b_vnni, c, /*is_vnni=*/true);
}

// Runs fn(b, h) for every batch row and head on torch's threads. The layout copies below are loops of their own:
// torch's strided copy runs a permute whose innermost dimension is a pair element by element.
template <typename F>
void for_each_head(int64_t batch, int64_t heads, const F& fn) {
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) fn(task / heads, task % heads);
  });
}

// A [B, H, L, D] view (any strides, the last dimension contiguous) as raw bf16 bits of one head's rows.
struct Rows {
  const uint16_t* data;
  int64_t batch_stride, head_stride, row_stride;
  explicit Rows(const at::Tensor& x)
      : data(reinterpret_cast<const uint16_t*>(x.const_data_ptr<BFloat16>())), batch_stride(x.stride(0)),
        head_stride(x.stride(1)), row_stride(x.stride(2)) {}
  const uint16_t* head(int64_t b, int64_t h) const { return data + b * batch_stride + h * head_stride; }
};

// [B, H, L, D] -> VNNI pairs along D: [B, H, D/2, L, 2] (the right operand of x^T products, x = keys or values).
at::Tensor pairs_along_dim(const at::Tensor& x) {
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), D = x.size(3);
  at::Tensor out = at::empty({B, H, D / 2, L, 2}, x.options());
  auto* out_data = reinterpret_cast<uint32_t*>(out.data_ptr<BFloat16>());
  const Rows rows(x);
  for_each_head(B, H, [&](int64_t b, int64_t h) {
    const uint16_t* in = rows.head(b, h);
    uint32_t* o = out_data + (b * H + h) * (D / 2) * L;
    for (int64_t l = 0; l < L; ++l, in += rows.row_stride)
      for (int64_t d = 0; d < D / 2; ++d) o[d * L + l] = in[2 * d] | uint32_t(in[2 * d + 1]) << 16;
  });
  return out;
}

struct Segment {
  int64_t b, start, length;
  int64_t pair0;  // its first row pair in the layouts paired along the length (each segment padded to even length)
};

struct Segments {
  std::vector<Segment> list;
  int64_t pairs = 0;  // row pairs per batch row in those layouts: the most any row needs
  int64_t longest = 0;
};

Segments read_segments(const at::Tensor& segments, int64_t B, int64_t L) {
  TORCH_CHECK(segments.device().is_cpu() && segments.scalar_type() == at::kLong && segments.dim() == 2 &&
                  segments.size(1) == 3,
              "causal_attention: segments must be a CPU int64 [S, 3] tensor of (batch row, start, length)");
  const at::Tensor rows = segments.contiguous();
  const int64_t* data = rows.const_data_ptr<int64_t>();
  Segments out;
  int64_t row = -1, next = L, pair = 0;
  for (int64_t i = 0; i < rows.size(0); ++i) {
    const int64_t b = data[3 * i], start = data[3 * i + 1], length = data[3 * i + 2];
    if (b != row) {
      TORCH_CHECK(b == row + 1 && next == L, "causal_attention: segments must tile every batch row in order");
      row = b, next = 0, pair = 0;
    }
    TORCH_CHECK(start == next && length > 0 && start + length <= L,
                "causal_attention: segments must tile every batch row in order");
    out.list.push_back({b, start, length, pair});
    next += length;
    pair += even(length) / 2;
    out.pairs = std::max(out.pairs, pair);
    out.longest = std::max(out.longest, length);
  }
  TORCH_CHECK(row == B - 1 && next == L, "causal_attention: segments must tile every batch row in order");
  return out;
}

// Tasks of unequal cost on torch's threads: each thread takes the heaviest task left whenever it finishes one.
// A packed row's samples differ in length (attention's cost grows with its square), and torch's parallel_for splits
// a range into one fixed block per thread, which left one thread with the long samples while the other waited.
// Each thread makes its own scratch buffers with make_scratch(), then runs fn(task, scratch) for the tasks it takes.
template <typename MakeScratch, typename F>
void heaviest_first(const std::vector<double>& cost, const MakeScratch& make_scratch, const F& fn) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(order.size());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {  // one index per thread: each a worker
    for (int64_t worker = begin; worker < end; ++worker) {
      auto scratch = make_scratch();
      for (int64_t i = next++; i < count; i = next++) fn(order[i], scratch);
    }
  });
}

struct NoScratch {};

// Runs fn(segment, h) for every segment and head on torch's threads, longer segments first.
template <typename F>
void for_each_segment_head(const Segments& segs, int64_t heads, const F& fn) {
  std::vector<double> cost;
  for (const Segment& g : segs.list) cost.insert(cost.end(), heads, static_cast<double>(g.length));
  heaviest_first(cost, [] { return NoScratch{}; },
                 [&](int64_t task, NoScratch&) { fn(segs.list[task / heads], task % heads); });
}

// [B, H, L, D] -> VNNI pairs along L, each segment padded to even length: [B, H, pairs, D, 2].
at::Tensor pairs_along_length(const at::Tensor& x, const Segments& segs) {
  const int64_t B = x.size(0), H = x.size(1), D = x.size(3);
  at::Tensor out = at::empty({B, H, segs.pairs, D, 2}, x.options());
  auto* out_data = reinterpret_cast<uint32_t*>(out.data_ptr<BFloat16>());
  const Rows rows(x);
  for_each_segment_head(segs, H, [&](const Segment& g, int64_t h) {
    const uint16_t* in = rows.head(g.b, h) + g.start * rows.row_stride;
    uint32_t* o = out_data + ((g.b * H + h) * segs.pairs + g.pair0) * D;
    for (int64_t l = 0; l < g.length; l += 2, o += D) {
      const uint16_t* even_row = in + l * rows.row_stride;
      const uint16_t* odd_row = even_row + rows.row_stride;
      if (l + 1 < g.length) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = even_row[d] | uint32_t(odd_row[d]) << 16;
      } else {
        for (int64_t d = 0; d < D; ++d) o[d] = even_row[d];
      }
    }
  });
  return out;
}

// [B, H, L, D] -> [B, H, D, 2 * pairs], each segment's columns padded to even length with a zero column (left
// operands of the transposed key/value gradients). Each store writes two adjacent output elements (a pair of input
// rows) as one 32-bit word, in tiles of 16 pairs so that the stores run along output rows.
at::Tensor transposed(const at::Tensor& x, const Segments& segs) {
  constexpr int64_t kPairs = 16;
  const int64_t B = x.size(0), H = x.size(1), D = x.size(3), pairs = segs.pairs;
  at::Tensor out = at::empty({B, H, D, 2 * pairs}, x.options());
  auto* out_data = reinterpret_cast<uint32_t*>(out.data_ptr<BFloat16>());
  const Rows rows(x);
  const std::vector<uint16_t> zeros(D, 0);  // the padding row of an odd length
  for_each_segment_head(segs, H, [&](const Segment& g, int64_t h) {
    const uint16_t* in = rows.head(g.b, h) + g.start * rows.row_stride;
    uint32_t* o = out_data + (g.b * H + h) * D * pairs + g.pair0;
    const int64_t P = even(g.length) / 2;
    for (int64_t p0 = 0; p0 < P; p0 += kPairs) {
      const int64_t p1 = std::min(P, p0 + kPairs);
      const uint16_t* even_rows[kPairs];
      const uint16_t* odd_rows[kPairs];
      for (int64_t p = p0; p < p1; ++p) {
        even_rows[p - p0] = in + 2 * p * rows.row_stride;
        odd_rows[p - p0] = 2 * p + 1 < g.length ? even_rows[p - p0] + rows.row_stride : zeros.data();
      }
      for (int64_t d = 0; d < D; ++d)
        for (int64_t p = p0; p < p1; ++p)
          o[d * pairs + p] = even_rows[p - p0][d] | uint32_t(odd_rows[p - p0][d]) << 16;
    }
  });
  return out;
}

inline float bf16_float(uint16_t bits) {
  const uint32_t widened = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->dim() == 4 && t->stride(3) == 1,
                "causal_attention: expects CPU bfloat16 [batch, heads, length, head_dim] tensors");
  }
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2) &&
                  q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0 && q.size(3) % 2 == 0,
              "causal_attention: query, key and value shapes do not match (or the head dimension is odd)");
}

}  // namespace

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                const at::Tensor& segments) {
  check_inputs(q, k, v);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), D = q.size(3), Hk = k.size(1), G = Hq / Hk;
  const Segments segs = read_segments(segments, B, L);
  const at::Tensor k_pairs = pairs_along_dim(k), v_pairs = pairs_along_length(v, segs);
  at::Tensor out = at::empty({B, L, Hq, D}, q.options());
  at::Tensor lse = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  struct Task {
    int64_t segment, head, block;
  };
  std::vector<Task> tasks;
  std::vector<double> cost;  // a block's products: its rows times the keys up to its last row
  for (int64_t g = 0; g < static_cast<int64_t>(segs.list.size()); ++g)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i * kBlock < segs.list[g].length; ++i) {
        tasks.push_back({g, h, i});
        cost.push_back(static_cast<double>(std::min(kBlock, segs.list[g].length - i * kBlock)) *
                       std::min(segs.list[g].length, (i + 1) * kBlock));
      }
  const BFloat16 *q_data = q.const_data_ptr<BFloat16>(), *kp_data = k_pairs.const_data_ptr<BFloat16>(),
                 *vp_data = v_pairs.const_data_ptr<BFloat16>();
  BFloat16* out_data = out.data_ptr<BFloat16>();
  float* lse_data = lse.data_ptr<float>();
  const float s = static_cast<float>(scale);
  const int64_t Lp = even(segs.longest);  // the most keys a block meets, padded

  struct Scratch {
    std::vector<float> scores, result;
    std::vector<BFloat16> probs;
  };
  const auto make_scratch = [&] {
    return Scratch{std::vector<float>(kBlock * Lp), std::vector<float>(kBlock * D),
                   std::vector<BFloat16>(kBlock * Lp)};
  };
  heaviest_first(cost, make_scratch, [&](int64_t task, Scratch& scratch) {
    float *scores = scratch.scores.data(), *result = scratch.result.data();
    BFloat16* probs = scratch.probs.data();
    const Segment& g = segs.list[tasks[task].segment];
    const int64_t h = tasks[task].head, b = g.b, hk = h / G;
    // r0 counts from the segment's start, row0 from the batch row's
    const int64_t r0 = tasks[task].block * kBlock, rows = std::min(kBlock, g.length - r0), keys = r0 + rows;
    const int64_t keys_p = even(keys), row0 = g.start + r0;
    const BFloat16* q_rows = q_data + b * q.stride(0) + h * q.stride(1) + row0 * q.stride(2);
    const BFloat16* k_head = kp_data + (b * Hk + hk) * D * L + 2 * g.start;
    const BFloat16* v_head = vp_data + ((b * Hk + hk) * segs.pairs + g.pair0) * 2 * D;
    matmul(rows, keys, D, q_rows, q.stride(2), k_head, L, scores, keys, false);
    for (int64_t t = 0; t < rows; ++t) {
      float* row = scores + t * keys;
      const int64_t seen = r0 + t + 1;  // the segment's keys up to this row
      float top = row[0] * s;
#pragma omp simd reduction(max : top)
      for (int64_t j = 0; j < seen; ++j) top = std::max(top, row[j] * s);
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < seen; ++j) {
        row[j] = std::exp(row[j] * s - top);
        sum += row[j];
      }
      BFloat16* p = probs + t * keys_p;
      store_bf16(row, p, seen, 1.f / sum);  // normalised as they are rounded
      std::fill(p + seen, p + keys_p, BFloat16(0.f));
      lse_data[(b * Hq + h) * L + row0 + t] = top + std::log(sum);
    }
    matmul(rows, D, keys_p, probs, keys_p, v_head, D, result, D, false);
    for (int64_t t = 0; t < rows; ++t)
      store_bf16(result + t * D, out_data + ((b * L + row0 + t) * Hq + h) * D, D);
  });
  return {out, lse};
}

// grad_out and out: [B, L, Hq, D]. Returns dq [B, Hq, L, D] and dk, dv [B, Hk, L, D].
std::vector<at::Tensor> backward(const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale,
                                 const at::Tensor& segments) {
  check_inputs(q, k, v);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), D = q.size(3), Hk = k.size(1), G = Hq / Hk;
  const Segments segs = read_segments(segments, B, L);
  const int64_t Lp = even(segs.longest), Tp = 2 * segs.pairs;  // Tp: columns of the transposed layouts
  const at::Tensor grad_out = grad_out_in.to(at::kBFloat16).contiguous();
  const at::Tensor k_pairs = pairs_along_dim(k), v_pairs = pairs_along_dim(v), k_rows = pairs_along_length(k, segs);
  // Left operands of the transposed key and value gradients (dK^T += Q^T dS, dV^T += dO^T P): [.., D, Tp].
  const at::Tensor qt = transposed(q, segs), grad_out_t = transposed(grad_out.transpose(1, 2), segs);
  // delta = rowsum(dO * O), the softmax backward's per-row term: [B, Hq, L]
  at::Tensor delta = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  {
    const Rows go(grad_out.transpose(1, 2)), o(out.transpose(1, 2));
    float* delta_out = delta.data_ptr<float>();
    for_each_head(B, Hq, [&](int64_t b, int64_t h) {
      const uint16_t *go_row = go.head(b, h), *o_row = o.head(b, h);
      for (int64_t l = 0; l < L; ++l, go_row += go.row_stride, o_row += o.row_stride) {
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < D; ++d) sum += bf16_float(go_row[d]) * bf16_float(o_row[d]);
        delta_out[(b * Hq + h) * L + l] = sum;
      }
    });
  }
  at::Tensor dq = at::empty({B, Hq, L, D}, q.options());
  // Each query head accumulates its own key/value gradient (tasks stay independent: a segment's keys meet only its
  // own queries); the group sums them below.
  at::Tensor dkt_heads = at::empty({B, Hq, D, L}, q.options().dtype(at::kFloat));
  at::Tensor dvt_heads = at::empty({B, Hq, D, L}, q.options().dtype(at::kFloat));
  const BFloat16 *q_data = q.const_data_ptr<BFloat16>(), *kp_data = k_pairs.const_data_ptr<BFloat16>(),
                 *vp_data = v_pairs.const_data_ptr<BFloat16>(), *kr_data = k_rows.const_data_ptr<BFloat16>(),
                 *qt_data = qt.const_data_ptr<BFloat16>(), *go_data = grad_out.const_data_ptr<BFloat16>(),
                 *got_data = grad_out_t.const_data_ptr<BFloat16>();
  const float *lse_data = lse.const_data_ptr<float>(), *delta_data = delta.const_data_ptr<float>();
  BFloat16* dq_data = dq.data_ptr<BFloat16>();
  float *dkt_data = dkt_heads.data_ptr<float>(), *dvt_data = dvt_heads.data_ptr<float>();
  const float s = static_cast<float>(scale);

  struct Scratch {
    std::vector<float> probs, dscores, dq_rows;
    std::vector<BFloat16> dscores_rows, probs_vnni, dscores_vnni;
  };
  const auto make_scratch = [&] {
    const int64_t n = kBlock * Lp;
    return Scratch{std::vector<float>(n), std::vector<float>(n), std::vector<float>(kBlock * D),
                   std::vector<BFloat16>(n), std::vector<BFloat16>(n), std::vector<BFloat16>(n)};
  };
  std::vector<double> cost;  // a segment's blocks meet about length^2 / 2 query-key pairs
  for (const Segment& g : segs.list) cost.insert(cost.end(), Hq, static_cast<double>(g.length) * g.length);
  heaviest_first(cost, make_scratch, [&](int64_t task, Scratch& scratch) {
    float *probs = scratch.probs.data(), *dscores = scratch.dscores.data(), *dq_rows = scratch.dq_rows.data();
    BFloat16 *dscores_rows = scratch.dscores_rows.data(), *probs_vnni = scratch.probs_vnni.data(),
             *dscores_vnni = scratch.dscores_vnni.data();
    const Segment& g = segs.list[task / Hq];
    const int64_t h = task % Hq;
    const int64_t b = g.b, hk = h / G, head = b * Hq + h;
    // The segment's columns of this head's key/value gradients
    float* dkt = dkt_data + head * D * L + g.start;
    float* dvt = dvt_data + head * D * L + g.start;
    for (int64_t d = 0; d < D; ++d) {
      std::fill(dkt + d * L, dkt + d * L + g.length, 0.f);
      std::fill(dvt + d * L, dvt + d * L + g.length, 0.f);
    }
    const BFloat16* kp_head = kp_data + (b * Hk + hk) * D * L + 2 * g.start;
    const BFloat16* vp_head = vp_data + (b * Hk + hk) * D * L + 2 * g.start;
    const BFloat16* kr_head = kr_data + ((b * Hk + hk) * segs.pairs + g.pair0) * 2 * D;
    const BFloat16* qt_head = qt_data + head * D * Tp + 2 * g.pair0;
    const BFloat16* got_head = got_data + head * D * Tp + 2 * g.pair0;
    for (int64_t r0 = 0; r0 < g.length; r0 += kBlock) {  // r0 counts from the segment's start, row0 from the row's
      const int64_t rows = std::min(kBlock, g.length - r0), rows_p = even(rows), row0 = g.start + r0;
      const int64_t keys = r0 + rows, keys_p = even(keys);
      const BFloat16* q_rows = q_data + b * q.stride(0) + h * q.stride(1) + row0 * q.stride(2);
      const BFloat16* go_rows = go_data + ((b * L + row0) * Hq + h) * D;  // row stride Hq * D
      const float* lse_rows = lse_data + head * L + row0;
      const float* delta_rows = delta_data + head * L + row0;
      matmul(rows, keys, D, q_rows, q.stride(2), kp_head, L, probs, keys, false);
      matmul(rows, keys, D, go_rows, Hq * D, vp_head, L, dscores, keys, false);
      for (int64_t t = 0; t < rows; ++t) {
        float* p = probs + t * keys;
        float* ds = dscores + t * keys;
        const int64_t seen = r0 + t + 1;
        const float row_lse = lse_rows[t], row_delta = delta_rows[t];
#pragma omp simd
        for (int64_t j = 0; j < seen; ++j) {
          p[j] = std::exp(p[j] * s - row_lse);  // the forward's probabilities, recomputed
          ds[j] = p[j] * (ds[j] - row_delta) * s;
        }
        std::fill(p + seen, p + keys, 0.f);
        std::fill(ds + seen, ds + keys, 0.f);
        BFloat16* ds_row = dscores_rows + t * keys_p;
        store_bf16(ds, ds_row, keys);
        if (keys_p > keys) ds_row[keys] = BFloat16(0.f);
      }
      store_bf16_vnni(probs, probs_vnni, rows, keys);
      store_bf16_vnni(dscores, dscores_vnni, rows, keys);
      matmul(D, keys, rows_p, got_head + r0, Tp, probs_vnni, keys, dvt, L, true);    // dV^T += dO^T P
      matmul(D, keys, rows_p, qt_head + r0, Tp, dscores_vnni, keys, dkt, L, true);   // dK^T += Q^T dS
      matmul(rows, D, keys_p, dscores_rows, keys_p, kr_head, D, dq_rows, D, false);  // dQ = dS K
      for (int64_t t = 0; t < rows; ++t)
        store_bf16(dq_rows + t * D, dq_data + (head * L + row0 + t) * D, D);
    }
  });
  const auto group_sum = [&](const at::Tensor& heads) {
    return heads.view({B, Hk, G, D, L}).sum(2).transpose(-1, -2).to(at::kBFloat16).contiguous();
  };
  return {dq, group_sum(dkt_heads), group_sum(dvt_heads)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "causal attention forward over segments: (out [B, L, Hq, D], lse [B, Hq, L])");
  m.def("backward", &backward, "causal attention backward: (dq, dk, dv)");
}
