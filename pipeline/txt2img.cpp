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

#include "pipeline/cpu_memory.h"
#include "pipeline/device_sync.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img_pipeline.h"

namespace diffusiond {
namespace detail {
namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string two_digits(int i) {
  std::string s = std::to_string(i);
  return s.size() < 2 ? "0" + s : s;
}

}  // namespace

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
        time_ids.push_back(half == 0 ? row.time_ids.uncond : row.time_ids.cond);
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
  StepFence fence(device_, tuning_.max_steps_ahead);  // CUDA: a bounded lead over the device
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
    fence.launched();
    fence.wait();
    sync();
    timings_.step_s.push_back(seconds_since(step_start));
    if (on_step) remove_stopped(i + 1, total);
    if (alive.empty()) break;
    send_previews(i + 1);
  }
  unet_->drop_cached_keys_values();  // the prompt's keys and values end with the loop
  if (alive.empty()) return;

  emit("latents", latents);
  const auto decode_start = Clock::now();
  torch::Tensor bytes;  // [B,H,W,3] uint8 on the host
  {
    const CpuPeakPhase peak(device_.is_cpu());  // one CPU replica's decode at a time
    torch::Tensor decoded =
        vae_->decode((latents / vae_->config().scaling_factor).to(vae_dtype_));  // [B,3,H,W]
    emit("decoded", decoded);
    // VaeImageProcessor.postprocess: denormalise in the VAE's dtype, to float32 (diffusers: on
    // the host), * 255, round half to even, uint8, HWC.
    torch::Tensor image = (decoded / 2 + 0.5).clamp(0, 1);
    emit("image", image);
    // Here on the device (one IEEE multiply and rounding each: the same bytes as on the host),
    // then one non-blocking copy of the uint8 pixels into pinned memory.
    bytes = copy_to_host((image.to(torch::kFloat32).permute({0, 2, 3, 1}) * 255)
                             .round()
                             .to(torch::kUInt8)
                             .contiguous());
  }
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

}  // namespace detail

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
  return std::make_unique<detail::StableDiffusionPipeline>(model, device, dtype);
}

}  // namespace diffusiond
