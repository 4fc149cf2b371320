// bench_pipeline: loads one model on one device and times every stage of txt2img:
// tokenize + text encode, each denoising step (UNet + scheduler), VAE decode, PNG encode;
// images/s and peak RSS. Prints a table. Not a test: nothing here asserts on time.
//
//   bench_pipeline --model DIR [--width 256 --height 256 --steps 4 --device cpu --dtype fp32
//                  --batch 1[,2,...] --runs 1 --scheduler NAME --guidance G --mixed
//                  --cuda-graphs on|off|both --channels-last on|off --cudnn-benchmark on|off
//                  --threads N --trace FILE --cpu-slabs on|off --save PREFIX]
// --mixed: the batch is --batch different requests (own prompt, seed and guidance scale) run
// with generate_batch(), as the daemon batches across requests; else one request of --batch
// images. The tuning options apply on CUDA only (pipeline/device_tuning.h; graphs on by
// default, as in the daemon): the first run at a shape includes its graph capture, so compare
// the later runs. A list of batches and/or --cuda-graphs both run every combination on the one
// loaded model and end with one "sweep |" line each (the last run's figures).
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
#include <limits>
#include <memory>
#include <thread>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "pipeline/attention_ops.h"
#include "pipeline/cpu_thread_env.h"
#include "pipeline/media/png.h"
#include "pipeline/model_family.h"
#include "pipeline/model_folder.h"
#include "pipeline/packed_conv.h"
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
  diffusiond::restart_with_cpu_thread_env(argv);  // as the daemon runs
  CLI::App app{"diffusiond pipeline benchmark"};
  std::string model, device = "cpu", dtype = "fp32", scheduler, trace;
  std::string prompt = "a photograph of an astronaut riding a horse";
  int width = 256, height = 256, steps = 4, runs = 1;
  std::vector<int> batches = {1};
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", model, "Model folder or HF repo id")->required();
  app.add_option("--width", width)->capture_default_str();
  app.add_option("--height", height)->capture_default_str();
  app.add_option("--steps", steps)->capture_default_str();
  app.add_option("--device", device)->capture_default_str();
  app.add_option("--dtype", dtype)
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  app.add_option("--batch", batches,
                 "Images per call (one UNet batch); a list (1,2,4,8) runs each in turn")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  app.add_option("--runs", runs, "Timed runs (each with a fresh prompt: no cache hits)")
      ->capture_default_str();
  app.add_option("--scheduler", scheduler, "Sampler (default: the model's)");
  double guidance = -1;
  app.add_option("--guidance", guidance,
                 "Guidance scale, <= 1: no classifier-free guidance (default: the model "
                 "family's: SD 7.5, SDXL 5.0, Turbo 0)");
  app.add_option("--prompt", prompt)->capture_default_str();
  app.add_option("--threads", threads,
                 "LibTorch intra-op threads (default: the cores, as `diffusiond serve`; "
                 "0: LibTorch's own default)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--trace", trace, "Write a Chrome trace of the timed runs' ops to this file");
  bool mixed = false;
  app.add_flag("--mixed", mixed, "Batch --batch different requests (generate_batch)");
  DeviceTuning tuning;
  std::string graphs = tuning.cuda_graphs ? "on" : "off", channels_last = "off", cudnn = "off";
  const auto on_off = CLI::IsMember({"on", "off"});
  app.add_option("--cuda-graphs", graphs,
                 "CUDA: replay the UNet step from CUDA graphs; both = off then on, per batch")
      ->check(CLI::IsMember({"on", "off", "both"}))
      ->capture_default_str();
  app.add_option("--channels-last", channels_last, "CUDA: channels_last convolution weights")
      ->check(on_off)
      ->capture_default_str();
  app.add_option("--cudnn-benchmark", cudnn, "CUDA: cudnn.benchmark")
      ->check(on_off)
      ->capture_default_str();
  std::string slabs = "on", save;
  app.add_option("--save", save, "Write the last run's images as PREFIX-N.png (to compare runs)");
  app.add_option("--cpu-slabs", slabs,
                 "CPU: large convolutions in row slabs and attention scores in bands of query "
                 "rows (the same bits; off: whole tensors, as before, to compare peak RSS; conv, "
                 "attention: only that one)")
      ->check(CLI::IsMember({"on", "off", "conv", "attention"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  tuning.channels_last = channels_last == "on";
  tuning.cudnn_benchmark = cudnn == "on";
  constexpr int64_t never = std::numeric_limits<int64_t>::max();
  if (slabs == "off" || slabs == "attention")
    set_conv_row_slab_policy({never, conv_row_slab_policy().band_bytes});
  if (slabs == "off" || slabs == "conv") set_attention_scores_band_bytes(never);
  std::vector<bool> graph_modes;
  if (graphs != "on") graph_modes.push_back(false);
  if (graphs != "off") graph_modes.push_back(true);

  try {
    if (threads > 0) torch::set_num_threads(threads);
    const torch::Device dev(device);
    std::string batch_list;
    for (int b : batches) batch_list += (batch_list.empty() ? "" : ",") + std::to_string(b);
    std::printf("model %s | %dx%d | %d steps | batch %s | %s %s | torch threads %d | %s\n",
                model.c_str(), width, height, steps, batch_list.c_str(), device.c_str(),
                dtype.c_str(), torch::get_num_threads(),
                dev.is_cuda() ? "CUDA" : cpu_model().c_str());
    auto t0 = Clock::now();
    const ModelFolder folder = resolve_model(model);
    if (guidance < 0) guidance = family_defaults(model_family(folder)).guidance_scale;
    auto pipe = StableDiffusion::load(folder, dev, parse_dtype(dtype));
    pipe->set_profiling(true);
    const double load_s = seconds_since(t0);
    std::printf("family %s | sampler %s | guidance %g\n", family_name(model_family(folder)).c_str(),
                scheduler.empty() ? pipe->default_scheduler().c_str() : scheduler.c_str(),
                guidance);
    if (dev.is_cuda())
      std::printf("tuning | cuda graphs %s | channels_last %s | cudnn.benchmark %s\n",
                  graphs.c_str(), channels_last.c_str(), cudnn.c_str());
    std::printf("\n| %-32s | %10s | %-24s |\n|%s|%s|%s|\n", "stage", "value", "unit",
                std::string(34, '-').c_str(), std::string(12, '-').c_str(),
                std::string(26, '-').c_str());
    row("load (all components)", load_s);

    std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
    if (!trace.empty()) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(trace);
    const bool sweep = batches.size() > 1 || graph_modes.size() > 1;
    std::vector<std::string> summary;
    for (int batch : batches) {
      for (bool graphed : graph_modes) {
        tuning.cuda_graphs = graphed;
        pipe->set_device_tuning(tuning);                     // a fresh graph cache: run 0 captures
        const bool replaying = pipe->graph_stats().enabled;  // graphs on, on a CUDA device
        const std::string config =
            sweep ? " b" + std::to_string(batch) + (replaying ? " graphs" : " eager") : "";
        double last_step_s = 0, last_ips = 0;
        for (int r = 0; r < runs; ++r) {
          Txt2ImgParams params;
          params.prompts = {runs == 1 ? prompt : prompt + ", run " + std::to_string(r)};
          params.num_images_per_prompt = batch;
          params.steps = steps;
          params.width = width;
          params.height = height;
          params.seed = 42;
          params.scheduler = scheduler;
          params.guidance_scale = guidance;
          const CpuTime cpu_start = process_cpu();
          std::vector<RgbImage> images;
          if (mixed && batch > 1) {
            std::vector<Txt2ImgParams> items;
            for (int k = 0; k < batch; ++k) {
              Txt2ImgParams item = params;
              item.num_images_per_prompt = 1;
              item.prompts = {params.prompts.front() + ", variation " + std::to_string(k)};
              item.seed = 42 + 1000 * static_cast<std::uint64_t>(k);
              // Per-row guidance (CFG batches on), unless the run has no CFG at all.
              item.guidance_scale = guidance - 0.5 * k;
              if (item.guidance_scale <= 1) item.guidance_scale = guidance;
              items.push_back(std::move(item));
            }
            for (auto& image : pipe->generate_batch(items).images)
              images.push_back(std::move(*image));
          } else {
            images = pipe->generate(params);
          }
          const CpuTime cpu_end = process_cpu();
          const GenerationTimings t = pipe->last_timings();

          auto png_start = Clock::now();
          std::size_t png_bytes = 0;
          for (const auto& image : images)
            png_bytes += encode_png(image, {{"parameters", prompt}}).size();
          const double png_s = seconds_since(png_start);
          for (std::size_t k = 0; !save.empty() && r + 1 == runs && k < images.size(); ++k) {
            std::ofstream(save + "-" + std::to_string(k) + ".png", std::ios::binary)
                << encode_png(images[k]);
          }

          const std::string tag = config + (runs == 1 ? "" : " [run " + std::to_string(r) + "]");
          row("tokenize + text encode" + tag, t.text_encode_s);
          double steps_sum = 0;
          for (std::size_t i = 0; i < t.step_s.size(); ++i) {
            if (!sweep)
              row("step " + std::to_string(i + 1) + " (UNet + scheduler)" + tag, t.step_s[i]);
            steps_sum += t.step_s[i];
          }
          last_step_s = steps_sum / static_cast<double>(std::max<std::size_t>(1, t.step_s.size()));
          last_ips = static_cast<double>(images.size()) / (t.total_s + png_s);
          row("all steps" + tag, steps_sum);
          row("mean step" + tag, last_step_s);
          row("VAE decode" + tag, t.vae_decode_s);
          row("PNG encode (level 1)" + tag, png_s, "s (" + std::to_string(png_bytes) + " bytes)");
          row("total (generate + PNG)" + tag, t.total_s + png_s);
          char sys_note[64];
          std::snprintf(sys_note, sizeof sys_note, "s (of which sys %.3f)",
                        cpu_end.sys_s - cpu_start.sys_s);
          row("generate CPU time (user+sys)" + tag,
              cpu_end.user_s - cpu_start.user_s + cpu_end.sys_s - cpu_start.sys_s, sys_note);
          row("throughput" + tag, last_ips, "images/s");
        }
        const auto g = pipe->graph_stats();
        char line[256];
        std::snprintf(line, sizeof line,
                      "sweep | batch %d | %s | mean step %.2f ms | %.2f images/s | captures %lld "
                      "| failures %lld (last of %d runs)",
                      batch, replaying ? "graphs" : "eager", last_step_s * 1e3, last_ips,
                      static_cast<long long>(g.captures), static_cast<long long>(g.failures), runs);
        summary.emplace_back(line);
      }
    }
    profile.reset();  // writes the trace
    row("peak RSS", peak_rss_mib(), "MiB");
    std::printf("\n");
    for (const auto& line : summary) std::printf("%s\n", line.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_pipeline: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
