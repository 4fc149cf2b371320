#include "daemon/api/request.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <optional>
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

// An SDXL micro-conditioning pair: each number in [lo, max_side].
std::array<int, 2> size_pair(const SizePair& given, const char* name, std::int64_t lo,
                             const RequestLimits& limits) {
  for (const std::int64_t x : given) {
    if (x < lo || x > limits.max_side)
      invalid(name, std::string("field '") + name + "' must hold two numbers between " +
                        std::to_string(lo) + " and " + std::to_string(limits.max_side) + ", got [" +
                        std::to_string(given[0]) + ", " + std::to_string(given[1]) + "]");
  }
  return {static_cast<int>(given[0]), static_cast<int>(given[1])};
}

// SDXL's original_size / crops_coords_top_left / target_size and their negative_ counterparts:
// bounded like the image sides (crops from 0); refused for other models. Positive defaults as
// diffusers (the output size, (0, 0)). The negative ones: diffusers uses them only when both
// negative sizes are given (negative crops then default to (0, 0)); a size alone or the crops
// alone would silently do nothing, so they are refused; none given: all three stay unset (the
// unconditional half reuses the positive ones).
void micro_conditioning(const GenerateRequest& in, const RequestDefaults& defaults,
                        const RequestLimits& limits, JobRequest& r) {
  struct Field {
    const std::optional<SizePair>& given;
    std::optional<std::array<int, 2>>& out;
    const char* name;
    std::int64_t lo;
  };
  const Field fields[] = {
      {in.original_size, r.original_size, "original_size", 1},
      {in.crops_coords_top_left, r.crops_coords_top_left, "crops_coords_top_left", 0},
      {in.target_size, r.target_size, "target_size", 1},
      {in.negative_original_size, r.negative_original_size, "negative_original_size", 1},
      {in.negative_crops_coords_top_left, r.negative_crops_coords_top_left,
       "negative_crops_coords_top_left", 0},
      {in.negative_target_size, r.negative_target_size, "negative_target_size", 1}};
  std::string negatives_given;
  for (const Field& f : fields) {
    if (!f.given) continue;
    if (!defaults.micro_conditioning)
      invalid(f.name, std::string("field '") + f.name +
                          "' applies to SDXL models only; this model does not take it");
    f.out = size_pair(*f.given, f.name, f.lo, limits);
    if (std::string(f.name).rfind("negative_", 0) == 0)
      negatives_given += (negatives_given.empty() ? "'" : "', '") + std::string(f.name);
  }
  if (!defaults.micro_conditioning) return;
  if (!r.original_size) r.original_size = std::array<int, 2>{r.height, r.width};
  if (!r.crops_coords_top_left) r.crops_coords_top_left = std::array<int, 2>{0, 0};
  if (!r.target_size) r.target_size = std::array<int, 2>{r.height, r.width};
  if (negatives_given.empty()) return;
  if (!r.negative_original_size || !r.negative_target_size) {
    const std::string missing =
        !r.negative_original_size ? "negative_original_size" : "negative_target_size";
    invalid(missing,
            "field '" + missing + "' is required with " + negatives_given +
                "': diffusers uses the negative micro-conditioning only when "
                "negative_original_size and negative_target_size are both given "
                "(negative_crops_coords_top_left defaults to [0, 0]); give both, or none for "
                "the unconditional half to reuse original_size, crops_coords_top_left and "
                "target_size",
            "missing_field");
  }
  if (!r.negative_crops_coords_top_left)
    r.negative_crops_coords_top_left = std::array<int, 2>{0, 0};
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

void check_lora_weight(double w, const std::string& field, const RequestLimits& limits) {
  if (!(w >= -limits.max_lora_weight && w <= limits.max_lora_weight))
    invalid(field, "field '" + field + "': a LoRA weight must be between -" +
                       number(limits.max_lora_weight) + " and " + number(limits.max_lora_weight) +
                       ", got " + number(w));
}

// Adds `lora` to the job's set: a name once; the same name again with another weight is refused.
void add_lora(std::vector<LoraRef>& set, const LoraRef& lora, const std::string& field) {
  for (const LoraRef& earlier : set) {
    if (earlier.name != lora.name) continue;
    if (earlier.weight == lora.weight) return;
    invalid(field, "field '" + field + "': LoRA '" + lora.name + "' is asked for with weight " +
                       number(earlier.weight) + " and with weight " + number(lora.weight) +
                       " (loras[] and <lora:...> tags of one job); a LoRA has one weight per job");
  }
  set.push_back(lora);
}

// `tags`: the prompts' and negative prompt's <lora:...> tags, with the field each came from.
void models_and_loras(const GenerateRequest& in, const RequestLimits& limits,
                      const std::vector<std::pair<LoraRef, std::string>>& tags, JobRequest& r) {
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
    check_lora_weight(in.loras[i].weight, field + ".weight", limits);
    add_lora(r.loras, in.loras[i], "loras");
  }
  for (const auto& [lora, field] : tags) add_lora(r.loras, lora, field);
  if (r.loras.size() > static_cast<std::size_t>(limits.max_loras))
    invalid("loras", "this request applies " + std::to_string(r.loras.size()) +
                         " LoRAs (loras[] and <lora:...> tags); at most " +
                         std::to_string(limits.max_loras));
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

// Python's \w, closely enough: ASCII letters, digits, '_' and every non-ASCII byte (UTF-8).
bool word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

// A1111's float(x): optional sign, digits with one '.', optional exponent; surrounding spaces.
std::optional<double> parse_weight(const std::string& text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos) return std::nullopt;
  const std::string t = text.substr(first, text.find_last_not_of(" \t") - first + 1);
  std::size_t used = 0;
  try {
    const double w = std::stod(t, &used);
    if (used != t.size() || !std::isfinite(w)) return std::nullopt;
    return w;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::vector<LoraRef> take_lora_tags(std::string& text, const std::string& field,
                                    const RequestLimits& limits) {
  // Ref: A1111 modules/extra_networks.py parse_prompt (re_extra_net = <(\w+):([^>]+)>, re.sub
  // to ""), extensions-builtin/Lora/extra_networks_lora.py activate (te = args[1] or 1.0,
  // unet = args[2] or te).
  std::vector<LoraRef> tags;
  std::string out;
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '<') {
      out += text[i++];
      continue;
    }
    std::size_t j = i + 1;
    while (j < text.size() && word_byte(text[j])) ++j;
    const std::size_t close =
        j < text.size() && text[j] == ':' && j > i + 1 ? text.find('>', j + 1) : std::string::npos;
    if (close == std::string::npos || close == j + 1) {  // no match at this '<'
      out += text[i++];
      continue;
    }
    const std::string type = text.substr(i + 1, j - i - 1);
    const std::string args = text.substr(j + 1, close - j - 1);
    if (type != "lora") {  // another extra network: not ours, left in the text
      out.append(text, i, close + 1 - i);
      i = close + 1;
      continue;
    }
    std::vector<std::string> parts;
    std::size_t from = 0;
    for (std::size_t k = 0; k <= args.size(); ++k)
      if (k == args.size() || args[k] == ':') {
        parts.push_back(args.substr(from, k - from));
        from = k + 1;
      }
    const std::string tag = text.substr(i, close + 1 - i);
    const std::string shown = "'" + tag.substr(0, 120) + "'";
    for (std::size_t k = 1; k < parts.size(); ++k)
      if (parts[k].find('=') != std::string::npos)
        invalid(field, "field '" + field + "': LoRA tag " + shown +
                           ": named arguments (te=, unet=, dyn=) are not supported; write "
                           "<lora:NAME:WEIGHT>");
    if (parts.size() > 3)
      invalid(field, "field '" + field + "': LoRA tag " + shown + " has too many arguments");
    LoraRef lora;
    lora.name = parts[0];
    check_name(lora.name, field, limits);
    if (parts.size() >= 2) {
      const auto w = parse_weight(parts[1]);
      if (!w)
        invalid(field, "field '" + field + "': LoRA tag " + shown + ": the weight '" +
                           parts[1].substr(0, 40) + "' is not a number");
      lora.weight = *w;
    }
    if (parts.size() == 3) {
      const auto unet = parse_weight(parts[2]);
      if (!unet || *unet != lora.weight)
        invalid(field, "field '" + field + "': LoRA tag " + shown +
                           ": a separate UNet weight is not supported (one weight per LoRA)");
    }
    check_lora_weight(lora.weight, field, limits);
    tags.push_back(lora);
    i = close + 1;
  }
  text = std::move(out);
  return tags;
}

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
  // A1111's <lora:...> tags, for every prompt syntax: out of the text, into the job's set.
  std::vector<std::pair<LoraRef, std::string>> tags;
  for (std::size_t i = 0; i < r.prompts.size(); ++i) {
    const std::string field =
        r.prompts.size() == 1 ? "prompt" : "prompts[" + std::to_string(i) + "]";
    for (auto& tag : take_lora_tags(r.prompts[i], field, limits)) tags.emplace_back(tag, field);
  }
  if (r.negative_prompt)
    for (auto& tag : take_lora_tags(*r.negative_prompt, "negative_prompt", limits))
      tags.emplace_back(tag, "negative_prompt");

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
  models_and_loras(in, limits, tags, r);
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
  s.negative_original_size = r.negative_original_size;
  s.negative_crops_coords_top_left = r.negative_crops_coords_top_left;
  s.negative_target_size = r.negative_target_size;
  s.model = r.model;
  s.loras = r.loras;
  s.prompt_syntax = r.prompt_syntax;
  return s;
}

}  // namespace diffusiond
