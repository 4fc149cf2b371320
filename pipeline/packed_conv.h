// A 2-D convolution whose CPU float32 forward keeps its weight in oneDNN's blocked layout.
// Ref: torch.nn.Conv2d (the layer every diffusers conv is). Same keys (weight, bias), options
// and results: on LibTorch 1.x, when torch.nn.functional.conv2d itself would take the oneDNN
// (mkldnn) path, forward() calls the same oneDNN primitive with the weight already reordered
// into the layout that primitive reads, instead of letting every call reorder the weight again
// (a 1280-channel 3x3 conv reorders 59 MB per call: at 256² that is most of the SD 1.5 UNet's
// low-resolution blocks' time). oneDNN picks its primitive from the shapes alone (weights
// "any" format), so the arithmetic and the bits are those of F.conv2d; only the reorder moves.
// Otherwise (CUDA, another dtype, LibTorch >= 2, grad recording, channels-last input, the
// cases where LibTorch uses its native kernel) forward() is torch::nn::Conv2d's.
//
// Memory: one packed copy per weight per process, shared by every module whose weight is the
// same bytes (the cpu*N replicas of one model use the same mapped weights); after packing, the
// source's whole pages leave the resident set (a mapped file's are re-read from the file if the
// dense weight is ever used again), so the process holds the weight about once. Packing happens
// at load (prepack_convolutions) or, for a weight changed since, at the first forward().
// A weight swapped in with set_data (a LoRA merge) or changed in place is packed again.
// Thread-safety: forward() on one thread at a time per module (as every module here); the
// process-wide share of packed weights is locked, and packing runs outside the map's lock.
#pragma once

#include <memory>

#include <torch/torch.h>

namespace diffusiond {

struct PackedConvWeight;  // packed_conv.cpp

class PackedConv2dImpl : public torch::nn::Conv2dImpl {
 public:
  explicit PackedConv2dImpl(const torch::nn::Conv2dOptions& options);
  // x [B,in,H,W] -> [B,out,H',W'], as torch::nn::Conv2d.
  torch::Tensor forward(const torch::Tensor& x);
  // Packs a CPU float32 weight now instead of at the first forward() that needs it (a no-op
  // elsewhere). The loaders call it through prepack_convolutions, on the loading thread.
  void prepack();

 private:
  // Whether the weight can be held packed: zero padding given as numbers, and a contiguous
  // float32 CPU weight (not channels-last).
  bool weight_packable() const;
  // Packs the weight unless packed_ already holds these bytes at this version.
  void ensure_packed();

  bool packable_ = false;  // zero padding given as numbers, 2-D
  std::shared_ptr<const PackedConvWeight> packed_;
  int64_t packed_version_ = 0;  // weight._version() when packed_ was taken
};
TORCH_MODULE(PackedConv2d);

// prepack() of every PackedConv2d under root: a CPU model's packing (and its transient
// memory) happens at load, on the loading thread, rather than in its first generation; the
// packed copies are shared with every replica already packed over the same bytes.
void prepack_convolutions(torch::nn::Module& root);

// Whether LibTorch's own conv2d would run `x` through oneDNN (its ConvParams::use_mkldnn for
// a float32 CPU input): the only case where PackedConv2d uses the packed weight.
bool conv2d_takes_onednn_path(const torch::Tensor& x, const torch::Tensor& weight,
                              c10::IntArrayRef stride, c10::IntArrayRef dilation, int64_t groups);

}  // namespace diffusiond
