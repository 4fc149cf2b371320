#include "pipeline/unet.h"

#include <ATen/record_function.h>

#include "pipeline/attention_block.h"
#include "pipeline/component_weights.h"
#include "pipeline/cpu_memory.h"
#include "pipeline/packed_conv.h"
#include "pipeline/skip_init.h"

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/weights.h"

namespace diffusiond {
namespace nn = torch::nn;

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNetConfig& config)
    : config_(config), act_(parse_activation(config.act_fn)) {
  const auto& c = config_;
  const std::size_t n = c.num_blocks();
  const int ch0 = c.block_out_channels[0];

  conv_in = register_module("conv_in",
                            PackedConv2d(nn::Conv2dOptions(c.in_channels, ch0, c.conv_in_kernel)
                                             .padding((c.conv_in_kernel - 1) / 2)));
  // time_proj (sinusoidal, ch0 features) has no weights: see forward().
  time_embedding =
      register_module("time_embedding", TimestepEmbedding(ch0, c.time_embedding_dim, act_));
  // add_time_proj (sinusoidal, addition_time_embed_dim per id) has no weights either;
  // add_embedding is diffusers' TimestepEmbedding default, SiLU whatever act_fn says.
  if (c.addition_embed_type == "text_time") {
    add_embedding = register_module("add_embedding",
                                    TimestepEmbedding(c.projection_class_embeddings_input_dim,
                                                      c.time_embedding_dim, Activation::kSiLU));
  }

  auto common = [&] {
    UNetBlockOptions o;
    o.temb_channels = c.time_embedding_dim;
    o.resnet_eps = c.norm_eps;
    o.resnet_groups = c.norm_num_groups;
    o.act = act_;
    o.time_embedding_norm = c.resnet_time_scale_shift;
    o.use_linear_projection = c.use_linear_projection;
    o.upcast_attention = c.upcast_attention;
    return o;
  };

  auto down_list = register_module("down_blocks", nn::ModuleList());
  int output_channel = ch0;
  for (std::size_t i = 0; i < n; ++i) {
    UNetBlockOptions o = common();
    o.in_channels = output_channel;
    output_channel = c.block_out_channels[i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block[i];
    o.transformer_layers = c.down_transformer_layers[i];
    o.add_sample_resize = i + 1 < n;
    o.downsample_padding = c.downsample_padding;
    o.num_attention_heads = c.num_attention_heads[i];
    o.cross_attention_dim = c.cross_attention_dim[i];
    o.only_cross_attention = c.only_cross_attention[i];
    auto block = std::make_shared<DownBlock2DImpl>(
        o, /*with_attention=*/c.down_block_types[i] == "CrossAttnDownBlock2D");
    down_list->push_back(block);
    down_blocks_.push_back(block);
  }

  if (!c.mid_block_type.empty()) {
    UNetBlockOptions o = common();
    o.in_channels = c.block_out_channels[n - 1];
    o.out_channels = o.in_channels;
    o.num_layers = 1;
    o.transformer_layers = {c.mid_transformer_layers};
    o.output_scale_factor = c.mid_block_scale_factor;
    o.num_attention_heads = c.num_attention_heads[n - 1];
    o.cross_attention_dim = c.cross_attention_dim[n - 1];
    mid_block = register_module("mid_block", UNetMidBlock2DCrossAttn(o));
  }

  auto up_list = register_module("up_blocks", nn::ModuleList());
  output_channel = c.block_out_channels[n - 1];
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t mirror = n - 1 - i;  // the down block at the same resolution
    UNetBlockOptions o = common();
    o.prev_output_channels = output_channel;
    output_channel = c.block_out_channels[mirror];
    o.out_channels = output_channel;
    o.in_channels = c.block_out_channels[mirror == 0 ? 0 : mirror - 1];
    o.num_layers = c.up_layers(i);
    o.transformer_layers = c.up_transformer_layers[i];
    o.add_sample_resize = i + 1 < n;
    o.num_attention_heads = c.up_num_attention_heads(i);
    o.cross_attention_dim = c.up_cross_attention_dim(i);
    o.only_cross_attention = c.up_only_cross_attention(i);
    if (o.add_sample_resize) ++num_upsamplers_;
    auto block = std::make_shared<UpBlock2DImpl>(
        o, /*with_attention=*/c.up_block_types[i] == "CrossAttnUpBlock2D");
    up_list->push_back(block);
    up_blocks_.push_back(block);
  }

  conv_norm_out = register_module(
      "conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, ch0).eps(c.norm_eps)));
  conv_out = register_module("conv_out",
                             PackedConv2d(nn::Conv2dOptions(ch0, c.out_channels, c.conv_out_kernel)
                                              .padding((c.conv_out_kernel - 1) / 2)));
}

void UNet2DConditionModelImpl::drop_cached_keys_values() {
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* attention = dynamic_cast<AttentionImpl*>(module.get()))
      attention->drop_cached_keys_values();
  }
}

torch::Tensor UNet2DConditionModelImpl::forward(torch::Tensor sample, double timestep,
                                                torch::Tensor encoder_hidden_states) {
  // A Python float timestep becomes a float64 tensor in diffusers and is then cast to float32
  // by the sinusoidal embedding: the same rounding as building it in float32 here.
  auto t = torch::full({}, timestep, torch::dtype(torch::kFloat32).device(sample.device()));
  return forward(std::move(sample), t, std::move(encoder_hidden_states));
}

torch::Tensor UNet2DConditionModelImpl::forward(torch::Tensor sample, double timestep,
                                                torch::Tensor encoder_hidden_states,
                                                const UNetAddedConditions& added) {
  auto t = torch::full({}, timestep, torch::dtype(torch::kFloat32).device(sample.device()));
  return forward(std::move(sample), t, std::move(encoder_hidden_states), added);
}

torch::Tensor UNet2DConditionModelImpl::forward(torch::Tensor sample, torch::Tensor timesteps,
                                                torch::Tensor encoder_hidden_states,
                                                const TensorTap& tap) {
  return forward(std::move(sample), std::move(timesteps), std::move(encoder_hidden_states),
                 UNetAddedConditions{}, tap);
}

torch::Tensor UNet2DConditionModelImpl::added_embedding(const UNetAddedConditions& added,
                                                        int64_t batch, torch::ScalarType dtype,
                                                        const TensorTap& tap) {
  const auto& c = config_;
  TORCH_CHECK(added.text_embeds.defined() && added.time_ids.defined(),
              "UNet: addition_embed_type 'text_time' needs text_embeds and time_ids");
  TORCH_CHECK(added.text_embeds.dim() == 2 && added.text_embeds.size(0) == batch &&
                  added.time_ids.dim() == 2 && added.time_ids.size(0) == batch,
              "UNet: text_embeds [B,P] and time_ids [B,N] must have the sample's batch ", batch,
              ", got ", added.text_embeds.sizes(), " and ", added.time_ids.sizes());
  TORCH_CHECK(added.text_embeds.size(1) + added.time_ids.size(1) * c.addition_time_embed_dim ==
                  c.projection_class_embeddings_input_dim,
              "UNet: text_embeds ", added.text_embeds.sizes(), " and time_ids ",
              added.time_ids.sizes(), " do not add up to projection_class_embeddings_input_dim ",
              c.projection_class_embeddings_input_dim);
  auto emit = [&](const char* name, const torch::Tensor& value) {
    if (tap) tap(name, value);
  };
  const auto device = add_embedding->parameters().front().device();
  // add_time_proj(time_ids.flatten()) [B*N, dim] (float32) -> [B, N*dim].
  torch::Tensor time_embeds =
      timestep_embedding(added.time_ids.to(device).flatten(), c.addition_time_embed_dim,
                         c.flip_sin_to_cos, c.freq_shift);
  emit("add_time_proj", time_embeds);
  time_embeds = time_embeds.reshape({batch, -1});
  torch::Tensor input =
      torch::cat({added.text_embeds.to(device), time_embeds.to(added.text_embeds.scalar_type())},
                 -1)
          .to(dtype);  // [B, projection input]
  emit("add_embedding.input", input);
  torch::Tensor out = add_embedding(input);  // [B, temb]
  emit("add_embedding", out);
  return out;
}

torch::Tensor UNet2DConditionModelImpl::forward(torch::Tensor sample, torch::Tensor timesteps,
                                                torch::Tensor encoder_hidden_states,
                                                const UNetAddedConditions& added,
                                                const TensorTap& tap) {
  RECORD_FUNCTION("diffusiond::UNet2DConditionModel", std::vector<c10::IValue>());  // profiles
  const auto& c = config_;
  TORCH_CHECK(sample.dim() == 4 && sample.size(1) == c.in_channels, "UNet: sample must be [B,",
              c.in_channels, ",h,w], got ", sample.sizes());
  TORCH_CHECK(encoder_hidden_states.dim() == 3 && encoder_hidden_states.size(0) == sample.size(0),
              "UNet: encoder_hidden_states must be [B,S,D] with the sample's batch, got ",
              encoder_hidden_states.sizes());
  auto emit = [&](const char* name, const torch::Tensor& value) {
    if (tap) tap(name, value);
  };
  const int64_t batch = sample.size(0);

  // Skip connections need an explicit upsample size when h or w is not a multiple of
  // 2 ** num_upsamplers.
  const int64_t factor = int64_t{1} << num_upsamplers_;
  const bool forward_upsample_size = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;

  if (c.center_input_sample) sample = 2 * sample - 1.0;

  // 1. time: sinusoidal embedding in float32, then the model's dtype.
  timesteps = timesteps.to(sample.device());
  if (timesteps.dim() == 0) timesteps = timesteps.unsqueeze(0);
  timesteps = timesteps.expand({batch});
  torch::Tensor t_emb =
      timestep_embedding(timesteps, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
          .to(sample.scalar_type());  // [B,ch0]
  emit("time_proj", t_emb);
  torch::Tensor emb = time_embedding(t_emb);  // [B,time_embed_dim]
  emit("time_embedding", emb);
  if (add_embedding) {
    emb = emb + added_embedding(added, batch, emb.scalar_type(), tap);
  } else {
    TORCH_CHECK(!added.text_embeds.defined() && !added.time_ids.defined(),
                "UNet: this model takes no added conditions (no addition_embed_type)");
  }

  // 2. pre-process
  torch::Tensor h = conv_in(sample);  // [B,ch0,h,w]
  emit("conv_in", h);

  // 3. down
  std::vector<torch::Tensor> res_samples{h};
  for (std::size_t i = 0; i < down_blocks_.size(); ++i) {
    h = down_blocks_[i]->forward(h, emb, encoder_hidden_states, res_samples);
    if (tap) tap("down_blocks." + std::to_string(i), h);
  }

  // 4. mid
  if (mid_block) {
    h = mid_block(h, emb, encoder_hidden_states);
    emit("mid_block", h);
  }

  // 5. up
  for (std::size_t i = 0; i < up_blocks_.size(); ++i) {
    const auto& block = up_blocks_[i];
    const bool is_final = i + 1 == up_blocks_.size();
    std::optional<std::vector<int64_t>> upsample_size;
    const auto remaining = res_samples.size() - static_cast<std::size_t>(block->num_resnets());
    if (!is_final && forward_upsample_size && remaining > 0) {
      const auto& target = res_samples[remaining - 1];
      upsample_size = std::vector<int64_t>{target.size(2), target.size(3)};
    }
    h = block->forward(h, emb, encoder_hidden_states, res_samples, upsample_size);
    if (tap) tap("up_blocks." + std::to_string(i), h);
  }

  // 6. post-process
  h = conv_norm_out(h);
  emit("conv_norm_out", h);
  h = conv_out(apply_activation(act_, h));  // [B,out_channels,h,w]
  emit("conv_out", h);
  return h;
}

UNet2DConditionModel load_unet(const std::filesystem::path& config_json,
                               const SafetensorsFile& weights, torch::Device device,
                               torch::ScalarType dtype) {
  if (device.is_cpu()) retain_freed_cpu_memory();
  const UNetConfig config =
      UNetConfig::from_json(read_json_file(config_json), config_json.string());
  UNet2DConditionModel model = [&] {
    SkipRandomInit file_replaces_every_parameter;
    return UNet2DConditionModel(config);
  }();
  load_weights(*model, weights, device, dtype);
  model->eval();
  if (device.is_cpu()) {
    trim_freed_cpu_memory();  // the initial weights first: the packed copies reuse no arena
    prepack_convolutions(*model);
  }
  return model;
}

UNet2DConditionModel load_unet(const std::filesystem::path& config_json,
                               const std::filesystem::path& weights, torch::Device device,
                               torch::ScalarType dtype) {
  return load_unet(config_json, *SafetensorsFile::open(weights), device, dtype);
}

UNet2DConditionModel load_unet(const ModelFolder& folder, torch::Device device,
                               torch::ScalarType dtype) {
  return load_unet(folder.config_path("unet"), *open_component_weights(folder, "unet"), device,
                   dtype);
}

}  // namespace diffusiond
