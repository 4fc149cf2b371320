// Ref: diffusers v0.27.2 pipelines/stable_diffusion/pipeline_stable_diffusion.py
// (StableDiffusionPipeline.__call__, encode_prompt, prepare_latents),
// pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py
// (StableDiffusionXLPipeline.__call__, _get_add_time_ids) and
// image_processor.VaeImageProcessor.postprocess. See the fixtures' golden/pipeline*.json
// "procedure".
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <iostream>
#include <stdexcept>

#include "pipeline/device_sync.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img_pipeline.h"

namespace diffusiond::detail {

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
  check_micro_conditioning(params, xl_);
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
    return unet_step(model_input, t, groups.front().embeds, groups.front().added);
  torch::Tensor out;
  for (const auto& g : groups) {
    const auto part = unet_step(model_input.index_select(0, g.index), t, g.embeds, g.added);
    if (!out.defined()) {
      auto sizes = part.sizes().vec();
      sizes[0] = model_input.size(0);
      out = torch::empty(sizes, part.options());
    }
    out.index_copy_(0, g.index, part);
  }
  return out;
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
    const AddTimeIds time_ids = xl_ ? add_time_ids(item, dtype_) : AddTimeIds{};
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
  // Every prompt is encoded: on the CPU the text encoders' mapped pages leave the resident set
  // until the next generation needs them (prompt_encoder.h).
  prompts_.release_resident_weights();
  return rows;
}

}  // namespace diffusiond::detail
