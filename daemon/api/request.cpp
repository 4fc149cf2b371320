#include "daemon/api/request.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <stdexcept>

#include "daemon/api/errors.h"

namespace diffusiond {
namespace {

[[noreturn]] void invalid(const std::string& field, const std::string& message,
                          const char* reason = "invalid_field") {
  throw ServiceError(ErrorCode::invalid_request, message, reason, field);
}

std::string number(double x) {
  std::string s = std::to_string(x);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

int bounded(std::int64_t x, const char* field, std::int64_t lo, std::int64_t hi) {
  if (x < lo || x > hi)
    invalid(field, std::string("field '") + field + "' must be between " + std::to_string(lo) +
                       " and " + std::to_string(hi) + ", got " + std::to_string(x));
  return static_cast<int>(x);
}

void check_text(const std::string& text, const std::string& field, std::size_t max_chars) {
  // A NUL means nothing in a prompt, and PNG text chunks cannot hold one (readers would lose
  // the parameters after it).
  if (text.find('\0') != std::string::npos)
    invalid(field, "field '" + field + "' contains a NUL character");
  const std::size_t chars = utf8_length(text);
  if (chars > max_chars)
    invalid(field, "field '" + field + "' is too long: " + std::to_string(chars) +
                       " characters, at most " + std::to_string(max_chars));
}

int side(const std::optional<std::int64_t>& given, int fallback, const char* field,
         const RequestLimits& limits) {
  if (!given) return fallback;
  const int x = bounded(*given, field, limits.min_side, limits.max_side);
  if (limits.side_multiple > 1 && x % limits.side_multiple != 0)
    invalid(field, std::string("field '") + field + "' must be a multiple of " +
                       std::to_string(limits.side_multiple) + ", got " + std::to_string(x));
  return x;
}

// SDXL's original_size / crops_coords_top_left / target_size: bounded like the image sides
// (crops from 0), defaults as diffusers (the output size, (0, 0)); refused for other models.
void micro_conditioning(const GenerateRequest& in, const RequestDefaults& defaults,
                        const RequestLimits& limits, JobRequest& r) {
  struct Field {
    const std::optional<SizePair>& given;
    std::optional<std::array<int, 2>>& out;
    const char* name;
    std::int64_t lo;
    std::array<int, 2> fallback;
  };
  const Field fields[] = {
      {in.original_size, r.original_size, "original_size", 1, {r.height, r.width}},
      {in.crops_coords_top_left, r.crops_coords_top_left, "crops_coords_top_left", 0, {0, 0}},
      {in.target_size, r.target_size, "target_size", 1, {r.height, r.width}}};
  for (const Field& f : fields) {
    if (f.given && !defaults.micro_conditioning)
      invalid(f.name, std::string("field '") + f.name +
                          "' applies to SDXL models only; this model does not take it");
    if (!defaults.micro_conditioning) continue;
    if (!f.given) {
      f.out = f.fallback;
      continue;
    }
    for (const std::int64_t x : *f.given) {
      if (x < f.lo || x > limits.max_side)
        invalid(f.name, std::string("field '") + f.name + "' must hold two numbers between " +
                            std::to_string(f.lo) + " and " + std::to_string(limits.max_side) +
                            ", got [" + std::to_string((*f.given)[0]) + ", " +
                            std::to_string((*f.given)[1]) + "]");
    }
    f.out = std::array<int, 2>{static_cast<int>((*f.given)[0]), static_cast<int>((*f.given)[1])};
  }
}

// A model or LoRA name: a name, never a path (no separators, no "." or "..").
void check_name(const std::string& name, const std::string& field, const RequestLimits& limits) {
  if (name.empty()) invalid(field, "field '" + field + "' must not be empty");
  check_text(name, field, limits.max_name_chars);
  if (name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\\') != std::string::npos)
    invalid(field,
            "field '" + field + "' must be a name, not a path: '" + name.substr(0, 100) + "'");
}

void models_and_loras(const GenerateRequest& in, const RequestLimits& limits, JobRequest& r) {
  if (in.model) {
    check_text(*in.model, "model", limits.max_name_chars);
    r.model = *in.model;
  }
  if (in.loras.size() > static_cast<std::size_t>(limits.max_loras))
    invalid("loras", "field 'loras' holds " + std::to_string(in.loras.size()) + " LoRAs; at most " +
                         std::to_string(limits.max_loras));
  for (std::size_t i = 0; i < in.loras.size(); ++i) {
    const std::string field = "loras[" + std::to_string(i) + "]";
    check_name(in.loras[i].name, field + ".name", limits);
    const double w = in.loras[i].weight;
    if (!(w >= -limits.max_lora_weight && w <= limits.max_lora_weight))
      invalid(field + ".weight", "field '" + field + ".weight' must be between -" +
                                     number(limits.max_lora_weight) + " and " +
                                     number(limits.max_lora_weight) + ", got " + number(w));
  }
  r.loras = in.loras;
  if (in.prompt_syntax) {
    std::string s = *in.prompt_syntax;
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (s == "plain")
      r.prompt_syntax = PromptSyntax::plain;
    else if (s == "a1111")
      r.prompt_syntax = PromptSyntax::a1111;
    else
      invalid("prompt_syntax", "field 'prompt_syntax' must be \"plain\" or \"a1111\", got '" +
                                   in.prompt_syntax->substr(0, 100) + "'");
  }
}

}  // namespace

const char* to_string(PromptSyntax syntax) {
  return syntax == PromptSyntax::a1111 ? "a1111" : "plain";
}

std::size_t utf8_length(const std::string& text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

JobRequest normalise(const GenerateRequest& in, const RequestDefaults& defaults,
                     const SchedulerResolver& resolve_scheduler, const RequestLimits& limits,
                     std::uint64_t random_seed, const std::string& known_schedulers) {
  JobRequest r;
  if (in.prompts.empty())
    invalid("prompt", "field 'prompt' (a string) or 'prompts' (an array) is required",
            "missing_field");
  if (in.prompts.size() > static_cast<std::size_t>(limits.max_prompts))
    invalid("prompts", "field 'prompts' must hold 1 to " + std::to_string(limits.max_prompts) +
                           " prompts, got " + std::to_string(in.prompts.size()));
  for (std::size_t i = 0; i < in.prompts.size(); ++i)
    check_text(in.prompts[i],
               in.prompts.size() == 1 ? "prompt" : "prompts[" + std::to_string(i) + "]",
               limits.max_prompt_chars);
  r.prompts = in.prompts;
  if (in.negative_prompt)
    check_text(*in.negative_prompt, "negative_prompt", limits.max_prompt_chars);
  r.negative_prompt = in.negative_prompt;

  r.n = bounded(in.n, "n", 1, limits.max_n);
  const std::size_t images = r.prompts.size() * static_cast<std::size_t>(r.n);
  if (images > static_cast<std::size_t>(limits.max_images_per_job))
    invalid("n", "this request asks for " + std::to_string(images) +
                     " images (prompts x n); at most " + std::to_string(limits.max_images_per_job) +
                     " per job");

  r.steps = in.steps ? bounded(*in.steps, "steps", 1, limits.max_steps) : defaults.steps;

  r.guidance_scale = defaults.guidance_scale;
  if (in.guidance_scale) {
    const double g = *in.guidance_scale;
    if (!(g >= 0.0 && g <= limits.max_guidance_scale))
      invalid("guidance_scale", "field 'guidance_scale' must be between 0 and " +
                                    number(limits.max_guidance_scale) + ", got " + number(g));
    r.guidance_scale = g;
  }

  r.seed = in.seed.value_or(random_seed);
  if (r.seed > std::numeric_limits<std::uint64_t>::max() - (images - 1))
    invalid("seed", "field 'seed' is too large: seed + image index must fit in 64 bits");

  r.width = side(in.width, defaults.width, "width", limits);
  r.height = side(in.height, defaults.height, "height", limits);
  const std::int64_t pixels = static_cast<std::int64_t>(r.width) * r.height;
  if (pixels > limits.max_pixels)
    invalid(in.width ? "width" : "height", "width x height = " + std::to_string(pixels) +
                                               " pixels exceeds the limit of " +
                                               std::to_string(limits.max_pixels));

  if (in.scheduler) {
    auto canonical = resolve_scheduler(*in.scheduler);
    if (!canonical)
      invalid("scheduler",
              "field 'scheduler': unknown scheduler '" + in.scheduler->substr(0, 100) + "'" +
                  (known_schedulers.empty() ? "" : "; known: " + known_schedulers),
              "unknown_scheduler");
    r.scheduler = *canonical;
  } else {
    r.scheduler = resolve_scheduler(defaults.scheduler).value_or(defaults.scheduler);
  }

  r.priority = bounded(in.priority, "priority", -limits.max_priority, limits.max_priority);
  micro_conditioning(in, defaults, limits, r);
  models_and_loras(in, limits, r);
  return r;
}

int image_count(const JobRequest& request) {
  return static_cast<int>(request.prompts.size()) * request.n;
}

ImageSpec image_spec(const JobRequest& r, int k) {
  if (k < 0 || k >= image_count(r))
    throw std::out_of_range("the request has no image " + std::to_string(k));
  ImageSpec s;
  s.index = k;
  s.prompt = r.prompts[static_cast<std::size_t>(k / r.n)];
  s.negative_prompt = r.negative_prompt;
  s.steps = r.steps;
  s.guidance_scale = r.guidance_scale;
  s.seed = r.seed + static_cast<std::uint64_t>(k);
  s.width = r.width;
  s.height = r.height;
  s.scheduler = r.scheduler;
  s.original_size = r.original_size;
  s.crops_coords_top_left = r.crops_coords_top_left;
  s.target_size = r.target_size;
  s.model = r.model;
  s.loras = r.loras;
  s.prompt_syntax = r.prompt_syntax;
  return s;
}

}  // namespace diffusiond
