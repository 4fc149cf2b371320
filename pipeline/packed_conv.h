// A 2-D convolution whose CPU float32 forward keeps its weight in oneDNN's blocked layout.
// Ref: torch.nn.Conv2d (the layer every diffusers conv is). Same keys (weight, bias), options
// and results: on LibTorch 1.x, when torch.nn.functional.conv2d itself would take the oneDNN
// (mkldnn) path, forward() calls the same oneDNN primitive with the weight already reordered
// into the layout that primitive reads, instead of letting every call reorder the weight again
// (a 1280-channel 3x3 conv reorders 59 MB per call: at 256² that is most of the SD 1.5 UNet's
// low-resolution blocks' time). oneDNN picks its primitive from the shapes alone (weights
// "any" format), so the arithmetic and the bits are those of F.conv2d; only the reorder moves.
// Otherwise (CUDA, another dtype, LibTorch >= 2, grad recording, channels-last input, the
// cases where LibTorch uses its native kernel) forward() is torch::nn::Conv2d's; a layer that
// runs LibTorch's native kernel (a 1x1 convolution on one thread) lets its packed copy go, which
// only held memory, unless it has used it before.
//
// Row slabs: a stride-1 packed forward of a spatial kernel (not 1x1) whose input is larger than
// conv_row_slab_policy()'s threshold (the VAE decoder's full-resolution layers) computes its
// output a band of rows at a time. Each band's input is the rows its outputs read, with the
// image's top and bottom zero padding written out as zero rows, convolved with padding (0, pw)
// into the output's rows. oneDNN's direct convolution computes each output element the same way
// whatever the number of rows, and a zero it reads adds exactly what a padded tap does, so the
// output is the same bits (tests/unet test_packed_conv; every SD VAE and SDXL UNet shape checked
// too), while oneDNN's reordered copies of the input and output (two of each size on top of the
// input and the output) shrink to one band's (on CPUs with AVX2, conv_row_slabs_exact_here()).
// A 1x1 convolution stays whole: oneDNN's 1x1
// kernel blocks its sum over the input channels by the spatial size (a band rounds otherwise).
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
  // forward(nearest 2x upsampling of x) (Ref: F.interpolate(x, scale_factor=2.0,
  // mode="nearest") then the conv, as diffusers' Upsample2D): in row slabs, the upsampled tensor
  // is never made whole. x [B,in,H,W] -> [B,out,2H',2W'].
  torch::Tensor forward_upsampled2x(const torch::Tensor& x);
  // Packs a CPU float32 weight now instead of at the first forward() that needs it (a no-op
  // elsewhere). The loaders call it through prepack_convolutions, on the loading thread.
  void prepack();
  // Whether this layer holds a packed copy of its weight now (tests, memory accounting).
  bool holds_packed_weight() const { return packed_ != nullptr; }

 private:
  // Whether the weight can be held packed: zero padding given as numbers, and a contiguous
  // float32 CPU weight (not channels-last).
  bool weight_packable() const;
  // Packs the weight unless packed_ already holds these bytes at this version.
  void ensure_packed();
  // Whether the forward of `x`, as if of sizes `x_sizes`, uses the packed weight.
  bool takes_packed_path(const torch::Tensor& x, c10::IntArrayRef x_sizes) const;
  // The packed forward of `x`, or of x upsampled 2x (nearest); in row slabs when large.
  torch::Tensor packed_forward(const torch::Tensor& x, bool upsample2x);

  bool packable_ = false;     // zero padding given as numbers, 2-D
  bool packed_used_ = false;  // a forward() has used packed_ (kept from then on)
  std::shared_ptr<const PackedConvWeight> packed_;
  int64_t packed_version_ = 0;  // weight._version() when packed_ was taken
};
TORCH_MODULE(PackedConv2d);

// When a packed forward runs in row slabs: inputs (as convolved, after any upsampling) above
// min_input_bytes, in bands of about band_bytes of input each. Process-wide; the default is
// the one owner of these numbers, and tests lower them to reach the slabs with small tensors.
struct ConvRowSlabPolicy {
  int64_t min_input_bytes;
  int64_t band_bytes;
};
ConvRowSlabPolicy conv_row_slab_policy();
// Whether this machine's oneDNN computes a band of rows as it computes them whole (an x86-64 CPU
// with AVX2 and FMA, oneDNN's ISA not capped by ONEDNN_MAX_CPU_ISA): slabs are used only then.
bool conv_row_slabs_exact_here();
// Thread-safety: set before the convolutions run (a test's start), not while they do.
void set_conv_row_slab_policy(ConvRowSlabPolicy policy);

// Whether this build packs convolution weights at all: LibTorch 1.x with oneDNN, whose conv2d
// dispatch conv2d_takes_onednn_path mirrors; elsewhere (LibTorch 2.x) every PackedConv2d runs
// LibTorch's own conv2d on its dense weight.
bool conv_packing_built();

// prepack() of every PackedConv2d under root: a CPU model's packing (and its transient
// memory) happens at load, on the loading thread, rather than in its first generation; the
// packed copies are shared with every replica already packed over the same bytes.
void prepack_convolutions(torch::nn::Module& root);

// Whether LibTorch's own conv2d would run `x`, of sizes `x_sizes` (x's own, or those it would
// have upsampled), through oneDNN (its ConvParams::use_mkldnn for a float32 CPU input): the only
// case where PackedConv2d uses the packed weight.
bool conv2d_takes_onednn_path(const torch::Tensor& x, c10::IntArrayRef x_sizes,
                              const torch::Tensor& weight, c10::IntArrayRef stride,
                              c10::IntArrayRef dilation, int64_t groups);

}  // namespace diffusiond
