#include "pipeline/resnet.h"

#include <stdexcept>

namespace diffusiond {
namespace nn = torch::nn;
namespace F = torch::nn::functional;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& options) : options_(options) {
  if (options_.out_channels == 0) options_.out_channels = options_.in_channels;
  const int in = options_.in_channels, out = options_.out_channels;
  if (options_.time_embedding_norm != "default" && options_.time_embedding_norm != "scale_shift" &&
      options_.temb_channels > 0) {
    throw std::invalid_argument("ResnetBlock2D: unsupported time_embedding_norm '" +
                                options_.time_embedding_norm + "'");
  }
  norm1 = register_module(
      "norm1", nn::GroupNorm(nn::GroupNormOptions(options_.groups, in).eps(options_.eps)));
  conv1 = register_module("conv1", PackedConv2d(nn::Conv2dOptions(in, out, 3).padding(1)));
  if (options_.temb_channels > 0) {
    // scale_shift predicts a scale and a shift per channel.
    const int proj_out = options_.time_embedding_norm == "scale_shift" ? 2 * out : out;
    time_emb_proj = register_module("time_emb_proj", nn::Linear(options_.temb_channels, proj_out));
  }
  norm2 = register_module(
      "norm2", nn::GroupNorm(nn::GroupNormOptions(options_.groups, out).eps(options_.eps)));
  conv2 = register_module("conv2", PackedConv2d(nn::Conv2dOptions(out, out, 3).padding(1)));
  if (in != out) {
    conv_shortcut = register_module("conv_shortcut", PackedConv2d(nn::Conv2dOptions(in, out, 1)));
  }
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  // Every temporary below is fresh (a norm's or a conv's output): activations and sums run in
  // place, which saves an allocation (and its page faults) of the block's full size each.
  // The shortcut first: at full resolution a 1x1 conv_shortcut's oneDNN reorders (of x and of
  // its output, whole: packed_conv.h) are the VAE decode's largest transients, and here they do
  // not coexist with norm1's output.
  const torch::Tensor shortcut = conv_shortcut ? conv_shortcut(x) : x;
  torch::Tensor h = norm1(x);
  h = conv1(apply_activation_(options_.act, h));  // [B,out,H,W]

  torch::Tensor t;
  if (time_emb_proj && temb.defined()) {
    t = time_emb_proj(apply_activation(options_.act, temb)).unsqueeze(-1).unsqueeze(-1);
  }
  if (options_.time_embedding_norm == "scale_shift" && t.defined()) {
    auto parts = t.chunk(2, 1);  // scale, shift: [B,out,1,1] each
    h = norm2(h).mul_(1 + parts[0]).add_(parts[1]);
  } else {
    if (t.defined()) h.add_(t);
    h = norm2(h);
  }
  h = conv2(apply_activation_(options_.act, h));  // dropout is the identity at inference

  h.add_(shortcut);  // shortcut + h, computed into h (addition commutes: the same bits)
  if (options_.output_scale_factor != 1.0) h.div_(options_.output_scale_factor);
  return h;
}

Downsample2DImpl::Downsample2DImpl(int channels, int out_channels, int padding)
    : padding_(padding) {
  conv = register_module(
      "conv",
      PackedConv2d(nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  if (padding_ == 0) {
    // Asymmetric padding: one zero column on the right and one row at the bottom.
    return conv(F::pad(x, F::PadFuncOptions({0, 1, 0, 1}).mode(torch::kConstant).value(0)));
  }
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int channels, int out_channels) {
  conv = register_module("conv",
                         PackedConv2d(nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x,
                                      c10::optional<std::vector<int64_t>> output_size) {
  // upsample_nearest2d lacks bfloat16 kernels on some builds: diffusers goes through float32.
  const auto dtype = x.scalar_type();
  torch::Tensor h = dtype == torch::kBFloat16 ? x.to(torch::kFloat32) : x;
  if (h.size(0) >= 64) h = h.contiguous();
  if (!output_size && dtype != torch::kBFloat16) {
    return conv->forward_upsampled2x(h);  // the same bits; large inputs never upsampled whole
  }
  auto options = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (output_size) {
    options.size(*output_size);
  } else {
    options.scale_factor(std::vector<double>{2.0, 2.0});
  }
  h = F::interpolate(h, options);
  if (dtype == torch::kBFloat16) h = h.to(dtype);
  return conv(h);
}

}  // namespace diffusiond
