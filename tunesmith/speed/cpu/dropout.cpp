// FastDropout's mask made and applied in one pass per tensor (dropout.py has the why and the tensor-op version).
//
// Element i keeps its value when 15 bits of lowbias32(offset + (i / 2) * multiplier) are at least the threshold:
// the low 16-bit lane of the hash word for even i, the high lane for odd i, the sign bit masked off. That is the
// mask dropout.py's `keep_mask` builds from int32 tensor ops, bit for bit, so the two paths are interchangeable
// (a seeded run and a gradient-checkpointing replay draw the same masks on either). The kept values are
// (x * 1) * scale and the dropped ones x * 0, as `_scale_kept` computes them, so the outputs match too.
// Built without -ffast-math: x * 0 must stay NaN for a NaN input, and products must not be reassociated.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task
constexpr int64_t kChunk = 1024;     // elements whose hash words are made before they are used (an even number)

inline uint32_t lowbias32(uint32_t z) {
  z ^= z >> 16;
  z *= 0x7FEB352Du;
  z ^= z >> 15;
  z *= 0x846CA68Bu;
  return z ^ (z >> 16);
}

// bf16 <-> float on the bits, so that the loops vectorise; rounding to nearest even and NaN as c10::BFloat16 does.
inline float widen(float value) { return value; }
inline float widen(at::BFloat16 value) {
  const uint32_t bits = uint32_t(value.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
template <typename T>
inline T narrow(float value);
template <>
inline float narrow<float>(float value) { return value; }
template <>
inline at::BFloat16 narrow<at::BFloat16>(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t rounded = value != value ? 0x7FC0 : static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
  return at::BFloat16(rounded, at::BFloat16::from_bits());
}

// out = x * keep * scale, elementwise. The loops run on local copies of what they read (captured by value, pointers
// restrict): their uint8 accesses could otherwise alias the captures, and the compiler would not vectorise.
template <typename T>
inline void apply_mask(const T* __restrict x, const uint8_t* __restrict keep, T* __restrict out, int64_t count,
                       float scale) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = narrow<T>(widen(x[i]) * static_cast<float>(keep[i]) * scale);
}

template <typename T>
void keep_and_scale(const T* x, T* out, uint8_t* keep, int64_t n, uint32_t multiplier, uint32_t offset,
                    uint32_t threshold, float scale) {
  at::parallel_for(0, (n + kChunk - 1) / kChunk, kGrain / kChunk, [=](int64_t first, int64_t last) {
    uint32_t words[kChunk / 2];
    uint16_t lanes[kChunk];  // element i's 16 bits: lane i of the words (little-endian)
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t begin = chunk * kChunk, count = std::min(kChunk, n - begin);
      const auto word0 = static_cast<uint32_t>(begin / 2);
#pragma omp simd
      for (int64_t w = 0; w < kChunk / 2; ++w) words[w] = lowbias32(offset + (word0 + uint32_t(w)) * multiplier);
      std::memcpy(lanes, words, sizeof(words));
      uint8_t* __restrict chunk_keep = keep + begin;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) chunk_keep[i] = (lanes[i] & 0x7FFFu) >= threshold;
      apply_mask(x + begin, chunk_keep, out + begin, count, scale);
    }
  });
}

template <typename T>
void scale_kept(const T* grad, const uint8_t* keep, T* out, int64_t n, float scale) {
  at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
    apply_mask(grad + begin, keep + begin, out + begin, end - begin, scale);
  });
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "fast dropout kernel: expects a contiguous CPU float32 or bfloat16 tensor");
}

}  // namespace

// (output, uint8 keep mask) for x; multiplier and offset are the key's two int32 values (the multiplier made odd
// by the caller), threshold = round(p * 32768).
std::vector<at::Tensor> forward(const at::Tensor& x, int64_t multiplier, int64_t offset, int64_t threshold,
                                double scale) {
  check(x);
  at::Tensor out = at::empty_like(x), keep = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const auto m = static_cast<uint32_t>(multiplier), o = static_cast<uint32_t>(offset);
  const auto t = static_cast<uint32_t>(threshold);
  if (x.scalar_type() == at::kFloat)
    keep_and_scale(x.const_data_ptr<float>(), out.data_ptr<float>(), keep.data_ptr<uint8_t>(), x.numel(), m, o, t,
                   static_cast<float>(scale));
  else
    keep_and_scale(x.const_data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), keep.data_ptr<uint8_t>(),
                   x.numel(), m, o, t, static_cast<float>(scale));
  return {out, keep};
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& keep, double scale) {
  check(grad);
  TORCH_CHECK(keep.is_contiguous() && keep.numel() == grad.numel(), "fast dropout kernel: mask does not match");
  at::Tensor out = at::empty_like(grad);
  if (grad.scalar_type() == at::kFloat)
    scale_kept(grad.const_data_ptr<float>(), keep.const_data_ptr<uint8_t>(), out.data_ptr<float>(), grad.numel(),
               static_cast<float>(scale));
  else
    scale_kept(grad.const_data_ptr<at::BFloat16>(), keep.const_data_ptr<uint8_t>(), out.data_ptr<at::BFloat16>(),
               grad.numel(), static_cast<float>(scale));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "dropout forward: (output, keep mask)");
  m.def("backward", &backward, "dropout backward: the gradient through the kept elements");
}
