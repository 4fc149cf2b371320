#include "pipeline/vae.h"

#include <ATen/record_function.h>

#include "pipeline/component_weights.h"
#include "pipeline/cpu_memory.h"
#include "pipeline/packed_conv.h"
#include "pipeline/skip_init.h"

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/weights.h"

namespace diffusiond {
namespace nn = torch::nn;

namespace {
constexpr double kVaeEps = 1e-6;

PackedConv2d conv3x3(int in, int out) {
  return PackedConv2d(nn::Conv2dOptions(in, out, 3).padding(1));
}
}  // namespace

EncoderImpl::EncoderImpl(const VaeConfig& c) : act_(parse_activation(c.act_fn)) {
  const auto& ch = c.block_out_channels;
  const std::size_t n = ch.size();
  conv_in = register_module("conv_in", conv3x3(c.in_channels, ch[0]));
  auto list = register_module("down_blocks", nn::ModuleList());
  int output_channel = ch[0];
  for (std::size_t i = 0; i < n; ++i) {
    VaeBlockOptions o;
    o.in_channels = output_channel;
    output_channel = ch[i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block;
    o.groups = c.norm_num_groups;
    o.act = act_;
    o.add_sample_resize = i + 1 < n;
    down_blocks_.push_back(DownEncoderBlock2D(o));
    list->push_back(down_blocks_.back());
  }
  mid_block = register_module(
      "mid_block", VaeMidBlock2D(ch[n - 1], c.norm_num_groups, act_, c.mid_block_add_attention));
  conv_norm_out = register_module(
      "conv_norm_out",
      nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, ch[n - 1]).eps(kVaeEps)));
  conv_out = register_module("conv_out", conv3x3(ch[n - 1], 2 * c.latent_channels));  // double_z
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = conv_in(x);
  for (auto& block : down_blocks_) h = block(h);
  h = mid_block(h);
  return conv_out(apply_activation(act_, conv_norm_out(h)));
}

DecoderImpl::DecoderImpl(const VaeConfig& c) : act_(parse_activation(c.act_fn)) {
  const auto& ch = c.block_out_channels;
  const std::size_t n = ch.size();
  conv_in = register_module("conv_in", conv3x3(c.latent_channels, ch[n - 1]));
  mid_block = register_module(
      "mid_block", VaeMidBlock2D(ch[n - 1], c.norm_num_groups, act_, c.mid_block_add_attention));
  auto list = register_module("up_blocks", nn::ModuleList());
  int output_channel = ch[n - 1];
  for (std::size_t i = 0; i < n; ++i) {
    VaeBlockOptions o;
    o.in_channels = output_channel;  // prev_output_channel
    output_channel = ch[n - 1 - i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block + 1;
    o.groups = c.norm_num_groups;
    o.act = act_;
    o.add_sample_resize = i + 1 < n;
    up_blocks_.push_back(UpDecoderBlock2D(o));
    list->push_back(up_blocks_.back());
  }
  conv_norm_out = register_module(
      "conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, ch[0]).eps(kVaeEps)));
  conv_out = register_module("conv_out", conv3x3(ch[0], c.out_channels));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& z, const VaeTap& tap) {
  auto emit = [&](const std::string& name, const torch::Tensor& value) {
    if (tap) tap(name, value);
  };
  torch::Tensor h = conv_in(z);  // [B,C_last,h,w]
  emit("decoder.conv_in", h);
  h = mid_block(h);
  emit("decoder.mid_block", h);
  // diffusers casts to the up blocks' dtype here (they may differ when partially upcast).
  h = h.to(up_blocks_.front()->parameters().front().scalar_type());
  for (std::size_t i = 0; i < up_blocks_.size(); ++i) {
    h = up_blocks_[i](h);
    emit("decoder.up_blocks." + std::to_string(i), h);
  }
  h = conv_norm_out(h);
  emit("decoder.conv_norm_out", h);
  return conv_out(apply_activation(act_, h));  // [B,out,H,W]
}

AutoencoderKLImpl::AutoencoderKLImpl(const VaeConfig& config) : config_(config) {
  const int latent = config_.latent_channels;
  encoder = register_module("encoder", Encoder(config_));
  decoder = register_module("decoder", Decoder(config_));
  if (config_.use_quant_conv) {
    quant_conv =
        register_module("quant_conv", PackedConv2d(nn::Conv2dOptions(2 * latent, 2 * latent, 1)));
  }
  if (config_.use_post_quant_conv) {
    post_quant_conv =
        register_module("post_quant_conv", PackedConv2d(nn::Conv2dOptions(latent, latent, 1)));
  }
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& z, const VaeTap& tap) {
  RECORD_FUNCTION("diffusiond::AutoencoderKL.decode", std::vector<c10::IValue>());  // profiles
  TORCH_CHECK(z.dim() == 4 && z.size(1) == config_.latent_channels, "VAE decode: z must be [B,",
              config_.latent_channels, ",h,w], got ", z.sizes());
  torch::Tensor h = post_quant_conv ? post_quant_conv(z) : z;
  if (tap) tap("post_quant_conv", h);
  return decoder->forward(h, tap);
}

std::pair<torch::Tensor, torch::Tensor> AutoencoderKLImpl::encode(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels, "VAE encode: x must be [B,",
              config_.in_channels, ",H,W], got ", x.sizes());
  torch::Tensor moments = encoder(x);  // [B,2*latent,h,w]
  if (quant_conv) moments = quant_conv(moments);
  auto parts = moments.chunk(2, 1);
  return {parts[0], torch::clamp(parts[1], -30.0, 20.0)};
}

torch::Tensor AutoencoderKLImpl::encode_mean(const torch::Tensor& x) {
  return encode(x).first;
}

void AutoencoderKLImpl::prepack_decode() {
  prepack_convolutions(*decoder);
  if (post_quant_conv) post_quant_conv->prepack();
}

AutoencoderKL load_vae(const std::filesystem::path& config_json, const SafetensorsFile& weights,
                       torch::Device device, torch::ScalarType dtype) {
  if (device.is_cpu()) retain_freed_cpu_memory();
  const VaeConfig config = VaeConfig::from_json(read_json_file(config_json), config_json.string());
  AutoencoderKL model = [&] {
    SkipRandomInit file_replaces_every_parameter;
    return AutoencoderKL(config);
  }();
  load_weights(*model, weights, device, dtype);
  model->eval();
  if (device.is_cpu()) {
    trim_freed_cpu_memory();  // the initial weights first: the packed copies reuse no arena
    model->prepack_decode();
  }
  return model;
}

AutoencoderKL load_vae(const std::filesystem::path& config_json,
                       const std::filesystem::path& weights, torch::Device device,
                       torch::ScalarType dtype) {
  return load_vae(config_json, *SafetensorsFile::open(weights), device, dtype);
}

AutoencoderKL load_vae(const ModelFolder& folder, torch::Device device, torch::ScalarType dtype) {
  return load_vae(folder.config_path("vae"), *open_component_weights(folder, "vae"), device, dtype);
}

}  // namespace diffusiond
