// What a request is, in one place. Part of diffusiond_api (no dependencies); pure functions,
// any thread.
//
//   GenerateRequest  what a client asked for, shape-checked by a front end (http/): optional
//                    fields are unset when the client left them out.
//   normalise()      the one place that decides defaults (from the model), the canonical
//                    scheduler name, the seed and every limit. The core (CoreService::submit)
//                    and `diffusiond generate` call it; nothing else fills a default.
//   JobRequest       the normalised request a job keeps (store, API, PNG metadata all show it).
//   ImageSpec        image k of a job: its own prompt and seed; the pipeline parameters and the
//                    PNG metadata are both built from it.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace diffusiond {

// (height, width) or (top, left), as diffusers' SDXL micro-conditioning arguments.
using SizePair = std::array<std::int64_t, 2>;

// A LoRA a request applies: a file stem in the LoRA directory (never a path) and its multiplier
// (negative allowed), A1111's `<lora:name:weight>`.
struct LoraRef {
  std::string name;
  double weight = 1.0;
  bool operator==(const LoraRef&) const = default;
};

// How prompt text is read. plain: as diffusers reads it (the default, exact). a1111:
// AUTOMATIC1111's emphasis syntax, BREAK and 75-token chunks.
enum class PromptSyntax { plain, a1111 };
const char* to_string(PromptSyntax syntax);

struct GenerateRequest {
  std::vector<std::string> prompts;  // at least one
  // Unset = absent: SDXL models (force_zeros_for_empty_prompt) then condition on zeros, while a
  // given "" is encoded as text. SD 1.x/2.x treat absent as "".
  std::optional<std::string> negative_prompt;
  std::int64_t n = 1;  // images per prompt
  std::optional<std::int64_t> steps;
  std::optional<double> guidance_scale;
  std::optional<std::uint64_t> seed;  // unset: a random seed
  std::optional<std::int64_t> width;
  std::optional<std::int64_t> height;
  std::optional<std::string> scheduler;  // canonical name or alias, any case
  std::int64_t priority = 0;
  // SDXL micro-conditioning (refused for other models). Unset: original_size and target_size
  // default to (height, width), crops_coords_top_left to (0, 0).
  std::optional<SizePair> original_size;
  std::optional<SizePair> crops_coords_top_left;
  std::optional<SizePair> target_size;
  // SDXL negative micro-conditioning (diffusers' negative_original_size, ...): the
  // unconditional half's add_time_ids. Both sizes or none: one size alone, or the crops alone,
  // is refused (diffusers would silently ignore it). Unset: the unconditional half reuses the
  // three above.
  std::optional<SizePair> negative_original_size;
  std::optional<SizePair> negative_crops_coords_top_left;
  std::optional<SizePair> negative_target_size;
  std::optional<std::string> model;          // unset: the daemon's default model
  std::vector<LoraRef> loras;                // in the order given
  std::optional<std::string> prompt_syntax;  // "plain" (default) or "a1111", any case
};

// Images are numbered prompt-major: image k = prompts[k / n] with seed + k.
struct JobRequest {
  std::vector<std::string> prompts;
  std::optional<std::string> negative_prompt;  // unset = absent (see GenerateRequest)
  int n = 1;
  int steps = 0;
  double guidance_scale = 7.5;
  std::uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string scheduler;  // canonical scheduler name
  int priority = 0;       // higher runs first; FIFO within a priority
  // SDXL models: always set (the defaults filled in); other models: unset.
  std::optional<std::array<int, 2>> original_size;
  std::optional<std::array<int, 2>> crops_coords_top_left;
  std::optional<std::array<int, 2>> target_size;
  // SDXL negative micro-conditioning: all three set (crops defaulted to (0, 0)) or all unset.
  std::optional<std::array<int, 2>> negative_original_size;
  std::optional<std::array<int, 2>> negative_crops_coords_top_left;
  std::optional<std::array<int, 2>> negative_target_size;
  std::string model;  // as asked; empty: the daemon's default model
  // The job's LoRA set, applied to every image: loras[] then the `<lora:...>` tags of the
  // prompts (in order) and of the negative prompt, each name once (prompts keep their text
  // without the tags).
  std::vector<LoraRef> loras;
  PromptSyntax prompt_syntax = PromptSyntax::plain;
};

// Every bound on a request. Defaults are the documented safe defaults (`serve --help`).
struct RequestLimits {
  int min_side = 64;             // width/height lower bound
  int side_multiple = 8;         // width/height are multiples of this (the VAE's downscale)
  int max_side = 4096;           // width/height upper bound
  int max_pixels = 1024 * 1024;  // width * height upper bound
  int max_steps = 150;
  int max_n = 16;                       // images per prompt
  int max_prompts = 16;                 // entries of prompts[]
  int max_images_per_job = 64;          // prompts x n
  std::size_t max_prompt_chars = 2000;  // Unicode code points, per prompt and negative prompt
  double max_guidance_scale = 50.0;     // guidance_scale in [0, max]
  int max_priority = 1000;              // priority in [-max, max]
  int max_loras = 8;                    // entries of loras[]
  double max_lora_weight = 10.0;        // each LoRA weight in [-max, max]
  std::size_t max_name_chars = 200;     // model and LoRA names
};

// What normalise() needs to know about the model being served.
struct RequestDefaults {
  int width = 512;
  int height = 512;
  int steps = 50;
  double guidance_scale = 7.5;
  std::string scheduler;            // canonical
  bool micro_conditioning = false;  // SDXL: takes original_size / crops / target_size and the
                                    // negative_ ones
};

// Canonical scheduler name for a canonical name or alias (case-insensitive); nullopt if unknown.
using SchedulerResolver = std::function<std::optional<std::string>(const std::string&)>;

// Fills the defaults, resolves the scheduler, picks `random_seed` when no seed was given and
// checks every limit. Throws ServiceError (invalid_request; reason invalid_field,
// unknown_scheduler or missing_field; field names the request field at fault).
// `known_schedulers` is listed in the message of an unknown scheduler.
JobRequest normalise(const GenerateRequest& request, const RequestDefaults& defaults,
                     const SchedulerResolver& resolve_scheduler, const RequestLimits& limits,
                     std::uint64_t random_seed, const std::string& known_schedulers = {});

// A1111's LoRA tags (`<lora:NAME>`, `<lora:NAME:WEIGHT>`) taken out of a prompt text: every
// match of A1111's extra-network pattern `<(\w+):([^>]+)>` whose type is `lora` becomes "" (the
// text around it stays as it is, as extra_networks.parse_prompt leaves it); other types stay
// in the text. Returns the tags in order. `<lora:NAME:TE:UNET>` with TE != UNET and named
// arguments (`te=`, `unet=`, `dyn=`) are refused (one multiplier per LoRA). Throws
// ServiceError (invalid_request, field `field`) on a bad tag; the name is checked as a name.
// normalise() calls it on every prompt and the negative prompt.
std::vector<LoraRef> take_lora_tags(std::string& text, const std::string& field,
                                    const RequestLimits& limits);

// prompts x n.
int image_count(const JobRequest& request);

// Image k of a job: prompts[k / n], seed + k.
struct ImageSpec {
  int index = 0;
  std::string prompt;
  std::optional<std::string> negative_prompt;
  int steps = 0;
  double guidance_scale = 7.5;
  std::uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string scheduler;  // canonical
  std::optional<std::array<int, 2>> original_size, crops_coords_top_left, target_size;
  std::optional<std::array<int, 2>> negative_original_size, negative_crops_coords_top_left,
      negative_target_size;
  std::string model;  // empty: the daemon's default model
  std::vector<LoraRef> loras;
  PromptSyntax prompt_syntax = PromptSyntax::plain;
  // Not a parameter of the image: the core sets it when the submitter asked for live previews
  // (SubmitContext::previews); image_spec() leaves it false.
  bool previews = false;
};
ImageSpec image_spec(const JobRequest& request, int k);  // throws std::out_of_range

// Number of Unicode code points in valid UTF-8 text.
std::size_t utf8_length(const std::string& text);

}  // namespace diffusiond
