// The denoising UNet of Stable Diffusion 1.x / 2.x and SDXL, built entirely from unet/config.json.
// Ref: diffusers v0.27.2 models/unets/unet_2d_condition.py (UNet2DConditionModel).
// Owner: one device worker owns one replica; forward() must not run concurrently on the same
// replica (LibTorch modules are not re-entrant). Loading may happen on any thread.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipeline/embeddings.h"
#include "pipeline/model_folder.h"
#include "pipeline/packed_conv.h"
#include "pipeline/safetensors.h"
#include "pipeline/unet_blocks.h"
#include "pipeline/unet_config.h"

namespace diffusiond {

// Receives named intermediates ("time_proj", "time_embedding", "add_time_proj",
// "add_embedding.input", "add_embedding", "conv_in", "down_blocks.N", "mid_block", "up_blocks.N",
// "conv_norm_out", "conv_out") for debugging parity.
using TensorTap = std::function<void(const std::string& name, const torch::Tensor& value)>;

// diffusers' added_cond_kwargs for addition_embed_type "text_time" (SDXL); both undefined for a
// UNet without added conditioning.
struct UNetAddedConditions {
  torch::Tensor text_embeds;  // [B, pooled dim]: text_encoder_2's projected pooled output
  torch::Tensor time_ids;     // [B, 6]: original_size + crops_coords_top_left + target_size
};

// Ref: UNet2DConditionModel. Keys: conv_in, time_embedding.linear_{1,2},
// add_embedding.linear_{1,2} (text_time only), down_blocks.N, mid_block, up_blocks.N,
// conv_norm_out, conv_out.
class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNetConfig& config);

  const UNetConfig& config() const { return config_; }

  // sample [B,in_channels,h,w], encoder_hidden_states [B,S,cross_attention_dim] ->
  // [B,out_channels,h,w]. The scalar timestep is broadcast to the batch.
  torch::Tensor forward(torch::Tensor sample, double timestep, torch::Tensor encoder_hidden_states);
  // timesteps: a 0-d tensor (broadcast) or one per batch element [B]; any numeric dtype.
  torch::Tensor forward(torch::Tensor sample, torch::Tensor timesteps,
                        torch::Tensor encoder_hidden_states, const TensorTap& tap = {});
  // With added conditioning: required (and only accepted) when the config has
  // addition_embed_type "text_time". Throws c10::Error on a missing or misshapen condition.
  torch::Tensor forward(torch::Tensor sample, torch::Tensor timesteps,
                        torch::Tensor encoder_hidden_states, const UNetAddedConditions& added,
                        const TensorTap& tap = {});
  torch::Tensor forward(torch::Tensor sample, double timestep, torch::Tensor encoder_hidden_states,
                        const UNetAddedConditions& added);

  // Lets go of the keys and values the cross-attention layers keep for the prompt embeddings of
  // the last steps (attention_block.h; CPU only): the pipeline calls it when a generation's
  // denoising loop is over, before the decode (SDXL: ~110 MB per image of the batch). A loop
  // that throws leaves them to the next generation, whose first step replaces them.
  void drop_cached_keys_values();

 private:
  // get_aug_embed for text_time: add_embedding(cat(text_embeds, add_time_proj(time_ids))).
  torch::Tensor added_embedding(const UNetAddedConditions& added, int64_t batch,
                                torch::ScalarType dtype, const TensorTap& tap);

  UNetConfig config_;
  Activation act_;
  int num_upsamplers_ = 0;
  PackedConv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  TimestepEmbedding add_embedding{nullptr};  // text_time: [B, projection input] -> [B, temb]
  std::vector<std::shared_ptr<UNetDownBlock>> down_blocks_;
  UNetMidBlock2DCrossAttn mid_block{nullptr};
  std::vector<std::shared_ptr<UNetUpBlock>> up_blocks_;
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(UNet2DConditionModel);

// Builds the model from folder.config_path("unet") and loads its weights (a folder's
// unet/*.safetensors or a single file's UNet: component_weights.h) strictly, on `device` in
// `dtype`, in eval mode. Throws ConfigError / WeightsError / SafetensorsError naming the file and
// the problem.
UNet2DConditionModel load_unet(const ModelFolder& folder, torch::Device device,
                               torch::ScalarType dtype);
UNet2DConditionModel load_unet(const std::filesystem::path& config_json,
                               const std::filesystem::path& weights, torch::Device device,
                               torch::ScalarType dtype);
UNet2DConditionModel load_unet(const std::filesystem::path& config_json,
                               const SafetensorsFile& weights, torch::Device device,
                               torch::ScalarType dtype);

}  // namespace diffusiond
