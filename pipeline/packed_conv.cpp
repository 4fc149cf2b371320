#include "pipeline/packed_conv.h"

#include <ATen/Config.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include <torch/version.h>

#include "pipeline/media/safetensors_map.h"

// LibTorch 1.x with oneDNN: the version whose conv2d dispatch conv2d_takes_onednn_path mirrors.
#if TORCH_VERSION_MAJOR < 2 && AT_MKLDNN_ENABLED()
#define DIFFUSIOND_PACKED_CONV 1
#else
#define DIFFUSIOND_PACKED_CONV 0
#endif

namespace diffusiond {

struct PackedConvWeight {
  torch::Tensor source;  // the dense bytes packed (held: their address stays theirs)
  torch::Tensor packed;  // the same values in the oneDNN primitive's weight layout
};

namespace {

#if DIFFUSIOND_PACKED_CONV
// Takes t's bytes out of the resident set once they are packed. Weights used in place from a
// file mapping (never written, pipeline/weights.cpp) are dropped (MADV_DONTNEED through their
// map: immediate and certain on every file system; a read faults them in again from the
// file); other memory is only offered to the kernel (MADV_PAGEOUT, which may keep it).
void page_out(const torch::Tensor& t) {
  if (SafetensorsMap::release_resident_pages(t.data_ptr(), t.nbytes())) return;
#ifdef MADV_PAGEOUT
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto begin = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  auto end = begin + t.nbytes();
  begin = (begin + page - 1) / page * page;
  end = end / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#endif
}

// One slot per (bytes, version, shape, conv geometry): every module of the process whose
// weight is those bytes shares the packed copy while any of them holds it.
struct Slot {
  std::mutex mu;  // held while packing this one weight
  std::weak_ptr<const PackedConvWeight> packed;
};

std::shared_ptr<const PackedConvWeight> shared_pack(const torch::Tensor& weight,
                                                    c10::IntArrayRef padding,
                                                    c10::IntArrayRef stride,
                                                    c10::IntArrayRef dilation, int64_t groups) {
  std::vector<int64_t> key{reinterpret_cast<std::intptr_t>(weight.data_ptr()), weight._version(),
                           groups};
  for (auto list : {weight.sizes(), padding, stride, dilation})
    key.insert(key.end(), list.begin(), list.end());

  static std::mutex map_mu;
  static std::map<std::vector<int64_t>, std::shared_ptr<Slot>> slots;
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard lock(map_mu);
    for (auto it = slots.begin(); it != slots.end();) {  // forget weights nobody holds
      it = it->second->packed.expired() && it->first != key ? slots.erase(it) : std::next(it);
    }
    auto& entry = slots[key];
    if (!entry) entry = std::make_shared<Slot>();
    slot = entry;
  }
  std::lock_guard lock(slot->mu);
  if (auto packed = slot->packed.lock()) return packed;
  auto made = std::make_shared<PackedConvWeight>();
  {
    c10::InferenceMode normal_tensors(false);  // usable outside inference mode too
    torch::NoGradGuard no_grad;
    made->source = weight.detach();  // own TensorImpl: a later set_data leaves it
    made->packed =
        at::mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, stride, dilation, groups);
  }
  page_out(weight);
  slot->packed = made;
  return made;
}
#endif

}  // namespace

bool conv2d_takes_onednn_path(const torch::Tensor& x, c10::IntArrayRef x_sizes,
                              const torch::Tensor& weight, c10::IntArrayRef stride,
                              c10::IntArrayRef dilation, int64_t groups) {
  // Ref: LibTorch 1.13 aten/src/ATen/native/Convolution.cpp, ConvParams::use_mkldnn (float32,
  // not transposed); the earlier backends it is tried after (cuDNN, MIOpen) are CUDA-only.
  if (!at::globalContext().userEnabledMkldnn()) return false;
  if (!x.device().is_cpu() || x.is_mkldnn() || x.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32 || x_sizes.size() != 4 || weight.dim() != 4) {
    return false;
  }
  auto any_not_one = [](c10::IntArrayRef v) {
    for (auto e : v)
      if (e != 1) return true;
    return false;
  };
  const auto& n = x_sizes;
  const bool not_native_1x1 = any_not_one(stride) || any_not_one(dilation) || n[0] >= 16 ||
                              weight.size(-1) != 1 || weight.size(-2) != 1 ||
                              at::get_num_threads() > 1;
  const bool big_enough = groups > 1 || (weight.size(-1) > 3 && weight.size(-2) > 3) || n[0] > 1 ||
                          n[0] * n[1] * n[2] * n[3] > 20480;
  return not_native_1x1 && big_enough;
}

PackedConv2dImpl::PackedConv2dImpl(const torch::nn::Conv2dOptions& options)
    : torch::nn::Conv2dImpl(options) {
#if DIFFUSIOND_PACKED_CONV
  packable_ = c10::get_if<torch::ExpandingArray<2>>(&this->options.padding()) != nullptr &&
              c10::get_if<torch::enumtype::kZeros>(&this->options.padding_mode()) != nullptr;
#endif
}

bool PackedConv2dImpl::weight_packable() const {
  return packable_ && weight.device().is_cpu() && weight.scalar_type() == torch::kFloat32 &&
         weight.dim() == 4 && weight.is_contiguous() &&
         weight.suggest_memory_format() != at::MemoryFormat::ChannelsLast;
}

void PackedConv2dImpl::ensure_packed() {
#if DIFFUSIOND_PACKED_CONV
  if (packed_ && packed_->source.data_ptr() == weight.data_ptr() &&
      packed_->source.sizes() == weight.sizes() && packed_version_ == weight._version()) {
    return;
  }
  const auto& o = options;
  const c10::IntArrayRef padding = *c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  packed_ = shared_pack(weight, padding, o.stride(), o.dilation(), o.groups());
  packed_version_ = weight._version();
#endif
}

void PackedConv2dImpl::prepack() {
  if (weight_packable()) ensure_packed();
}

void prepack_convolutions(torch::nn::Module& root) {
  for (const auto& module : root.modules(/*include_self=*/true)) {
    if (auto* conv = dynamic_cast<PackedConv2dImpl*>(module.get())) conv->prepack();
  }
}

bool PackedConv2dImpl::takes_packed_path(const torch::Tensor& x, c10::IntArrayRef x_sizes) const {
#if DIFFUSIOND_PACKED_CONV
  const bool recording =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  const auto& o = options;
  return weight_packable() && !recording &&
         x.suggest_memory_format() != at::MemoryFormat::ChannelsLast &&
         conv2d_takes_onednn_path(x, x_sizes, weight, o.stride(), o.dilation(), o.groups());
#else
  (void)x;
  (void)x_sizes;
  return false;
#endif
}

namespace {

// Ref: F.interpolate(x, scale_factor=2.0, mode="nearest"): element (r, c) of the result is
// x's (r / 2, c / 2), whichever rows of x it is given.
torch::Tensor upsample_nearest2x(const torch::Tensor& x) {
  return torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                   .mode(torch::kNearest)
                                                   .scale_factor(std::vector<double>{2.0, 2.0}));
}

std::atomic<int64_t> slab_min_input_bytes{16 << 20};
std::atomic<int64_t> slab_band_bytes{4 << 20};

}  // namespace

bool conv_packing_built() {
  return DIFFUSIOND_PACKED_CONV != 0;
}

bool conv_row_slabs_exact_here() {
  // oneDNN's direct kernels (jit:avx2, jit:avx512_core) for the spatial convolutions; below
  // AVX2, or with oneDNN's ISA capped by its environment variables, it may pick its im2col +
  // GEMM convolution, which blocks by the spatial size (measured with ONEDNN_MAX_CPU_ISA=SSE41).
  static const bool exact = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           std::getenv("ONEDNN_MAX_CPU_ISA") == nullptr &&
           std::getenv("DNNL_MAX_CPU_ISA") == nullptr;
#else
    return false;
#endif
  }();
  return exact;
}

ConvRowSlabPolicy conv_row_slab_policy() {
  return {slab_min_input_bytes.load(), slab_band_bytes.load()};
}

void set_conv_row_slab_policy(ConvRowSlabPolicy policy) {
  slab_min_input_bytes = policy.min_input_bytes;
  slab_band_bytes = std::max<int64_t>(1, policy.band_bytes);
}

torch::Tensor PackedConv2dImpl::packed_forward(const torch::Tensor& input, bool upsample2x) {
#if DIFFUSIOND_PACKED_CONV
  ensure_packed();
  packed_used_ = true;
  const auto& o = options;
  const c10::IntArrayRef padding = *c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  // As LibTorch's _convolution does for its oneDNN backend: contiguous input and bias.
  const c10::optional<at::Tensor> b =
      bias.defined() ? c10::optional<at::Tensor>(bias.contiguous()) : c10::nullopt;
  auto conv = [&](const torch::Tensor& x, c10::IntArrayRef pad) {
    return at::mkldnn_convolution(x.contiguous(), packed_->packed, b, pad, o.stride(), o.dilation(),
                                  o.groups());
  };
  const int64_t scale = upsample2x ? 2 : 1;
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2) * scale,
                w = input.size(3) * scale;
  const int64_t kh = weight.size(2), ph = padding[0];
  const int64_t out_h = h + 2 * ph - kh + 1;
  const auto policy = conv_row_slab_policy();
  const int64_t row_bytes = n * c * w * static_cast<int64_t>(input.element_size());
  const int64_t band = std::max<int64_t>(1, policy.band_bytes / std::max<int64_t>(1, row_bytes));
  const c10::IntArrayRef stride = o.stride(), dilation = o.dilation();
  const bool stride_one = stride[0] == 1 && stride[1] == 1 && dilation[0] == 1 && dilation[1] == 1;
  // Not a 1x1 kernel: oneDNN's 1x1 convolution (jit_1x1) blocks its sum over the input
  // channels by the spatial size, so a band of rows would round differently (measured); its
  // rows do not overlap either, and its reorders stay whole.
  const bool spatial_kernel = kh > 1;
  if (!stride_one || !spatial_kernel || row_bytes * h <= policy.min_input_bytes || band >= out_h ||
      !conv_row_slabs_exact_here()) {
    return conv(upsample2x ? upsample_nearest2x(input) : input, padding);
  }
  // Output rows [r0, r1) read input rows [r0 - ph, r1 - ph + kh - 1): the rows outside
  // [0, h) are the padding, written out as zeros.
  torch::Tensor out;
  const int64_t pad_w[2] = {0, padding[1]};
  for (int64_t r0 = 0; r0 < out_h; r0 += band) {
    const int64_t r1 = std::min(out_h, r0 + band);
    const int64_t first = r0 - ph, rows = r1 - r0 + kh - 1;
    const int64_t lo = std::max<int64_t>(0, first), hi = std::min(h, first + rows);
    torch::Tensor slab = torch::empty({n, c, rows, w}, input.options());
    if (lo > first) slab.narrow(2, 0, lo - first).zero_();
    if (first + rows > hi) slab.narrow(2, hi - first, first + rows - hi).zero_();
    if (hi > lo) {
      torch::Tensor rows_in;
      if (upsample2x) {  // rows [lo, hi) of the upsampled tensor: source rows [lo/2, (hi+1)/2)
        const int64_t a = lo / 2, z = (hi + 1) / 2;
        rows_in = upsample_nearest2x(input.narrow(2, a, z - a)).narrow(2, lo - 2 * a, hi - lo);
      } else {
        rows_in = input.narrow(2, lo, hi - lo);
      }
      slab.narrow(2, lo - first, hi - lo).copy_(rows_in);
    }
    torch::Tensor y = conv(slab, pad_w);  // [n, out, r1 - r0, out_w]
    if (!out.defined()) out = torch::empty({n, y.size(1), out_h, y.size(3)}, y.options());
    out.narrow(2, r0, r1 - r0).copy_(y);
  }
  return out;
#else
  (void)upsample2x;
  TORCH_CHECK(false, "PackedConv2d: no packed path in this build");
  return input;
#endif
}

torch::Tensor PackedConv2dImpl::forward(const torch::Tensor& x) {
  if (takes_packed_path(x, x.sizes())) return packed_forward(x, /*upsample2x=*/false);
  // LibTorch's own kernel (a 1x1 conv on one thread): a copy packed at load and never used
  // only holds memory; let it go (the process-wide share frees it when no replica holds it).
  if (packed_ && !packed_used_) packed_.reset();
  return torch::nn::Conv2dImpl::forward(x);
}

torch::Tensor PackedConv2dImpl::forward_upsampled2x(const torch::Tensor& x) {
  if (x.dim() == 4) {
    const std::vector<int64_t> up{x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)};
    if (takes_packed_path(x, up)) return packed_forward(x, /*upsample2x=*/true);
  }
  return forward(upsample_nearest2x(x));
}

}  // namespace diffusiond
