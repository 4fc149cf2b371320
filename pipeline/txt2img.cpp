// Ref: diffusers v0.27.2 pipelines/stable_diffusion/pipeline_stable_diffusion.py
// (StableDiffusionPipeline.__call__, encode_prompt, prepare_latents),
// pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py
// (StableDiffusionXLPipeline.__call__, _get_add_time_ids) and
// image_processor.VaeImageProcessor.postprocess. See the fixtures' golden/pipeline*.json
// "procedure".
#include "pipeline/txt2img.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "pipeline/media/config_util.h"
#include "pipeline/model_family.h"
#include "pipeline/prompt_encoder.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/unet.h"
#include "pipeline/vae.h"

namespace diffusiond {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Rows of the batch that share one sequence length: their indices in the batch, their text
// embeddings [rows, L, hidden] and added conditions.
struct ConditioningGroup {
  torch::Tensor index;  // [rows] int64 on the device; undefined when the group is the whole batch
  torch::Tensor embeds;
  UNetAddedConditions added;
};

std::string two_digits(int i) {
  std::string s = std::to_string(i);
  return s.size() < 2 ? "0" + s : s;
}

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

 private:
  int default_size() const { return unet_->config().sample_size * vae_->config().scale_factor(); }
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
  torch::Tensor denoise(const torch::Tensor& model_input, double t,
                        const std::vector<ConditioningGroup>& groups);
  // SDXL's add_time_ids [1, 6] in the model dtype: original_size + crops + target_size.
  torch::Tensor add_time_ids(const Txt2ImgParams& params) const;

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
};

void StableDiffusionPipeline::validate(const Txt2ImgParams& params) const {
  const int multiple = vae_->config().scale_factor();
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (params.prompts.empty()) fail("no prompt given");
  if (params.num_images_per_prompt < 1) fail("num_images_per_prompt must be at least 1");
  if (params.steps < 1) fail("steps must be at least 1");
  if (params.width < multiple || params.height < multiple || params.width % multiple != 0 ||
      params.height % multiple != 0) {
    fail("width and height must be positive multiples of " + std::to_string(multiple) + " (got " +
         std::to_string(params.width) + "x" + std::to_string(params.height) + ")");
  }
  if (!xl_ && (params.original_size || params.crops_coords_top_left || params.target_size)) {
    fail("original_size, crops_coords_top_left and target_size apply to SDXL models only");
  }
  for (const auto* size : {&params.original_size, &params.target_size}) {
    if (*size && ((**size)[0] < 1 || (**size)[1] < 1))
      fail("original_size and target_size must be positive");
  }
  if (params.crops_coords_top_left &&
      ((*params.crops_coords_top_left)[0] < 0 || (*params.crops_coords_top_left)[1] < 0)) {
    fail("crops_coords_top_left must not be negative");
  }
  if (!params.scheduler.empty() && !canonical_scheduler_name(params.scheduler)) {
    std::string names;
    for (const auto& entry : scheduler_registry())
      names += (names.empty() ? "" : ", ") + entry.name;
    fail("unknown scheduler '" + params.scheduler + "' (known: " + names + ")");
  }
}

void StableDiffusionPipeline::pad_to_longest(std::vector<torch::Tensor>& rows) {
  int64_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size(1));
  torch::Tensor empty;
  for (auto& r : rows) {
    if (r.size(1) == longest) continue;
    if (!empty.defined()) empty = prompts_.encode("", /*a1111=*/true).embeds;  // [1, 77, hidden]
    const int64_t repeats = (longest - r.size(1)) / empty.size(1);
    r = torch::cat({r, empty.repeat({1, repeats, 1})}, 1);
  }
}

std::vector<ConditioningGroup> StableDiffusionPipeline::group_by_length(
    const std::vector<torch::Tensor>& rows, const UNetAddedConditions& added) const {
  std::vector<int64_t> lengths;
  std::vector<std::vector<int64_t>> members;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const int64_t length = rows[i].size(1);
    const auto at = std::find(lengths.begin(), lengths.end(), length);
    if (at == lengths.end()) {
      lengths.push_back(length);
      members.push_back({static_cast<int64_t>(i)});
    } else {
      members[static_cast<std::size_t>(at - lengths.begin())].push_back(static_cast<int64_t>(i));
    }
  }
  std::vector<ConditioningGroup> groups;
  if (members.size() == 1) {
    groups.push_back({torch::Tensor(), torch::cat(rows, 0), added});
    return groups;
  }
  for (const auto& m : members) {
    ConditioningGroup g;
    g.index = torch::tensor(m, torch::kInt64).to(device_);
    std::vector<torch::Tensor> parts;
    for (int64_t i : m) parts.push_back(rows[static_cast<std::size_t>(i)]);
    g.embeds = torch::cat(parts, 0);
    if (added.text_embeds.defined()) {
      g.added.text_embeds = added.text_embeds.index_select(0, g.index);
      g.added.time_ids = added.time_ids.index_select(0, g.index);
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

torch::Tensor StableDiffusionPipeline::denoise(const torch::Tensor& model_input, double t,
                                               const std::vector<ConditioningGroup>& groups) {
  if (groups.size() == 1 && !groups.front().index.defined())
    return unet_->forward(model_input, t, groups.front().embeds, groups.front().added);
  torch::Tensor out;
  for (const auto& g : groups) {
    const auto part = unet_->forward(model_input.index_select(0, g.index), t, g.embeds, g.added);
    if (!out.defined()) {
      auto sizes = part.sizes().vec();
      sizes[0] = model_input.size(0);
      out = torch::empty(sizes, part.options());
    }
    out.index_copy_(0, g.index, part);
  }
  return out;
}

torch::Tensor StableDiffusionPipeline::add_time_ids(const Txt2ImgParams& p) const {
  const std::array<int, 2> output = {p.height, p.width};
  const auto original = p.original_size.value_or(output);
  const auto crops = p.crops_coords_top_left.value_or(std::array<int, 2>{0, 0});
  const auto target = p.target_size.value_or(output);
  std::vector<float> ids = {float(original[0]), float(original[1]), float(crops[0]),
                            float(crops[1]),    float(target[0]),   float(target[1])};
  return torch::tensor(ids, torch::kFloat32).unsqueeze(0).to(dtype_);  // [1, 6]
}

std::vector<RgbImage> StableDiffusionPipeline::generate(const Txt2ImgParams& params,
                                                        const StepCallback& on_step,
                                                        const DumpSink& dump) {
  validate(params);
  apply_loras(params.loras);  // before InferenceMode: swaps parameters (set_data)
  c10::InferenceMode inference;
  timings_ = {};
  const auto start = Clock::now();
  const int per_prompt = params.num_images_per_prompt;
  const int batch = static_cast<int>(params.prompts.size()) * per_prompt;
  const bool guidance = params.guidance_scale > 1.0;
  auto emit = [&](const std::string& name, const torch::Tensor& value) {
    if (dump) dump(name, value.detach().to(torch::kCPU));
  };

  // Prompt embeddings, image order prompt-major; uncond rows first when guiding. SD 1.x/2.x
  // encode an absent negative prompt as ""; SDXL with force_zeros_for_empty_prompt uses zeros.
  // Each row [1, L, hidden]: L is 77 for plain text, 77 x chunks for A1111 syntax.
  const bool a1111 = params.a1111_prompt_syntax;
  std::vector<torch::Tensor> rows, pooled_rows;
  auto add_rows = [&](const PromptEmbedding& e, int copies) {
    for (int k = 0; k < copies; ++k) {
      rows.push_back(e.embeds);
      if (xl_) pooled_rows.push_back(e.pooled);
    }
  };
  if (guidance) {
    add_rows(!params.negative_prompt && force_zeros_for_empty_prompt_
                 ? prompts_.zeros()
                 : prompts_.encode(params.negative_prompt.value_or(""), a1111),
             batch);
  }
  for (const auto& prompt : params.prompts) add_rows(prompts_.encode(prompt, a1111), per_prompt);
  if (params.pad_cond_uncond) pad_to_longest(rows);
  UNetAddedConditions added;
  if (xl_) {
    added.text_embeds = torch::cat(pooled_rows, 0);  // [(2)B, P]
    added.time_ids =
        add_time_ids(params).to(device_).repeat({static_cast<int64_t>(rows.size()), 1});
    emit("add_text_embeds", added.text_embeds);
    emit("add_time_ids", added.time_ids);
  }
  const std::vector<ConditioningGroup> groups = group_by_length(rows, added);
  if (groups.size() == 1) emit("prompt_embeds", groups.front().embeds);  // [(2)B, L, hidden]
  sync();
  timings_.text_encode_s = seconds_since(start);

  auto scheduler = make_scheduler(params.scheduler.empty() ? default_scheduler_ : params.scheduler,
                                  scheduler_config_);
  scheduler->set_timesteps(params.steps);
  const std::vector<double> timesteps = scheduler->timesteps();

  // Image k: its own CPU generator seeded seed + k; randn in the latent dtype on the CPU, then
  // moved to the device (diffusers' randn_tensor with a CPU generator).
  const int64_t latent_h = params.height / vae_->config().scale_factor();
  const int64_t latent_w = params.width / vae_->config().scale_factor();
  const int64_t channels = unet_->config().in_channels;
  std::vector<at::Generator> generators;
  std::vector<torch::Tensor> noise;
  for (int k = 0; k < batch; ++k) {
    generators.push_back(
        at::detail::createCPUGenerator(params.seed + static_cast<std::uint64_t>(k)));
    if (params.latents.defined()) continue;
    noise.push_back(torch::randn({1, channels, latent_h, latent_w}, generators.back(),
                                 torch::TensorOptions().dtype(dtype_)));
  }
  if (params.latents.defined()) {
    const std::vector<int64_t> expected = {batch, channels, latent_h, latent_w};
    if (params.latents.sizes() != c10::IntArrayRef(expected))
      throw std::invalid_argument("latents: expected shape " +
                                  c10::str(c10::IntArrayRef(expected)) + ", got " +
                                  c10::str(params.latents.sizes()));
    noise.push_back(params.latents.to(dtype_));
  }
  torch::Tensor latents = torch::cat(noise, 0).to(device_) * scheduler->init_noise_sigma();
  emit("latents.00", latents);

  const int total = static_cast<int>(timesteps.size());
  for (int i = 0; i < total; ++i) {
    const auto step_start = Clock::now();
    const double t = timesteps[static_cast<std::size_t>(i)];
    torch::Tensor model_input = guidance ? torch::cat({latents, latents}, 0) : latents;
    model_input = scheduler->scale_model_input(model_input, i);
    torch::Tensor noise_pred = denoise(model_input, t, groups);
    if (guidance) {
      auto halves = noise_pred.chunk(2, 0);
      emit("noise_pred_uncond." + two_digits(i), halves[0]);
      emit("noise_pred_text." + two_digits(i), halves[1]);
      noise_pred = halves[0] + params.guidance_scale * (halves[1] - halves[0]);
    }
    emit("noise_pred." + two_digits(i), noise_pred);
    latents = scheduler->step_batch(noise_pred, i, latents, generators);
    emit("latents." + two_digits(i + 1), latents);
    sync();
    timings_.step_s.push_back(seconds_since(step_start));
    if (on_step) {
      for (int k = 0; k < batch; ++k) {
        if (!on_step(k, i + 1, total)) throw GenerationCancelled();
      }
    }
    if (params.on_latents) params.on_latents(i + 1, latents);
  }

  emit("latents", latents);
  const auto decode_start = Clock::now();
  torch::Tensor decoded =
      vae_->decode((latents / vae_->config().scaling_factor).to(vae_dtype_));  // [B,3,H,W]
  emit("decoded", decoded);
  // VaeImageProcessor.postprocess: denormalise in the VAE's dtype, to float32 on the host,
  // * 255, round half to even, uint8, HWC.
  torch::Tensor image = (decoded / 2 + 0.5).clamp(0, 1);
  emit("image", image);
  torch::Tensor bytes = (image.to(torch::kCPU).to(torch::kFloat32).permute({0, 2, 3, 1}) * 255)
                            .round()
                            .to(torch::kUInt8)
                            .contiguous();  // [B,H,W,3]
  std::vector<RgbImage> images(static_cast<std::size_t>(batch));
  for (int k = 0; k < batch; ++k) {
    auto& out = images[static_cast<std::size_t>(k)];
    out.width = params.width;
    out.height = params.height;
    const auto* data = bytes[k].data_ptr<std::uint8_t>();
    out.pixels.assign(data, data + static_cast<std::size_t>(params.width) * params.height * 3);
  }
  timings_.vae_decode_s = seconds_since(decode_start);
  timings_.total_s = seconds_since(start);
  return images;
}

}  // namespace

std::unique_ptr<StableDiffusion> StableDiffusion::load(const ModelFolder& model,
                                                       torch::Device device,
                                                       torch::ScalarType dtype) {
#if TORCH_VERSION_MAJOR < 2
  // LibTorch 1.13 has no float16 CPU kernels for LayerNorm / GroupNorm / conv.
  if (device.is_cpu() && dtype == torch::kFloat16) {
    throw std::invalid_argument("float16 is not supported on the CPU by LibTorch " TORCH_VERSION
                                " (no CPU kernels): use fp32 or bf16");
  }
#endif
  return std::make_unique<StableDiffusionPipeline>(model, device, dtype);
}

}  // namespace diffusiond
