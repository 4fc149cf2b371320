// The Stable Diffusion / SDXL text-to-image pipeline's implementation class, shared by its two
// source files: txt2img.cpp (generate, generate_batch, the denoising loop) and
// txt2img_parts.cpp (validation, prompt rows, per-length UNet passes, CUDA graph steps).
// Internal to diffusiond_pipeline: everyone else uses StableDiffusion (txt2img.h).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/cuda_graph_step.h"
#include "pipeline/media/config_util.h"
#include "pipeline/micro_conditioning.h"
#include "pipeline/model_family.h"
#include "pipeline/prompt_encoder.h"
#include "pipeline/step_graphs.h"
#include "pipeline/txt2img.h"
#include "pipeline/unet.h"
#include "pipeline/vae.h"

namespace diffusiond::detail {

using Clock = std::chrono::steady_clock;

// Rows of the batch that share one sequence length: their indices in the batch, their text
// embeddings [rows, L, hidden] and added conditions.
struct ConditioningGroup {
  torch::Tensor index;  // [rows] int64 on the device; undefined when the group is the whole batch
  torch::Tensor embeds;
  UNetAddedConditions added;
};

// One image of a batch: what it is conditioned on and where its noise comes from.
struct BatchRow {
  int out = 0;                   // its index in the BatchOutcome
  int item = 0;                  // its item (Txt2ImgParams) in the call
  PromptEmbedding cond, uncond;  // uncond only when guiding
  double guidance_scale = 0;
  std::uint64_t seed = 0;  // its own CPU generator's seed
  AddTimeIds time_ids;     // SDXL: its cond and uncond rows' [1, 6] in the model dtype (CPU)
  torch::Tensor latents;   // given initial noise [1, C, h, w]; undefined: drawn
};

// Ref: StableDiffusionPipeline, StableDiffusionXLPipeline (is_xl). Owner: one device worker;
// generate() from its thread only.
class StableDiffusionPipeline final : public StableDiffusion {
 public:
  StableDiffusionPipeline(const ModelFolder& model, torch::Device device, torch::ScalarType dtype)
      : device_(device),
        dtype_(dtype),
        xl_(is_sdxl(model)),
        force_zeros_for_empty_prompt_(xl_ && force_zeros_for_empty_prompt(model)),
        prompts_(model, xl_, device, dtype),
        unet_(load_unet(model, device, dtype)),
        vae_(load_vae(model, device, dtype)),
        scheduler_config_(model.scheduler_config()),
        default_scheduler_(default_scheduler_name(scheduler_config_)) {
    // diffusers loads the VAE in the model dtype and, for float16 with force_upcast, runs it in
    // float32 (upcast_vae): the weights are rounded to float16 first, as here.
    if (dtype == torch::kFloat16 && vae_->config().force_upcast) vae_->to(torch::kFloat32);
    vae_dtype_ = vae_->parameters().empty() ? dtype : vae_->parameters().front().scalar_type();
    const bool added = unet_->config().addition_embed_type == "text_time";
    if (added != xl_) {
      throw ConfigError(model.config_path("unet").string() +
                        (xl_ ? ": an SDXL pipeline needs a UNet with addition_embed_type "
                               "'text_time'"
                             : ": addition_embed_type 'text_time' needs an SDXL pipeline "
                               "(model_index.json StableDiffusionXLPipeline)"));
    }
    unet_->eval();
    vae_->eval();
    std::vector<LoraTarget> targets = prompts_.lora_targets();
    targets.push_back({"unet", unet_.ptr()});
    loras_ = std::make_unique<LoraState>(std::move(targets));
  }

  LoraApplyReport apply_loras(const std::vector<LoraApplication>& set) override {
    LoraApplyReport report = loras_->apply(set);
    if (report.changed) prompts_.clear_cache();  // the text encoders' weights changed
    return report;
  }

  std::vector<RgbImage> generate(const Txt2ImgParams& params, const StepCallback& on_step,
                                 const DumpSink& dump) override;
  BatchOutcome generate_batch(const std::vector<Txt2ImgParams>& items,
                              const StepCallback& on_step) override;

  int default_width() const override { return default_size(); }
  int default_height() const override { return default_size(); }
  std::string default_scheduler() const override { return default_scheduler_; }
  bool is_xl() const override { return xl_; }
  int64_t prompt_sequence_length(const std::string& prompt, bool a1111) const override {
    return prompts_.sequence_length(prompt, a1111);
  }
  torch::Device device() const override { return device_; }
  GenerationTimings last_timings() const override { return timings_; }
  void set_profiling(bool on) override { profiling_ = on; }
  void set_device_tuning(const DeviceTuning& tuning,
                         std::function<void(const std::string&)> warn) override;
  GraphCacheStats graph_stats() const override {
    return graphs_ ? graphs_->stats() : GraphCacheStats{};
  }

 private:
  int default_size() const { return unet_->config().sample_size * vae_->config().scale_factor(); }
  // A small host tensor onto the device without waiting for it (pinned, non-blocking on CUDA).
  torch::Tensor to_device_async(const torch::Tensor& host) const {
    return device_.is_cuda() ? host.pin_memory().to(device_, /*non_blocking=*/true)
                             : host.to(device_);
  }
  void sync() const {
    if (profiling_ && device_.is_cuda()) torch::cuda::synchronize(device_.index());
  }
  void validate(const Txt2ImgParams& params) const;
  // pad_cond_uncond: rows shorter than the longest get the empty prompt's chunk encoding
  // repeated at their end (A1111's pad_cond: (longest - L) / 77 copies).
  void pad_to_longest(std::vector<torch::Tensor>& rows);
  // One group per distinct sequence length, in order of first appearance; a batch of one length
  // is one group holding the whole batch (index undefined), exactly the plain path's pass.
  std::vector<ConditioningGroup> group_by_length(const std::vector<torch::Tensor>& rows,
                                                 const UNetAddedConditions& added) const;
  // The UNet's noise prediction for the whole batch: one pass per group.
  // t: the step's timestep, a 0-dim float32 tensor on the device.
  torch::Tensor denoise(const torch::Tensor& model_input, const torch::Tensor& t,
                        const std::vector<ConditioningGroup>& groups);
  // The UNet evaluation of one denoising step: a CUDA graph's replay when graphs are on (the
  // key includes the text sequence length, so each per-length pass has its own), else eager.
  torch::Tensor unet_step(const torch::Tensor& sample, const torch::Tensor& timestep,
                          const torch::Tensor& embeds, const UNetAddedConditions& added);
  // The images of a batch, items in order (each item's images prompt-major), their prompts
  // encoded; checks every item and that they share what a batch shares.
  std::vector<BatchRow> batch_rows(const std::vector<Txt2ImgParams>& items);
  // Denoises and decodes rows whose embeddings have one shape as one UNet batch; fills their
  // entries of `outcome` (an image that stopped stays nullopt).
  void run_rows(const std::vector<BatchRow>& rows, const std::vector<Txt2ImgParams>& items,
                const StepCallback& on_step, const DumpSink& dump, Clock::time_point start,
                BatchOutcome& outcome);

  torch::Device device_;
  torch::ScalarType dtype_;
  bool xl_;
  bool force_zeros_for_empty_prompt_;
  PromptEncoder prompts_;
  UNet2DConditionModel unet_;
  AutoencoderKL vae_;
  torch::ScalarType vae_dtype_ = torch::kFloat32;
  nlohmann::json scheduler_config_;
  std::string default_scheduler_;
  GenerationTimings timings_;
  bool profiling_ = false;
  std::unique_ptr<LoraState> loras_;  // this replica's LoRA set (pipeline/lora.h)
  DeviceTuning tuning_;
  std::unique_ptr<UNetGraphCache> graphs_;  // null: eager steps
};

}  // namespace diffusiond::detail
