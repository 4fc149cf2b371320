// Random-weight Stable Diffusion folders with the real architectures, for benchmarks and tests
// (no download needed): the configs are those the public checkpoints ship, the weights random.
// Thread-safety: free functions; each call works on its own modules and files (and fills the
// weights on threads of its own, joined before it returns).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {

// "sd15" (runwayml/stable-diffusion-v1-5), "sd21" (stabilityai/stable-diffusion-2-1),
// "tiny-sd2" (a few-MB model with every SD 2.x switch: v_prediction, linear projection,
// per-block heads, gelu text encoder, upcast_attention, pad token "!"), "small-sd1" (SD 1.5's
// layout at a fifth of its widths, ~290 MB in fp32: memory tests), "sdxl"
// (stabilityai/stable-diffusion-xl-base-1.0: a 2.6 B-parameter UNet, two text encoders),
// "sdxl-turbo" (stabilityai/sdxl-turbo: SDXL's networks, EulerAncestral with trailing
// timesteps, 512x512: the Turbo family's defaults, 1 step and no guidance).
const std::vector<std::string>& random_model_archs();

struct RandomModelConfigs {
  nlohmann::json model_index, text_encoder, unet, vae, scheduler;
  std::string pad_token;  // tokenizer pad token the architecture ships
  // SDXL: text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2's pad token; null/"" else.
  nlohmann::json text_encoder_2;
  std::string pad_token_2;
};
// Throws std::invalid_argument listing the known archs.
RandomModelConfigs random_model_configs(const std::string& arch);

// What the written weights are stored as: float32, or float16 (half the bytes, what the
// checkpoints' `fp16` variants hold; loading casts them to the dtype asked for).
enum class RandomWeightsDtype { kFloat32, kFloat16 };

struct RandomModelOptions {
  std::uint64_t seed = 0;  // of the random weights (each network its own offset)
  RandomWeightsDtype dtype = RandomWeightsDtype::kFloat32;
  // Non-empty: no new weights; each network's weight file is a symbolic link to the one in this
  // folder (e.g. an "sdxl" folder's for "sdxl-turbo": the same networks, another scheduler).
  // Its config.json of each network must describe the same weights (only sample_size may
  // differ), else std::invalid_argument names the file.
  std::filesystem::path weights_from;
};

// Writes a complete diffusers folder to `out`: model_index.json, text_encoder/ (and for SDXL
// text_encoder_2/, tokenizer_2/), unet/, vae/
// (config.json + model.safetensors / diffusion_pytorch_model.safetensors),
// scheduler/scheduler_config.json, and tokenizer/ copied from `tokenizer_dir` (vocab.json,
// merges.txt, tokenizer_config.json, special_tokens_map.json) with the arch's pad token.
// Weights: normal(0, 0.02) for every weight matrix / conv kernel / embedding (each tensor from
// its own generator, seeded from the seed and its place: drawn on every core, the same weights
// whatever the core count), ones for norm scales, zeros for biases; the modules are built from the
// configs and their state dicts saved, so the keys are right by construction. `progress` (optional)
// gets one line per stage.
void write_random_model(const std::string& arch, const std::filesystem::path& out,
                        const std::filesystem::path& tokenizer_dir,
                        const RandomModelOptions& options = {},
                        const std::function<void(const std::string&)>& progress = {});

}  // namespace diffusiond
