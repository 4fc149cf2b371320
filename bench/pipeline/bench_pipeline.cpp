// bench_pipeline: loads one model on one device and times every stage of txt2img:
// tokenize + text encode, each denoising step (UNet + scheduler), VAE decode, PNG encode;
// images/s and peak RSS. Prints a table. Not a test: nothing here asserts on time.
//
//   bench_pipeline --model DIR [--width 256 --height 256 --steps 4 --device cpu --dtype fp32
//                  --batch 1 --runs 1 --scheduler NAME --mixed --cuda-graphs on|off
//                  --channels-last on|off --cudnn-benchmark on|off]
// --mixed: the batch is --batch different requests (own prompt, seed and guidance scale) run
// with generate_batch(), as the daemon batches across requests; else one request of --batch
// images. The three tuning options apply on CUDA only (pipeline/device_tuning.h; graphs on by
// default, as in the daemon): the first run's first step at a shape includes its graph capture,
// so compare the later runs.
#include <CLI/CLI.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

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
  std::string model, device = "cpu", dtype = "fp32", scheduler;
  std::string prompt = "a photograph of an astronaut riding a horse";
  int width = 256, height = 256, steps = 4, batch = 1, runs = 1;
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
  bool mixed = false;
  app.add_flag("--mixed", mixed, "Batch --batch different requests (generate_batch)");
  DeviceTuning tuning;
  std::string graphs = tuning.cuda_graphs ? "on" : "off", channels_last = "off", cudnn = "off";
  const auto on_off = CLI::IsMember({"on", "off"});
  app.add_option("--cuda-graphs", graphs, "CUDA: replay the UNet step from CUDA graphs")
      ->check(on_off)
      ->capture_default_str();
  app.add_option("--channels-last", channels_last, "CUDA: channels_last convolution weights")
      ->check(on_off)
      ->capture_default_str();
  app.add_option("--cudnn-benchmark", cudnn, "CUDA: cudnn.benchmark")
      ->check(on_off)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  tuning.cuda_graphs = graphs == "on";
  tuning.channels_last = channels_last == "on";
  tuning.cudnn_benchmark = cudnn == "on";

  try {
    const torch::Device dev(device);
    std::printf("model %s | %dx%d | %d steps | batch %d | %s %s | torch threads %d | %s\n",
                model.c_str(), width, height, steps, batch, device.c_str(), dtype.c_str(),
                torch::get_num_threads(), dev.is_cuda() ? "CUDA" : cpu_model().c_str());
    auto t0 = Clock::now();
    auto pipe = StableDiffusion::load(resolve_model(model), dev, parse_dtype(dtype));
    pipe->set_profiling(true);
    pipe->set_device_tuning(tuning);
    const double load_s = seconds_since(t0);
    if (dev.is_cuda())
      std::printf("tuning | cuda graphs %s | channels_last %s | cudnn.benchmark %s\n",
                  pipe->graph_stats().enabled ? "on" : "off", channels_last.c_str(), cudnn.c_str());
    std::printf("\n| %-32s | %10s | %-24s |\n|%s|%s|%s|\n", "stage", "value", "unit",
                std::string(34, '-').c_str(), std::string(12, '-').c_str(),
                std::string(26, '-').c_str());
    row("load (all components)", load_s);

    for (int r = 0; r < runs; ++r) {
      Txt2ImgParams params;
      params.prompts = {runs == 1 ? prompt : prompt + ", run " + std::to_string(r)};
      params.num_images_per_prompt = batch;
      params.steps = steps;
      params.width = width;
      params.height = height;
      params.seed = 42;
      params.scheduler = scheduler;
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
      row("throughput" + tag, static_cast<double>(images.size()) / (t.total_s + png_s), "images/s");
    }
    row("peak RSS", peak_rss_mib(), "MiB");
    if (const auto g = pipe->graph_stats(); g.enabled)
      std::printf(
          "cuda graphs | captures %lld | replays %lld | eager %lld | failures %lld | "
          "evictions %lld\n",
          static_cast<long long>(g.captures), static_cast<long long>(g.replays),
          static_cast<long long>(g.eager_runs), static_cast<long long>(g.failures),
          static_cast<long long>(g.evictions));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_pipeline: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
