// bench_pipeline: loads one model on one device and times every stage of txt2img:
// tokenize + text encode, each denoising step (UNet + scheduler), VAE decode, PNG encode;
// images/s and peak RSS. Prints a table. Not a test: nothing here asserts on time.
//
//   bench_pipeline --model DIR [--width 256 --height 256 --steps 4 --device cpu --dtype fp32
//                  --batch 1 --runs 1 --scheduler NAME --threads N --trace FILE --mixed]
//
// --mixed: the batch is --batch different requests (own prompt, seed and guidance scale) run
// with generate_batch(), as the daemon batches across requests; else one request of --batch
// images.
// --threads sets LibTorch's intra-op threads, by default one per core as `diffusiond serve` does
// (Debian's LibTorch 1.13 itself defaults to 1, which leaves oneDNN's convolutions on one core);
// --trace writes a Chrome trace of every ATen op of the timed runs (LibTorch's legacy
// profiler), for op-level comparisons against diffusers' torch.profiler tables.
#include <CLI/CLI.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "pipeline/media/png.h"
#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

using namespace diffusiond;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// User + system CPU seconds of the whole process: on a shared machine the wall times move with
// the load, the CPU time much less (both programs of a side-by-side run spin the same way).
struct CpuTime {
  double user_s = 0, sys_s = 0;
};

CpuTime process_cpu() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return {s(usage.ru_utime), s(usage.ru_stime)};
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "fp16") return torch::kFloat16;
  if (s == "bf16") return torch::kBFloat16;
  return torch::kFloat32;
}

void row(const std::string& stage, double value, const std::string& note = "s") {
  std::printf("| %-32s | %10.3f | %-24s |\n", stage.c_str(), value, note.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"diffusiond pipeline benchmark"};
  std::string model, device = "cpu", dtype = "fp32", scheduler, trace;
  std::string prompt = "a photograph of an astronaut riding a horse";
  int width = 256, height = 256, steps = 4, batch = 1, runs = 1;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", model, "Model folder or HF repo id")->required();
  app.add_option("--width", width)->capture_default_str();
  app.add_option("--height", height)->capture_default_str();
  app.add_option("--steps", steps)->capture_default_str();
  app.add_option("--device", device)->capture_default_str();
  app.add_option("--dtype", dtype)
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  app.add_option("--batch", batch, "Images per call (one UNet batch)")->capture_default_str();
  app.add_option("--runs", runs, "Timed runs (each with a fresh prompt: no cache hits)")
      ->capture_default_str();
  app.add_option("--scheduler", scheduler, "Sampler (default: the model's)");
  app.add_option("--prompt", prompt)->capture_default_str();
  app.add_option("--threads", threads,
                 "LibTorch intra-op threads (default: the cores, as `diffusiond serve`; "
                 "0: LibTorch's own default)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--trace", trace, "Write a Chrome trace of the timed runs' ops to this file");
  bool mixed = false;
  app.add_flag("--mixed", mixed, "Batch --batch different requests (generate_batch)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) torch::set_num_threads(threads);
    const torch::Device dev(device);
    std::printf("model %s | %dx%d | %d steps | batch %d | %s %s | torch threads %d | %s\n",
                model.c_str(), width, height, steps, batch, device.c_str(), dtype.c_str(),
                torch::get_num_threads(), dev.is_cuda() ? "CUDA" : cpu_model().c_str());
    auto t0 = Clock::now();
    auto pipe = StableDiffusion::load(resolve_model(model), dev, parse_dtype(dtype));
    pipe->set_profiling(true);
    const double load_s = seconds_since(t0);
    std::printf("\n| %-32s | %10s | %-24s |\n|%s|%s|%s|\n", "stage", "value", "unit",
                std::string(34, '-').c_str(), std::string(12, '-').c_str(),
                std::string(26, '-').c_str());
    row("load (all components)", load_s);

    std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
    if (!trace.empty()) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(trace);
    for (int r = 0; r < runs; ++r) {
      Txt2ImgParams params;
      params.prompts = {runs == 1 ? prompt : prompt + ", run " + std::to_string(r)};
      params.num_images_per_prompt = batch;
      params.steps = steps;
      params.width = width;
      params.height = height;
      params.seed = 42;
      params.scheduler = scheduler;
      const CpuTime cpu_start = process_cpu();
      std::vector<RgbImage> images;
      if (mixed) {
        std::vector<Txt2ImgParams> items;
        for (int k = 0; k < batch; ++k) {
          Txt2ImgParams item = params;
          item.num_images_per_prompt = 1;
          item.prompts = {params.prompts.front() + ", variation " + std::to_string(k)};
          item.seed = 42 + 1000 * static_cast<std::uint64_t>(k);
          item.guidance_scale = 7.5 - 0.5 * k;
          if (item.guidance_scale <= 1) item.guidance_scale = 7.5;
          items.push_back(std::move(item));
        }
        for (auto& image : pipe->generate_batch(items).images) images.push_back(std::move(*image));
      } else {
        images = pipe->generate(params);
      }
      const CpuTime cpu_end = process_cpu();
      const double user_s = cpu_end.user_s - cpu_start.user_s;
      const double sys_s = cpu_end.sys_s - cpu_start.sys_s;
      const GenerationTimings t = pipe->last_timings();

      auto png_start = Clock::now();
      std::size_t png_bytes = 0;
      for (const auto& image : images)
        png_bytes += encode_png(image, {{"parameters", prompt}}).size();
      const double png_s = seconds_since(png_start);

      const std::string tag = runs == 1 ? "" : " [run " + std::to_string(r) + "]";
      row("tokenize + text encode" + tag, t.text_encode_s);
      double steps_sum = 0;
      for (std::size_t i = 0; i < t.step_s.size(); ++i) {
        row("step " + std::to_string(i + 1) + " (UNet + scheduler)" + tag, t.step_s[i]);
        steps_sum += t.step_s[i];
      }
      row("all steps" + tag, steps_sum);
      row("mean step" + tag,
          steps_sum / static_cast<double>(std::max<std::size_t>(1, t.step_s.size())));
      row("VAE decode" + tag, t.vae_decode_s);
      row("PNG encode (level 1)" + tag, png_s, "s (" + std::to_string(png_bytes) + " bytes)");
      row("total (generate + PNG)" + tag, t.total_s + png_s);
      char sys_note[64];
      std::snprintf(sys_note, sizeof sys_note, "s (of which sys %.3f)", sys_s);
      row("generate CPU time (user+sys)" + tag, user_s + sys_s, sys_note);
      row("throughput" + tag, static_cast<double>(images.size()) / (t.total_s + png_s), "images/s");
    }
    profile.reset();  // writes the trace
    row("peak RSS", peak_rss_mib(), "MiB");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_pipeline: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
