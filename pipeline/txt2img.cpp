// Ref: diffusers v0.27.2 pipelines/stable_diffusion/pipeline_stable_diffusion.py
// (StableDiffusionPipeline.__call__, encode_prompt, prepare_latents),
// pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py
// (StableDiffusionXLPipeline.__call__, _get_add_time_ids) and
// image_processor.VaeImageProcessor.postprocess. See the fixtures' golden/pipeline*.json
// "procedure".
#include "pipeline/txt2img.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <chrono>
#include <iostream>
#include <stdexcept>

#include "pipeline/cuda_graph_step.h"
#include "pipeline/device_sync.h"
#include "pipeline/media/config_util.h"
#include "pipeline/model_family.h"
#include "pipeline/prompt_encoder.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/step_graphs.h"
#include "pipeline/unet.h"
#include "pipeline/vae.h"

namespace diffusiond {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string two_digits(int i) {
  std::string s = std::to_string(i);
  return s.size() < 2 ? "0" + s : s;
}

// One image of a batch: what it is conditioned on and where its noise comes from.
struct BatchRow {
  int out = 0;                   // its index in the BatchOutcome
  PromptEmbedding cond, uncond;  // uncond only when guiding
  double guidance_scale = 0;
  std::uint64_t seed = 0;  // its own CPU generator's seed
  torch::Tensor time_ids;  // SDXL: [1, 6] in the model dtype (CPU)
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
        scheduler_config_(read_json_file(model.config_path("scheduler"))),
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
  }

  std::vector<RgbImage> generate(const Txt2ImgParams& params, const StepCallback& on_step,
                                 const DumpSink& dump) override;
  BatchOutcome generate_batch(const std::vector<Txt2ImgParams>& items,
                              const StepCallback& on_step) override;

  int default_width() const override { return default_size(); }
  int default_height() const override { return default_size(); }
  std::string default_scheduler() const override { return default_scheduler_; }
  bool is_xl() const override { return xl_; }
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
  // The UNet evaluation of one denoising step: a CUDA graph's replay when graphs are on (the
  // key includes the text sequence length, so each per-length pass has its own), else eager.
  torch::Tensor unet_step(const torch::Tensor& sample, const torch::Tensor& timestep,
                          const torch::Tensor& embeds, const UNetAddedConditions& added);
  // SDXL's add_time_ids [1, 6] in the model dtype: original_size + crops + target_size.
  torch::Tensor add_time_ids(const Txt2ImgParams& params) const;
  // The images of a batch, items in order (each item's images prompt-major), their prompts
  // encoded; checks every item and that they share what a batch shares.
  std::vector<BatchRow> batch_rows(const std::vector<Txt2ImgParams>& items);
  // Denoises and decodes rows whose embeddings have one shape as one UNet batch; fills their
  // entries of `outcome` (an image that stopped stays nullopt).
  void run_rows(const std::vector<BatchRow>& rows, const Txt2ImgParams& shared,
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
  DeviceTuning tuning_;
  std::unique_ptr<UNetGraphCache> graphs_;  // null: eager steps
};

void StableDiffusionPipeline::set_device_tuning(const DeviceTuning& tuning,
                                                std::function<void(const std::string&)> warn) {
  if (!device_.is_cuda()) return;
  if (!warn) warn = [](const std::string& m) { std::cerr << "warning: " << m << std::endl; };
  tuning_ = tuning;
  at::globalContext().setBenchmarkCuDNN(tuning.cudnn_benchmark);  // process-wide
  if (tuning.channels_last) {
    use_channels_last(*unet_);
    use_channels_last(*vae_);
  }
  graphs_.reset();
  if (!tuning.cuda_graphs || tuning.cuda_graph_cache <= 0) return;
  auto capturer = make_cuda_graph_capturer(device_.index() < 0 ? 0 : device_.index());
  if (!capturer) {
    warn(
        "CUDA graphs were not built into this binary (DIFFUSIOND_CUDA_GRAPHS=OFF or a LibTorch "
        "without CUDA): denoising steps run eagerly");
    return;
  }
  std::vector<torch::Tensor> weights = unet_->parameters();
  for (const auto& b : unet_->buffers()) weights.push_back(b);
  graphs_ = std::make_unique<UNetGraphCache>(std::move(capturer), tuning.cuda_graph_cache,
                                             std::move(weights), std::move(warn));
}

torch::Tensor StableDiffusionPipeline::unet_step(const torch::Tensor& sample,
                                                 const torch::Tensor& timestep,
                                                 const torch::Tensor& embeds,
                                                 const UNetAddedConditions& added) {
  // channels_last weights make the UNet's output, and so the latents after step 1, channels_last:
  // the first step's input too, so that every step has the same layout (one graph per shape).
  const torch::Tensor x =
      tuning_.channels_last ? sample.contiguous(torch::MemoryFormat::ChannelsLast) : sample;
  if (!graphs_) return unet_->forward(x, timestep, embeds, added);
  return graphs_->run({x, timestep, embeds, added}, [this](const UNetInputs& in) {
    return unet_->forward(in.sample, in.timestep, in.embeds, in.added);
  });
}

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
  c10::InferenceMode inference;
  timings_ = {};
  const auto start = Clock::now();
  std::vector<BatchRow> rows = batch_rows({params});
  BatchOutcome outcome;
  outcome.images.resize(rows.size());
  outcome.batch_sizes.resize(rows.size());
  // generate(): a stop ends the whole call, as before batches existed.
  StepCallback stop_all;
  if (on_step) {
    stop_all = [&](int image, int step, int steps) {
      if (!on_step(image, step, steps)) throw GenerationCancelled();
      return true;
    };
  }
  run_rows(rows, params, stop_all, dump, start, outcome);
  std::vector<RgbImage> images;
  for (auto& image : outcome.images) images.push_back(std::move(*image));
  timings_.total_s = seconds_since(start);
  return images;
}

BatchOutcome StableDiffusionPipeline::generate_batch(const std::vector<Txt2ImgParams>& items,
                                                     const StepCallback& on_step) {
  if (items.empty()) throw std::invalid_argument("generate_batch: no item given");
  c10::InferenceMode inference;
  timings_ = {};
  const auto start = Clock::now();
  std::vector<BatchRow> rows = batch_rows(items);
  BatchOutcome outcome;
  outcome.images.resize(rows.size());
  outcome.batch_sizes.resize(rows.size());
  // Rows whose embeddings differ in shape cannot share a UNet batch: one sub-batch per shape,
  // in the order of their first image.
  auto shape_of = [](const BatchRow& r) {
    std::vector<int64_t> shape(r.cond.embeds.sizes().begin(), r.cond.embeds.sizes().end());
    if (r.uncond.embeds.defined())
      shape.insert(shape.end(), r.uncond.embeds.sizes().begin(), r.uncond.embeds.sizes().end());
    return shape;
  };
  std::vector<bool> taken(rows.size(), false);
  for (std::size_t first = 0; first < rows.size(); ++first) {
    if (taken[first]) continue;
    const auto shape = shape_of(rows[first]);
    std::vector<BatchRow> group;
    for (std::size_t r = first; r < rows.size(); ++r) {
      if (taken[r] || shape_of(rows[r]) != shape) continue;
      taken[r] = true;
      group.push_back(rows[r]);
    }
    run_rows(group, items.front(), on_step, {}, start, outcome);
  }
  timings_.total_s = seconds_since(start);
  return outcome;
}

std::vector<BatchRow> StableDiffusionPipeline::batch_rows(const std::vector<Txt2ImgParams>& items) {
  const Txt2ImgParams& first = items.front();
  const bool guidance = first.guidance_scale > 1.0;
  const std::string scheduler = first.scheduler.empty() ? default_scheduler_ : first.scheduler;
  for (const auto& item : items) {
    validate(item);
    const std::string name = item.scheduler.empty() ? default_scheduler_ : item.scheduler;
    if (item.steps != first.steps || item.width != first.width || item.height != first.height ||
        canonical_scheduler_name(name) != canonical_scheduler_name(scheduler) ||
        (item.guidance_scale > 1.0) != guidance)
      throw std::invalid_argument(
          "generate_batch: every item must share steps, width, height, scheduler and "
          "classifier-free guidance on or off");
  }
  const int64_t channels = unet_->config().in_channels;
  const int64_t latent_h = first.height / vae_->config().scale_factor();
  const int64_t latent_w = first.width / vae_->config().scale_factor();
  std::vector<BatchRow> rows;
  for (const auto& item : items) {
    const int per_prompt = item.num_images_per_prompt;
    const int count = static_cast<int>(item.prompts.size()) * per_prompt;
    if (item.latents.defined()) {
      const std::vector<int64_t> expected = {count, channels, latent_h, latent_w};
      if (item.latents.sizes() != c10::IntArrayRef(expected))
        throw std::invalid_argument("latents: expected shape " +
                                    c10::str(c10::IntArrayRef(expected)) + ", got " +
                                    c10::str(item.latents.sizes()));
    }
    // SD 1.x/2.x encode an absent negative prompt as ""; SDXL with
    // force_zeros_for_empty_prompt uses zeros.
    PromptEmbedding uncond;
    if (guidance) {
      uncond = !item.negative_prompt && force_zeros_for_empty_prompt_
                   ? prompts_.zeros()
                   : prompts_.encode(item.negative_prompt.value_or(""));
    }
    const torch::Tensor time_ids = xl_ ? add_time_ids(item) : torch::Tensor();
    for (int k = 0; k < count; ++k) {
      BatchRow row;
      row.out = static_cast<int>(rows.size());
      row.cond = prompts_.encode(item.prompts[static_cast<std::size_t>(k / per_prompt)]);
      row.uncond = uncond;
      row.guidance_scale = item.guidance_scale;
      row.seed = item.seed + static_cast<std::uint64_t>(k);
      row.time_ids = time_ids;
      if (item.latents.defined()) row.latents = item.latents.slice(0, k, k + 1);
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

void StableDiffusionPipeline::run_rows(const std::vector<BatchRow>& rows,
                                       const Txt2ImgParams& shared, const StepCallback& on_step,
                                       const DumpSink& dump, Clock::time_point start,
                                       BatchOutcome& outcome) {
  const bool guidance = shared.guidance_scale > 1.0;
  const auto batch = static_cast<int64_t>(rows.size());
  auto emit = [&](const std::string& name, const torch::Tensor& value) {
    if (dump) dump(name, value.detach().to(torch::kCPU));
  };

  // Prompt embeddings in batch order; the uncond rows first when guiding.
  std::vector<torch::Tensor> embeds, pooled, time_ids;
  for (int half = guidance ? 0 : 1; half < 2; ++half) {
    for (const auto& row : rows) {
      const PromptEmbedding& e = half == 0 ? row.uncond : row.cond;
      embeds.push_back(e.embeds);
      if (xl_) {
        pooled.push_back(e.pooled);
        time_ids.push_back(row.time_ids);
      }
    }
  }
  torch::Tensor prompt_embeds = torch::cat(embeds, 0);  // [(2)B, S, hidden]
  emit("prompt_embeds", prompt_embeds);
  UNetAddedConditions added;
  if (xl_) {
    added.text_embeds = torch::cat(pooled, 0);             // [(2)B, P]
    added.time_ids = torch::cat(time_ids, 0).to(device_);  // [(2)B, 6]
    emit("add_text_embeds", added.text_embeds);
    emit("add_time_ids", added.time_ids);
  }
  sync();
  timings_.text_encode_s = seconds_since(start);

  auto scheduler = make_scheduler(shared.scheduler.empty() ? default_scheduler_ : shared.scheduler,
                                  scheduler_config_);
  scheduler->set_timesteps(shared.steps);
  const std::vector<double> timesteps = scheduler->timesteps();
  // Every timestep as float32 on the device, made once: the loop indexes it (a view), so it
  // neither copies to the device nor launches a fill per step.
  const torch::Tensor timestep_table =
      torch::tensor(timesteps, torch::kFloat64).to(torch::kFloat32).to(device_);  // [N]

  // Image k: its own CPU generator seeded with its seed; randn in the latent dtype on the CPU,
  // then moved to the device (diffusers' randn_tensor with a CPU generator).
  const int64_t latent_h = shared.height / vae_->config().scale_factor();
  const int64_t latent_w = shared.width / vae_->config().scale_factor();
  const int64_t channels = unet_->config().in_channels;
  std::vector<at::Generator> generators;
  std::vector<torch::Tensor> noise;
  for (const auto& row : rows) {
    generators.push_back(at::detail::createCPUGenerator(row.seed));
    noise.push_back(row.latents.defined()
                        ? row.latents.to(dtype_)
                        : torch::randn({1, channels, latent_h, latent_w}, generators.back(),
                                       torch::TensorOptions().dtype(dtype_)));
  }
  torch::Tensor latents = torch::cat(noise, 0).to(device_) * scheduler->init_noise_sigma();
  emit("latents.00", latents);

  // One guidance scale for all: a scalar (the same arithmetic as an image alone); else a [B]
  // tensor in the prediction's dtype on the device, one scale per row.
  bool one_scale = true;
  for (const auto& row : rows)
    one_scale = one_scale && row.guidance_scale == rows.front().guidance_scale;
  torch::Tensor scales;
  if (guidance && !one_scale) {
    std::vector<double> values;
    for (const auto& row : rows) values.push_back(row.guidance_scale);
    scales = torch::tensor(values, torch::kFloat64).to(dtype_).to(device_).view({batch, 1, 1, 1});
  }
  const double scale = rows.front().guidance_scale;

  std::vector<int> alive(rows.size());  // batch row -> index in `rows`
  for (std::size_t r = 0; r < rows.size(); ++r) alive[r] = static_cast<int>(r);
  for (const auto& row : rows) outcome.batch_sizes[static_cast<std::size_t>(row.out)] = int(batch);

  const int total = static_cast<int>(timesteps.size());
  StepFence fence(device_, tuning_.max_steps_ahead);  // CUDA: a bounded lead over the device
  for (int i = 0; i < total && !alive.empty(); ++i) {
    const auto step_start = Clock::now();
    torch::Tensor model_input = guidance ? torch::cat({latents, latents}, 0) : latents;
    model_input = scheduler->scale_model_input(model_input, i);
    torch::Tensor noise_pred = unet_step(model_input, timestep_table[i], prompt_embeds, added);
    if (guidance) {
      auto halves = noise_pred.chunk(2, 0);
      emit("noise_pred_uncond." + two_digits(i), halves[0]);
      emit("noise_pred_text." + two_digits(i), halves[1]);
      noise_pred = scales.defined() ? halves[0] + scales * (halves[1] - halves[0])
                                    : halves[0] + scale * (halves[1] - halves[0]);
    }
    emit("noise_pred." + two_digits(i), noise_pred);
    latents = scheduler->step_batch(noise_pred, i, latents, generators);
    emit("latents." + two_digits(i + 1), latents);
    fence.launched();
    fence.wait();
    sync();
    timings_.step_s.push_back(seconds_since(step_start));
    if (!on_step) continue;
    // Between two launches: nothing here reads a device tensor, so the host never waits.
    std::vector<int64_t> keep;
    for (std::size_t b = 0; b < alive.size(); ++b) {
      const BatchRow& row = rows[static_cast<std::size_t>(alive[b])];
      if (on_step(row.out, i + 1, total)) keep.push_back(static_cast<int64_t>(b));
    }
    if (keep.size() == alive.size()) continue;
    // Images that stopped leave the batch: their rows go from every batched tensor, the
    // sampler's history and the generators.
    std::vector<int> still;
    std::vector<at::Generator> kept_generators;
    std::vector<int64_t> both = keep;
    const auto n = static_cast<int64_t>(alive.size());
    for (int64_t b : keep) {
      still.push_back(alive[static_cast<std::size_t>(b)]);
      kept_generators.push_back(generators[static_cast<std::size_t>(b)]);
      if (guidance) both.push_back(b + n);
    }
    alive = std::move(still);
    generators = std::move(kept_generators);
    if (alive.empty()) break;
    const torch::Tensor rows_kept = to_device_async(torch::tensor(keep, torch::kInt64));
    const torch::Tensor rows_both = to_device_async(torch::tensor(both, torch::kInt64));
    latents = latents.index_select(0, rows_kept);
    prompt_embeds = prompt_embeds.index_select(0, rows_both);
    if (xl_) {
      added.text_embeds = added.text_embeds.index_select(0, rows_both);
      added.time_ids = added.time_ids.index_select(0, rows_both);
    }
    if (scales.defined()) scales = scales.index_select(0, rows_kept);
    scheduler->keep_rows(rows_kept);
  }
  if (alive.empty()) return;

  emit("latents", latents);
  const auto decode_start = Clock::now();
  torch::Tensor decoded =
      vae_->decode((latents / vae_->config().scaling_factor).to(vae_dtype_));  // [B,3,H,W]
  emit("decoded", decoded);
  // VaeImageProcessor.postprocess: denormalise in the VAE's dtype, to float32 (diffusers: on
  // the host), * 255, round half to even, uint8, HWC.
  torch::Tensor image = (decoded / 2 + 0.5).clamp(0, 1);
  emit("image", image);
  // Here on the device (one IEEE multiply and rounding each: the same bytes as on the host), then
  // one non-blocking copy of the uint8 pixels into pinned memory.
  torch::Tensor bytes = copy_to_host((image.to(torch::kFloat32).permute({0, 2, 3, 1}) * 255)
                                         .round()
                                         .to(torch::kUInt8)
                                         .contiguous());  // [B,H,W,3]
  for (std::size_t b = 0; b < alive.size(); ++b) {
    RgbImage out;
    out.width = shared.width;
    out.height = shared.height;
    const auto* data = bytes[static_cast<int64_t>(b)].data_ptr<std::uint8_t>();
    out.pixels.assign(data, data + static_cast<std::size_t>(shared.width) * shared.height * 3);
    outcome.images[static_cast<std::size_t>(rows[static_cast<std::size_t>(alive[b])].out)] =
        std::move(out);
  }
  timings_.vae_decode_s += seconds_since(decode_start);
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
