#include "pipeline/random_model.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "pipeline/clip_text_model.h"
#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/unet.h"
#include "pipeline/vae.h"
#include "pipeline/weights.h"

namespace diffusiond {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json model_index(const std::string& scheduler_class) {
  return {{"_class_name", "StableDiffusionPipeline"},
          {"_diffusers_version", "0.27.2"},
          {"feature_extractor", {nullptr, nullptr}},
          {"image_encoder", {nullptr, nullptr}},
          {"requires_safety_checker", false},
          {"safety_checker", {nullptr, nullptr}},
          {"scheduler", {"diffusers", scheduler_class}},
          {"text_encoder", {"transformers", "CLIPTextModel"}},
          {"tokenizer", {"transformers", "CLIPTokenizer"}},
          {"unet", {"diffusers", "UNet2DConditionModel"}},
          {"vae", {"diffusers", "AutoencoderKL"}}};
}

json text_encoder_config(int hidden, int intermediate, int heads, int layers, const char* act,
                         int projection_dim) {
  return {{"architectures", {"CLIPTextModel"}},
          {"attention_dropout", 0.0},
          {"bos_token_id", 0},
          {"dropout", 0.0},
          {"eos_token_id", 2},
          {"hidden_act", act},
          {"hidden_size", hidden},
          {"initializer_factor", 1.0},
          {"initializer_range", 0.02},
          {"intermediate_size", intermediate},
          {"layer_norm_eps", 1e-05},
          {"max_position_embeddings", 77},
          {"model_type", "clip_text_model"},
          {"num_attention_heads", heads},
          {"num_hidden_layers", layers},
          {"pad_token_id", 1},
          {"projection_dim", projection_dim},
          {"torch_dtype", "float32"},
          {"transformers_version", "4.38.2"},
          {"vocab_size", 49408}};
}

json unet_config(json block_out_channels, json attention_head_dim, int cross_attention_dim,
                 int sample_size, bool linear_projection, bool upcast_attention,
                 std::vector<std::string> down, std::vector<std::string> up, int norm_groups) {
  return {{"_class_name", "UNet2DConditionModel"},
          {"_diffusers_version", "0.27.2"},
          {"act_fn", "silu"},
          {"attention_head_dim", attention_head_dim},
          {"block_out_channels", block_out_channels},
          {"center_input_sample", false},
          {"cross_attention_dim", cross_attention_dim},
          {"down_block_types", down},
          {"downsample_padding", 1},
          {"dual_cross_attention", false},
          {"flip_sin_to_cos", true},
          {"freq_shift", 0},
          {"in_channels", 4},
          {"layers_per_block", 2},
          {"mid_block_scale_factor", 1},
          {"norm_eps", 1e-05},
          {"norm_num_groups", norm_groups},
          {"num_class_embeds", nullptr},
          {"only_cross_attention", false},
          {"out_channels", 4},
          {"sample_size", sample_size},
          {"up_block_types", up},
          {"upcast_attention", upcast_attention},
          {"use_linear_projection", linear_projection}};
}

json vae_config(json block_out_channels, int sample_size, int norm_groups) {
  const std::size_t n = block_out_channels.size();
  return {{"_class_name", "AutoencoderKL"},
          {"_diffusers_version", "0.27.2"},
          {"act_fn", "silu"},
          {"block_out_channels", block_out_channels},
          {"down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D")},
          {"force_upcast", true},
          {"in_channels", 3},
          {"latent_channels", 4},
          {"layers_per_block", 2},
          {"norm_num_groups", norm_groups},
          {"out_channels", 3},
          {"sample_size", sample_size},
          {"scaling_factor", 0.18215},
          {"up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D")}};
}

json scheduler_config(const char* class_name, const char* prediction_type) {
  return {{"_class_name", class_name},   {"_diffusers_version", "0.27.2"},
          {"beta_end", 0.012},           {"beta_schedule", "scaled_linear"},
          {"beta_start", 0.00085},       {"clip_sample", false},
          {"num_train_timesteps", 1000}, {"prediction_type", prediction_type},
          {"set_alpha_to_one", false},   {"skip_prk_steps", true},
          {"steps_offset", 1},           {"timestep_spacing", "leading"},
          {"trained_betas", nullptr}};
}

// stabilityai/stable-diffusion-xl-base-1.0's model_index.json.
json sdxl_model_index() {
  return {{"_class_name", "StableDiffusionXLPipeline"},
          {"_diffusers_version", "0.27.2"},
          {"feature_extractor", {nullptr, nullptr}},
          {"force_zeros_for_empty_prompt", true},
          {"image_encoder", {nullptr, nullptr}},
          {"scheduler", {"diffusers", "EulerDiscreteScheduler"}},
          {"text_encoder", {"transformers", "CLIPTextModel"}},
          {"text_encoder_2", {"transformers", "CLIPTextModelWithProjection"}},
          {"tokenizer", {"transformers", "CLIPTokenizer"}},
          {"tokenizer_2", {"transformers", "CLIPTokenizer"}},
          {"unet", {"diffusers", "UNet2DConditionModel"}},
          {"vae", {"diffusers", "AutoencoderKL"}}};
}

const std::vector<std::string> kSdDown = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "CrossAttnDownBlock2D", "DownBlock2D"};
const std::vector<std::string> kSdUp = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                        "CrossAttnUpBlock2D"};

void write_json(const fs::path& path, const json& j) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::trunc);
  f << j.dump(2) << "\n";
  if (!f) throw std::runtime_error(path.string() + ": cannot write");
}

// normal(0, 0.02) for matrices, kernels and embeddings; ones for norm scales; zeros for biases.
// Each parameter draws from its own generator, seeded from `seed` and its index in
// named_parameters() order, so the parameters are filled by every core at once (one generator
// is serial: an SDXL UNet took over a minute) and the weights do not depend on how many threads
// ran.
void init_random(torch::nn::Module& module, std::uint64_t seed) {
  auto params = module.named_parameters(true);
  std::vector<std::size_t> order(params.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return params[a].value().numel() > params[b].value().numel();  // the largest first
  });
  std::atomic<std::size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mu;
  auto work = [&] {
    torch::NoGradGuard no_grad;  // thread-local
    try {
      for (std::size_t k = next++; k < order.size(); k = next++) {
        const std::size_t index = order[k];
        auto& p = params[index].value();
        const std::string& name = params[index].key();
        if (p.dim() >= 2) {
          auto gen = at::detail::createCPUGenerator(seed * 1000003u + index);
          p.normal_(0.0, 0.02, gen);
        } else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
          p.zero_();
        } else {
          p.fill_(1.0);
        }
      }
    } catch (...) {
      std::lock_guard lock(failure_mu);
      if (!failure) failure = std::current_exception();
    }
  };
  const unsigned threads = std::max(1u, std::min(std::thread::hardware_concurrency(), 32u));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

void save_module(const torch::nn::Module& module, const fs::path& path, torch::ScalarType dtype) {
  fs::create_directories(path.parent_path());
  auto tensors = state_dict(module);
  for (auto& [name, tensor] : tensors) {
    if (tensor.is_floating_point()) tensor = tensor.to(dtype);
  }
  write_safetensors(path, tensors, {{"format", "pt"}});
}

void copy_tokenizer(const fs::path& from, const fs::path& to, const std::string& pad_token) {
  for (const char* required : {"vocab.json", "merges.txt", "tokenizer_config.json"}) {
    if (!fs::is_regular_file(from / required)) {
      throw std::invalid_argument("tokenizer folder " + from.string() + " has no " + required);
    }
  }
  fs::create_directories(to);
  fs::copy_file(from / "vocab.json", to / "vocab.json", fs::copy_options::overwrite_existing);
  fs::copy_file(from / "merges.txt", to / "merges.txt", fs::copy_options::overwrite_existing);
  json config = read_json_file(from / "tokenizer_config.json");
  config["pad_token"] = pad_token;
  write_json(to / "tokenizer_config.json", config);
  if (fs::is_regular_file(from / "special_tokens_map.json")) {
    json special = read_json_file(from / "special_tokens_map.json");
    special["pad_token"] = pad_token;
    write_json(to / "special_tokens_map.json", special);
  }
}

}  // namespace

const std::vector<std::string>& random_model_archs() {
  static const std::vector<std::string> archs = {"sd15",      "sd21", "tiny-sd2",
                                                 "small-sd1", "sdxl", "sdxl-turbo"};
  return archs;
}

RandomModelConfigs random_model_configs(const std::string& arch) {
  RandomModelConfigs c;
  if (arch == "sd15") {  // runwayml/stable-diffusion-v1-5
    c.model_index = model_index("PNDMScheduler");
    c.text_encoder = text_encoder_config(768, 3072, 12, 12, "quick_gelu", 768);
    c.unet = unet_config({320, 640, 1280, 1280}, 8, 768, 64, false, false, kSdDown, kSdUp, 32);
    c.vae = vae_config({128, 256, 512, 512}, 512, 32);
    c.scheduler = scheduler_config("PNDMScheduler", "epsilon");
    c.pad_token = "<|endoftext|>";
  } else if (arch == "sd21") {  // stabilityai/stable-diffusion-2-1
    c.model_index = model_index("DDIMScheduler");
    c.text_encoder = text_encoder_config(1024, 4096, 16, 23, "gelu", 512);
    c.unet = unet_config({320, 640, 1280, 1280}, {5, 10, 20, 20}, 1024, 96, true, true, kSdDown,
                         kSdUp, 32);
    c.vae = vae_config({128, 256, 512, 512}, 768, 32);
    c.scheduler = scheduler_config("DDIMScheduler", "v_prediction");
    c.pad_token = "!";
  } else if (arch == "tiny-sd2") {  // SD 2.x switches at fixture size
    c.model_index = model_index("DDIMScheduler");
    c.text_encoder = text_encoder_config(32, 64, 4, 3, "gelu", 32);
    c.unet =
        unet_config({32, 64}, {2, 4}, 32, 8, true, true, {"CrossAttnDownBlock2D", "DownBlock2D"},
                    {"UpBlock2D", "CrossAttnUpBlock2D"}, 32);
    c.vae = vae_config({8, 16, 16, 16}, 64, 4);
    c.scheduler = scheduler_config("DDIMScheduler", "v_prediction");
    c.pad_token = "!";
  } else if (arch == "small-sd1") {  // SD 1.5's layout at 1/5 of its widths: ~290 MB in fp32,
    // big enough to measure memory sharing, small enough for a test
    c.model_index = model_index("PNDMScheduler");
    c.text_encoder = text_encoder_config(256, 1024, 4, 4, "quick_gelu", 256);
    c.unet = unet_config({64, 128, 256, 256}, 8, 256, 64, false, false, kSdDown, kSdUp, 32);
    c.vae = vae_config({64, 128, 256, 256}, 512, 32);
    c.scheduler = scheduler_config("PNDMScheduler", "epsilon");
    c.pad_token = "<|endoftext|>";
  } else if (arch == "sdxl" || arch == "sdxl-turbo") {  // stabilityai/stable-diffusion-xl-base-1.0
    c.model_index = sdxl_model_index();
    c.text_encoder = text_encoder_config(768, 3072, 12, 12, "quick_gelu", 768);
    c.text_encoder_2 = text_encoder_config(1280, 5120, 20, 32, "gelu", 1280);
    c.text_encoder_2["architectures"] = {"CLIPTextModelWithProjection"};
    c.unet = unet_config({320, 640, 1280}, {5, 10, 20}, 2048, 128, true, false,
                         {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"},
                         {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}, 32);
    c.unet["transformer_layers_per_block"] = {1, 2, 10};
    c.unet["addition_embed_type"] = "text_time";
    c.unet["addition_embed_type_num_heads"] = 64;
    c.unet["addition_time_embed_dim"] = 256;
    c.unet["projection_class_embeddings_input_dim"] = 2816;  // 1280 pooled + 6 x 256
    c.vae = vae_config({128, 256, 512, 512}, 1024, 32);
    c.vae["scaling_factor"] = 0.13025;
    c.scheduler = scheduler_config("EulerDiscreteScheduler", "epsilon");
    c.scheduler["interpolation_type"] = "linear";
    c.scheduler["use_karras_sigmas"] = false;
    c.pad_token = "<|endoftext|>";
    c.pad_token_2 = "!";
    if (arch == "sdxl-turbo") {  // stabilityai/sdxl-turbo: the same networks, distilled for
      // 1-4 steps at 512x512 (its model card) with EulerAncestral on trailing timesteps
      c.model_index["scheduler"] = {"diffusers", "EulerAncestralDiscreteScheduler"};
      c.unet["sample_size"] = 64;  // 512 / 8: the size the model family defaults to
      c.scheduler = scheduler_config("EulerAncestralDiscreteScheduler", "epsilon");
      c.scheduler["timestep_spacing"] = "trailing";
    }
  } else {
    std::string known;
    for (const auto& a : random_model_archs()) known += (known.empty() ? "" : ", ") + a;
    throw std::invalid_argument("unknown architecture '" + arch + "' (known: " + known + ")");
  }
  return c;
}

namespace {

// One network of the folder: its config, then its weights, random (built from the config,
// initialised, saved in `options.dtype`) or linked from `options.weights_from`, whose config of
// the same network must describe the same weights (sample_size aside: it shapes no weight).
void write_component(const fs::path& out, const std::string& name, const json& config,
                     const std::string& file, const RandomModelOptions& options,
                     std::uint64_t seed_offset,
                     const std::function<std::shared_ptr<torch::nn::Module>()>& build) {
  write_json(out / name / "config.json", config);
  const fs::path target = out / name / file;
  if (!options.weights_from.empty()) {
    const fs::path source = fs::absolute(options.weights_from / name / file);
    const fs::path source_config = options.weights_from / name / "config.json";
    if (!fs::is_regular_file(source) || !fs::is_regular_file(source_config)) {
      throw std::invalid_argument("weights folder " + options.weights_from.string() + " has no " +
                                  name + "/" + file + " with its config.json");
    }
    json theirs = read_json_file(source_config), ours = config;
    theirs.erase("sample_size");
    ours.erase("sample_size");
    if (theirs != ours) {
      throw std::invalid_argument(source_config.string() +
                                  " describes other weights than this architecture's " + name);
    }
    fs::remove(target);
    fs::create_symlink(source, target);
    return;
  }
  const torch::ScalarType dtype =
      options.dtype == RandomWeightsDtype::kFloat16 ? torch::kFloat16 : torch::kFloat32;
  const auto model = build();
  init_random(*model, options.seed + seed_offset);
  save_module(*model, target, dtype);
}

}  // namespace

void write_random_model(const std::string& arch, const fs::path& out, const fs::path& tokenizer_dir,
                        const RandomModelOptions& options,
                        const std::function<void(const std::string&)>& progress) {
  const RandomModelConfigs c = random_model_configs(arch);
  auto say = [&](const std::string& line) {
    if (progress) progress(line + (options.weights_from.empty() ? "" : " (linked)"));
  };
  fs::create_directories(out);
  write_json(out / "model_index.json", c.model_index);
  write_json(out / "scheduler" / "scheduler_config.json", c.scheduler);
  copy_tokenizer(tokenizer_dir, out / "tokenizer", c.pad_token);

  say("text_encoder");
  write_component(out, "text_encoder", c.text_encoder, "model.safetensors", options, 0, [&] {
    return std::make_shared<ClipTextModelImpl>(
        ClipTextConfig::from_json(c.text_encoder, "text_encoder/config.json"));
  });
  if (!c.text_encoder_2.is_null()) {
    say("text_encoder_2");
    copy_tokenizer(tokenizer_dir, out / "tokenizer_2", c.pad_token_2);
    write_component(out, "text_encoder_2", c.text_encoder_2, "model.safetensors", options, 3, [&] {
      return std::make_shared<ClipTextModelImpl>(
          ClipTextConfig::from_json(c.text_encoder_2, "text_encoder_2/config.json"),
          /*with_projection=*/true);
    });
  }
  say("unet");
  write_component(out, "unet", c.unet, "diffusion_pytorch_model.safetensors", options, 1, [&] {
    return std::make_shared<UNet2DConditionModelImpl>(
        UNetConfig::from_json(c.unet, "unet/config.json"));
  });
  say("vae");
  write_component(out, "vae", c.vae, "diffusion_pytorch_model.safetensors", options, 2, [&] {
    return std::make_shared<AutoencoderKLImpl>(VaeConfig::from_json(c.vae, "vae/config.json"));
  });
}

}  // namespace diffusiond
