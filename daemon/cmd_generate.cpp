// `diffusiond generate`: one-shot txt2img from the command line, PNGs with metadata.
// Thread-safety: runs once on the main thread.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>

#include <unistd.h>

#include "daemon/api/errors.h"
#include "daemon/api/views.h"
#include "daemon/commands.h"
#include "daemon/dtype.h"
#include "daemon/pipeline_params.h"
#include "daemon/png_info.h"
#include "daemon/serve_options.h"
#include "daemon/torch_backend.h"
#include "pipeline/media/png.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img.h"

namespace diffusiond {
namespace {

namespace fs = std::filesystem;

struct GenerateOptions {
  std::string model;
  std::vector<std::string> prompts;
  std::optional<std::string> negative_prompt;  // unset: absent (SDXL: zeros); "" is given
  std::int64_t seed = -1;                      // -1: random
  std::optional<int> steps;                    // unset: the model family's
  std::optional<double> guidance;              // unset: the model family's
  std::vector<int> original_size, crops_coords_top_left, target_size;  // SDXL, "H W" each
  int width = 0, height = 0;                                           // 0: the model's default
  std::string scheduler;
  int n = 1;
  std::string device = "cpu";
  std::string dtype;  // "" = fp16 on CUDA, fp32 on CPU
  DeviceTuningFlags tuning;
  std::string variant;
  std::string dump_dir;
  std::string output = "out.png";
  int png_level = 1;
};

fs::path output_path(const fs::path& out, int index, int count) {
  if (count == 1) return out;
  fs::path p = out;
  return p.replace_filename(out.stem().string() + "-" + std::to_string(index) +
                            out.extension().string());
}

void write_file(const fs::path& path, const std::string& bytes) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) throw std::runtime_error(path.string() + ": cannot write");
}

// What `generate` accepts: wider than the daemon's serving limits (a local, one-shot run).
RequestLimits cli_limits() {
  RequestLimits limits;
  limits.min_side = 8;
  limits.max_side = 16384;
  limits.max_pixels = 16384 * 16384;
  limits.max_steps = 1000;
  limits.max_n = 64;
  limits.max_prompts = 1024;
  limits.max_images_per_job = 64 * 1024;
  limits.max_prompt_chars = 1 << 20;
  limits.max_guidance_scale = 1000;
  return limits;
}

void run_generate(const GenerateOptions& o) {
  const torch::Device device(o.device);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + o.device + ": CUDA is not available in this build");
  }
  const std::string dtype = resolve_dtype(o.dtype, device.is_cuda());
  const ModelFolder folder = resolve_model(o.model, o.variant);
  auto pipe = StableDiffusion::load(folder, device, scalar_type(dtype));
  pipe->set_device_tuning(resolve_device_tuning(o.tuning));

  // The same normalisation as the daemon's: defaults from the model, canonical scheduler.
  GenerateRequest asked;
  asked.prompts = o.prompts;
  asked.negative_prompt = o.negative_prompt;
  asked.n = o.n;
  if (o.steps) asked.steps = *o.steps;
  asked.guidance_scale = o.guidance;
  auto pair = [](const std::vector<int>& v) -> std::optional<SizePair> {
    if (v.empty()) return std::nullopt;
    return SizePair{v.at(0), v.at(1)};
  };
  asked.original_size = pair(o.original_size);
  asked.crops_coords_top_left = pair(o.crops_coords_top_left);
  asked.target_size = pair(o.target_size);
  if (o.seed >= 0) asked.seed = static_cast<std::uint64_t>(o.seed);
  if (o.width > 0) asked.width = o.width;
  if (o.height > 0) asked.height = o.height;
  if (!o.scheduler.empty()) asked.scheduler = o.scheduler;
  const ModelInfo model = model_info(folder);
  const std::vector<SchedulerName>& schedulers = model.schedulers;
  JobRequest request;
  try {
    request = normalise(asked, request_defaults(model), canonical_scheduler_name, cli_limits(),
                        std::random_device{}(), scheduler_names(model));
  } catch (const ServiceError& e) {
    throw std::invalid_argument(e.what());
  }

  std::vector<std::pair<std::string, torch::Tensor>> dumped;
  DumpSink dump;
  if (!o.dump_dir.empty()) {
    dump = [&](const std::string& name, const torch::Tensor& v) { dumped.emplace_back(name, v); };
  }
  auto images = pipe->generate(
      txt2img_params(request),
      [tty = ::isatty(2) == 1](int image, int step, int steps) {
        if (image == 0)
          std::cerr << (tty ? "\r" : "") << "step " << step << "/" << steps << (tty ? "" : "\n")
                    << std::flush;
        return true;
      },
      dump);
  if (::isatty(2) == 1) std::cerr << "\n";
  if (!o.dump_dir.empty()) {
    fs::create_directories(o.dump_dir);
    write_safetensors(fs::path(o.dump_dir) / "intermediates.safetensors", dumped);
    std::cerr << "intermediates: " << (fs::path(o.dump_dir) / "intermediates.safetensors").string()
              << "\n";
  }

  PngContext context;
  context.model_name = fs::is_directory(o.model) ? folder.root.filename().string() : folder.name;
  context.sampler = sampler_display(schedulers, request.scheduler);
  context.device = device.str();
  context.dtype = dtype;
  for (std::size_t k = 0; k < images.size(); ++k) {
    const ImageSpec image = image_spec(request, static_cast<int>(k));
    const fs::path path =
        output_path(o.output, static_cast<int>(k), static_cast<int>(images.size()));
    write_file(path, encode_png_with_metadata(images[k], make_png_info(image, request, context),
                                              o.png_level));
    std::cout << path.string() << "\n";
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  auto* cmd = app.add_subcommand("generate", "Generate images from text prompts into PNG files");
  cmd->add_option("--model,-m", options->model,
                  "Model folder or Hugging Face repo id (offline cache)")
      ->required();
  cmd->add_option("--prompt,-p", options->prompts, "Prompt (repeat for several)")->required();
  cmd->add_option("--negative-prompt", options->negative_prompt,
                  "Negative prompt. Left out, SDXL models condition on zeros; "
                  "--negative-prompt \"\" encodes the empty text");
  cmd->add_option("--seed,-s", options->seed,
                  "Seed of image 0; image k uses seed + k (default: random)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--steps", options->steps,
                  "Denoising steps (default: the model family's: SD 50, SDXL 30, Turbo 1)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--guidance,--cfg", options->guidance,
                  "Classifier-free guidance scale, <= 1 disables (default: the model family's: "
                  "SD 7.5, SDXL 5.0, Turbo 0)");
  cmd->add_option("--original-size", options->original_size,
                  "SDXL micro-conditioning: HEIGHT WIDTH (default: the output size)")
      ->expected(2);
  cmd->add_option("--crops-coords-top-left", options->crops_coords_top_left,
                  "SDXL micro-conditioning: TOP LEFT (default: 0 0)")
      ->expected(2);
  cmd->add_option("--target-size", options->target_size,
                  "SDXL micro-conditioning: HEIGHT WIDTH (default: the output size)")
      ->expected(2);
  cmd->add_option("--width,-W", options->width, "Width in pixels (default: the model's)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--height,-H", options->height, "Height in pixels (default: the model's)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--scheduler", options->scheduler,
                  "Sampler name or A1111 alias (default: the model's)");
  cmd->add_option("-n", options->n, "Images per prompt")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--device", options->device, "cpu or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", options->dtype,
                  "fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  add_device_tuning_options(*cmd, options->tuning);
  cmd->add_option("--variant", options->variant, "Weights variant, e.g. fp16 (*.fp16.safetensors)");
  cmd->add_option("--dump", options->dump_dir,
                  "Write intermediates to DIR/intermediates.safetensors");
  cmd->add_option("--png-compression", options->png_level, "zlib level 0-9")
      ->check(CLI::Range(0, 9))
      ->capture_default_str();
  cmd->add_option("-o,--output", options->output, "Output PNG (several images: OUT-0.png, ...)")
      ->capture_default_str();
  cmd->callback([options] { run_generate(*options); });
}

}  // namespace diffusiond
