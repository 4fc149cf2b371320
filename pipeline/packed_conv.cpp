#include "pipeline/packed_conv.h"

#include <ATen/Config.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
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

bool conv2d_takes_onednn_path(const torch::Tensor& x, const torch::Tensor& weight,
                              c10::IntArrayRef stride, c10::IntArrayRef dilation, int64_t groups) {
  // Ref: LibTorch 1.13 aten/src/ATen/native/Convolution.cpp, ConvParams::use_mkldnn (float32,
  // not transposed); the earlier backends it is tried after (cuDNN, MIOpen) are CUDA-only.
  if (!at::globalContext().userEnabledMkldnn()) return false;
  if (!x.device().is_cpu() || x.is_mkldnn() || x.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32 || x.dim() != 4 || weight.dim() != 4) {
    return false;
  }
  auto any_not_one = [](c10::IntArrayRef v) {
    for (auto e : v)
      if (e != 1) return true;
    return false;
  };
  const bool not_native_1x1 = any_not_one(stride) || any_not_one(dilation) || x.size(0) >= 16 ||
                              weight.size(-1) != 1 || weight.size(-2) != 1 ||
                              at::get_num_threads() > 1;
  const bool big_enough = groups > 1 || (weight.size(-1) > 3 && weight.size(-2) > 3) ||
                          x.size(0) > 1 || x.size(0) * x.size(1) * x.size(2) * x.size(3) > 20480;
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

torch::Tensor PackedConv2dImpl::forward(const torch::Tensor& x) {
#if DIFFUSIOND_PACKED_CONV
  const bool recording =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  const auto& o = options;
  if (weight_packable() && !recording &&
      x.suggest_memory_format() != at::MemoryFormat::ChannelsLast &&
      conv2d_takes_onednn_path(x, weight, o.stride(), o.dilation(), o.groups())) {
    const c10::IntArrayRef padding = *c10::get_if<torch::ExpandingArray<2>>(&o.padding());
    ensure_packed();
    // As LibTorch's _convolution does for its oneDNN backend: contiguous input and bias.
    const c10::optional<at::Tensor> b =
        bias.defined() ? c10::optional<at::Tensor>(bias.contiguous()) : c10::nullopt;
    return at::mkldnn_convolution(x.contiguous(), packed_->packed, b, padding, o.stride(),
                                  o.dilation(), o.groups());
  }
#endif
  return torch::nn::Conv2dImpl::forward(x);
}

}  // namespace diffusiond
