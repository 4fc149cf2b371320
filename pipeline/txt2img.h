// The text-to-image pipeline: one replica of a Stable Diffusion model (SD 1.x/2.x or SDXL) on
// one device. Ref: diffusers v0.27.2 StableDiffusionPipeline.__call__ and
// StableDiffusionXLPipeline.__call__.
// Owner: a device worker owns one StableDiffusion; only that worker's thread may call it
// (load() may run on any thread). Nothing here knows about jobs, HTTP or the store.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipeline/device_tuning.h"
#include "pipeline/media/image.h"
#include "pipeline/model_folder.h"

namespace diffusiond {

struct Txt2ImgParams {
  std::vector<std::string> prompts;  // image order is prompt-major: prompts x num_images
  // nullopt = absent. SD 1.x/2.x encode an absent one as "". SDXL with
  // force_zeros_for_empty_prompt (model_index.json) uses zeros for an absent one and encodes a
  // given "" as text.
  std::optional<std::string> negative_prompt;
  int num_images_per_prompt = 1;
  int steps = 50;
  double guidance_scale = 7.5;  // <= 1 disables classifier-free guidance
  std::uint64_t seed = 0;       // image k uses its own CPU generator seeded with seed + k
  int width = 512;
  int height = 512;
  std::string scheduler;  // name or alias; "" = the model's own scheduler
  // SDXL micro-conditioning, each (height, width) / (top, left) as diffusers; nullopt = the
  // default: original_size and target_size (height, width), crops_coords_top_left (0, 0).
  // SD 1.x/2.x models refuse them (std::invalid_argument).
  std::optional<std::array<int, 2>> original_size;
  std::optional<std::array<int, 2>> crops_coords_top_left;
  std::optional<std::array<int, 2>> target_size;
  // Optional initial noise [prompts x num_images, C, H/8, W/8] (diffusers' `latents=`): used
  // instead of the generators' draw, cast to the model's dtype and device, then scaled by the
  // scheduler's init_noise_sigma. The generators still draw the samplers' step noise.
  torch::Tensor latents;
};

// Called after every denoising step of every image of the batch (step in 1..steps, where steps is
// the number of model evaluations, e.g. 9 for PNDM at 8 inference steps); return false to stop.
using StepCallback = std::function<bool(int image, int step, int steps)>;

class GenerationCancelled : public std::runtime_error {
 public:
  GenerationCancelled() : std::runtime_error("generation cancelled") {}
};

// What generate_batch() made: per image (items in order, each item's images prompt-major), the
// image, or nullopt when the callback stopped it (it left the batch at that step); and how many
// images shared its UNet batch (the batch's size when it started).
struct BatchOutcome {
  std::vector<std::optional<RgbImage>> images;
  std::vector<int> batch_sizes;
};

// Optional sink for intermediates (--dump): called with a name and a CPU tensor.
using DumpSink = std::function<void(const std::string& name, const torch::Tensor& value)>;

// Wall-clock seconds of the stages of the last generate() call (bench/pipeline reads them).
struct GenerationTimings {
  double text_encode_s = 0;    // tokenize + text encoder (0 for prompts found in the cache)
  std::vector<double> step_s;  // one per denoising step (scale_model_input + UNet + step)
  double vae_decode_s = 0;     // VAE decode + conversion to uint8 on the host
  double total_s = 0;
};

class StableDiffusion {
 public:
  virtual ~StableDiffusion() = default;
  static std::unique_ptr<StableDiffusion> load(const ModelFolder& model, torch::Device device,
                                               torch::ScalarType dtype);

  // Generates prompts x num_images images (batched: all images of a call in one UNet batch).
  // Throws GenerationCancelled if the callback returns false; std::invalid_argument on bad
  // params (size not a multiple of 8, unknown scheduler, ...).
  virtual std::vector<RgbImage> generate(const Txt2ImgParams& params,
                                         const StepCallback& on_step = {},
                                         const DumpSink& dump = {}) = 0;

  // A batch across requests: the images of every item in one UNet batch. Each item keeps its
  // own prompts, negative prompt, guidance scale (a [B] tensor when they differ), seed (its
  // generators: image k of an item draws from seed + k, as alone) and micro-conditioning; all
  // items must share steps, width, height, scheduler and CFG on/off (guidance_scale > 1), else
  // std::invalid_argument. Images whose prompt embeddings differ in shape (e.g. prompts of
  // different chunk counts) run as separate sub-batches, one after another. When on_step returns
  // false for an image, that image leaves the batch before the next step (its outcome is
  // nullopt) and the others go on undisturbed. Every image equals the same image generated alone
  // (generate()) up to the floating-point rounding of a larger batch (within 1/255 per pixel).
  virtual BatchOutcome generate_batch(const std::vector<Txt2ImgParams>& items,
                                      const StepCallback& on_step = {}) = 0;

  virtual int default_width() const = 0;  // unet sample_size * vae scale factor
  virtual int default_height() const = 0;
  virtual std::string default_scheduler() const = 0;  // canonical name from scheduler_config
  virtual bool is_xl() const { return false; }        // SDXL (added text/time conditioning)
  virtual torch::Device device() const = 0;

  // Timings of the last generate(). With set_profiling(true) each stage boundary waits for the
  // device (CUDA synchronize) so the figures are real; off by default (no extra syncs).
  virtual GenerationTimings last_timings() const { return {}; }
  virtual void set_profiling(bool /*on*/) {}

  // How this replica uses a CUDA device (pipeline/device_tuning.h); a CPU replica ignores it.
  // Call before the first generation (channels_last converts the weights). `warn` receives the
  // one-time notices (a graph capture that failed, graphs not built); null = stderr.
  virtual void set_device_tuning(const DeviceTuning& /*tuning*/,
                                 std::function<void(const std::string&)> /*warn*/ = {}) {}
  virtual GraphCacheStats graph_stats() const { return {}; }
};

}  // namespace diffusiond
