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

// One image of a batch: what it is conditioned on and where its noise comes from.
struct BatchRow {
  int out = 0;                   // its index in the BatchOutcome
  int item = 0;                  // its item (Txt2ImgParams) in the call
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
  // SDXL's add_time_ids [1, 6] in the model dtype: original_size + crops + target_size.
  torch::Tensor add_time_ids(const Txt2ImgParams& params) const;
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

torch::Tensor StableDiffusionPipeline::denoise(const torch::Tensor& model_input,
                                               const torch::Tensor& t,
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
  run_rows(rows, {params}, stop_all, dump, start, outcome);
  std::vector<RgbImage> images;
  for (auto& image : outcome.images) images.push_back(std::move(*image));
  timings_.total_s = seconds_since(start);
  return images;
}

BatchOutcome StableDiffusionPipeline::generate_batch(const std::vector<Txt2ImgParams>& items,
                                                     const StepCallback& on_step) {
  if (items.empty()) throw std::invalid_argument("generate_batch: no item given");
  for (const auto& item : items) {
    const auto& a = item.loras;
    const auto& b = items.front().loras;
    const bool same = a.size() == b.size() &&
                      std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
                        return x.path == y.path && x.weight == y.weight;
                      });
    if (!same) throw std::invalid_argument("generate_batch: every item must have one LoRA set");
  }
  apply_loras(items.front().loras);  // before InferenceMode: swaps parameters (set_data)
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
    run_rows(group, items, on_step, {}, start, outcome);
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
  for (int item_index = 0; item_index < static_cast<int>(items.size()); ++item_index) {
    const Txt2ImgParams& item = items[static_cast<std::size_t>(item_index)];
    const bool a1111 = item.a1111_prompt_syntax;  // rows are 77 x chunks long with A1111 syntax
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
                   : prompts_.encode(item.negative_prompt.value_or(""), a1111);
    }
    const torch::Tensor time_ids = xl_ ? add_time_ids(item) : torch::Tensor();
    for (int k = 0; k < count; ++k) {
      BatchRow row;
      row.out = static_cast<int>(rows.size());
      row.item = item_index;
      row.cond = prompts_.encode(item.prompts[static_cast<std::size_t>(k / per_prompt)], a1111);
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
                                       const std::vector<Txt2ImgParams>& items,
                                       const StepCallback& on_step, const DumpSink& dump,
                                       Clock::time_point start, BatchOutcome& outcome) {
  const Txt2ImgParams& shared = items.front();  // what every item shares (batch_rows checked)
  const bool guidance = shared.guidance_scale > 1.0;
  const auto batch = static_cast<int64_t>(rows.size());
  auto emit = [&](const std::string& name, const torch::Tensor& value) {
    if (dump) dump(name, value.detach().to(torch::kCPU));
  };

  // Prompt embeddings in batch order, one [1, L, hidden] per row; the uncond rows first when
  // guiding. L is 77 for plain text, 77 x chunks for A1111 syntax: every image of `rows` has one
  // cond and one uncond length (generate_batch's sub-batches), but the two may differ.
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
  if (shared.pad_cond_uncond) pad_to_longest(embeds);
  UNetAddedConditions added;
  if (xl_) {
    added.text_embeds = torch::cat(pooled, 0);             // [(2)B, P]
    added.time_ids = torch::cat(time_ids, 0).to(device_);  // [(2)B, 6]
    emit("add_text_embeds", added.text_embeds);
    emit("add_time_ids", added.time_ids);
  }
  std::vector<ConditioningGroup> groups = group_by_length(embeds, added);
  if (groups.size() == 1) emit("prompt_embeds", groups.front().embeds);  // [(2)B, L, hidden]
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

  // Asks on_step about every image still in the batch; those that stop leave it: their rows go
  // from every batched tensor, the sampler's history and the generators. Nothing here reads a
  // device tensor, so the host never waits between two launches.
  auto remove_stopped = [&](int step, int steps) {
    std::vector<int64_t> keep;
    for (std::size_t b = 0; b < alive.size(); ++b) {
      const BatchRow& row = rows[static_cast<std::size_t>(alive[b])];
      if (on_step(row.out, step, steps)) keep.push_back(static_cast<int64_t>(b));
    }
    if (keep.size() == alive.size()) return;
    std::vector<int> still;
    std::vector<at::Generator> kept_generators;
    std::vector<torch::Tensor> kept_embeds;
    std::vector<int64_t> both;
    const auto n = static_cast<int64_t>(alive.size());
    for (int half = guidance ? 0 : 1; half < 2; ++half) {
      for (int64_t b : keep) {
        both.push_back(guidance ? b + half * n : b);
        kept_embeds.push_back(embeds[static_cast<std::size_t>(both.back())]);
      }
    }
    for (int64_t b : keep) {
      still.push_back(alive[static_cast<std::size_t>(b)]);
      kept_generators.push_back(generators[static_cast<std::size_t>(b)]);
    }
    alive = std::move(still);
    generators = std::move(kept_generators);
    embeds = std::move(kept_embeds);
    if (alive.empty()) return;
    const torch::Tensor rows_kept = to_device_async(torch::tensor(keep, torch::kInt64));
    const torch::Tensor rows_both = to_device_async(torch::tensor(both, torch::kInt64));
    latents = latents.index_select(0, rows_kept);
    if (xl_) {
      added.text_embeds = added.text_embeds.index_select(0, rows_both);
      added.time_ids = added.time_ids.index_select(0, rows_both);
    }
    groups = group_by_length(embeds, added);
    if (scales.defined()) scales = scales.index_select(0, rows_kept);
    scheduler->keep_rows(rows_kept);
  };
  // Each item that asked for them (on_latents) sees the latents of its images still running.
  auto send_previews = [&](int step) {
    for (std::size_t it = 0; it < items.size(); ++it) {
      if (!items[it].on_latents) continue;
      std::vector<int64_t> mine;
      for (std::size_t b = 0; b < alive.size(); ++b)
        if (rows[static_cast<std::size_t>(alive[b])].item == static_cast<int>(it))
          mine.push_back(static_cast<int64_t>(b));
      if (mine.empty()) continue;
      items[it].on_latents(
          step, mine.size() == alive.size()
                    ? latents
                    : latents.index_select(0, to_device_async(torch::tensor(mine, torch::kInt64))));
    }
  };

  const int total = static_cast<int>(timesteps.size());
  for (int i = 0; i < total && !alive.empty(); ++i) {
    const auto step_start = Clock::now();
    torch::Tensor model_input = guidance ? torch::cat({latents, latents}, 0) : latents;
    model_input = scheduler->scale_model_input(model_input, i);
    torch::Tensor noise_pred = denoise(model_input, timestep_table[i], groups);
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
    sync();
    timings_.step_s.push_back(seconds_since(step_start));
    if (on_step) remove_stopped(i + 1, total);
    if (alive.empty()) break;
    send_previews(i + 1);
  }
  if (alive.empty()) return;

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
