// bench_serve: serving throughput and latency of `diffusiond serve` (default --devices cpu*2,
// tiny model) under N concurrent HTTP clients, against the same images made in-process.
// Not a test: prints a Markdown table for bench/RESULTS.md.
//
//   bench_serve [--clients 8] [--images 32] [--steps 10] [--size 64] [--devices cpu*2]
//               [--threads T] [--model DIR] [--bin diffusiond] [--scheduler pndm|""]
//               [--guidance G] [--max-batch B] [--batch-wait-ms W] [--cuda-graphs on|off]
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <numeric>
#include <thread>

#include <torch/cuda.h>

#include "daemon/device_spec.h"
#include "in_process.h"
#include "pipeline/cpu_thread_env.h"
#include "pipeline/media/posix_fs.h"
#include "serve_clients.h"
#include "tests/support/daemon_process.h"

using namespace diffusiond;
using namespace diffusiond::bench;

namespace {

// The replicas `diffusiond serve --devices SPEC` runs (the daemon's own parser), as torch devices.
std::vector<torch::Device> devices_of(const std::string& spec) {
  std::vector<torch::Device> out;
  for (const DeviceSpec& d : parse_devices(spec, static_cast<int>(torch::cuda::device_count()))) {
    if (d.kind == DeviceSpec::Kind::cuda)
      out.emplace_back(torch::kCUDA, static_cast<c10::DeviceIndex>(d.index));
    else
      out.emplace_back(torch::kCPU);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  diffusiond::restart_with_cpu_thread_env(argv);  // the in-process side as the daemon runs
  CLI::App app{"bench_serve: diffusiond serving throughput vs the in-process pipeline"};
  int clients = 8, threads = 0;
  WorkSpec work;
  std::string devices = "cpu*2", dtype = "auto";
  std::string model = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1";
  std::string bin = DIFFUSIOND_EXE;
  app.add_option("--clients", clients, "Concurrent HTTP clients");
  app.add_option("--images", work.images, "Images in total (one per job)");
  app.add_option("--steps", work.steps, "Denoising steps per image");
  app.add_option("--size", work.size, "Width and height");
  app.add_option("--scheduler", work.scheduler, "Sampler (\"\": the model's own)")
      ->capture_default_str();
  app.add_option("--guidance", work.guidance_scale,
                 "Guidance scale (default: the model family's, as the daemon's)");
  app.add_option("--devices", devices, "diffusiond --devices");
  app.add_option("--threads", threads,
                 "diffusiond --threads (total intra-op threads; 0 = all cores)");
  app.add_option("--dtype", dtype, "diffusiond --dtype: auto (fp16 on CUDA), fp32, fp16");
  app.add_option("--model", model, "Model folder");
  app.add_option("--bin", bin, "diffusiond executable");
  int max_batch = 0, batch_wait_ms = 0;
  app.add_option("--max-batch", max_batch,
                 "diffusiond --max-batch (0: its auto default); the in-process run batches alike");
  app.add_option("--batch-wait-ms", batch_wait_ms, "diffusiond --batch-wait-ms");
  std::string cuda_graphs = "on";
  app.add_option("--cuda-graphs", cuda_graphs,
                 "diffusiond --cuda-graphs; the in-process replicas alike (CUDA only)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  DeviceTuning tuning;
  tuning.cuda_graphs = cuda_graphs == "on";

  const std::vector<torch::Device> replicas = devices_of(devices);
  const int workers = static_cast<int>(replicas.size());
  const bool on_cuda = replicas.front().is_cuda();
  const torch::ScalarType scalar_type =
      dtype == "fp16" || (dtype == "auto" && on_cuda) ? torch::kHalf : torch::kFloat32;
  const int total_threads =
      threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int per_worker = threads_per_worker(total_threads, workers);

  // 1. The daemon under N clients.
  const auto data_dir =
      std::filesystem::temp_directory_path() / ("bench-serve-" + std::to_string(::getpid()));
  remove_tree(data_dir);
  setenv("DIFFUSIOND_BIN", bin.c_str(), 1);
  std::vector<std::string> args = {"--devices", devices, "--log-level", "warn"};
  if (threads > 0) args.insert(args.end(), {"--threads", std::to_string(threads)});
  if (dtype != "auto") args.insert(args.end(), {"--dtype", dtype});
  args.insert(args.end(), {"--max-batch", std::to_string(max_batch), "--batch-wait-ms",
                           std::to_string(batch_wait_ms), "--cuda-graphs", cuda_graphs});
  // The batch the daemon's workers use (its auto default: 4 on CUDA, 1 on the CPU).
  const int batch = max_batch > 0 ? max_batch : (on_cuda ? 4 : 1);
  ClientRun served;
  {
    testing::DaemonProcess daemon(data_dir, args, model);
    // Warm-up job (first-call allocations), not measured.
    WorkSpec warm = work;
    warm.images = workers;
    warm.steps = 2;
    run_clients(daemon.port(), workers, warm);
    served = run_clients(daemon.port(), clients, work);
  }
  remove_tree(data_dir);

  // 2. The same images in-process: one replica per worker thread, same thread split.
  const InProcessRun local =
      run_in_process(model, replicas, scalar_type, per_worker, work, batch, tuning);

  std::map<std::string, int> per_device;
  for (const auto& d : served.devices) ++per_device[d];
  std::string spread;
  for (const auto& [d, n] : per_device)
    spread += (spread.empty() ? "" : ", ") + d + ": " + std::to_string(n);

  const int done = static_cast<int>(served.end_to_end_ms.size());
  const double served_ips = done / served.wall_s;
  const double local_ips = work.images / local.wall_s;
  std::printf(
      "\nbench_serve: %d images (%dx%d, %d steps, %s), %d clients, --devices %s, max batch %d, "
      "%s, %d intra-op thread(s) per worker, %u cores, CUDA graphs %s\n\n",
      work.images, work.size, work.size, work.steps,
      work.scheduler.empty() ? "the model's sampler" : work.scheduler.c_str(), clients,
      devices.c_str(), batch, scalar_type == torch::kHalf ? "fp16" : "fp32", per_worker,
      std::thread::hardware_concurrency(), cuda_graphs.c_str());
  const double e2e_p50 = percentile(served.end_to_end_ms, 50);
  const double seq = mean(local.sequential_ms);
  std::printf("| measure | daemon (HTTP) | in-process pipeline |\n|---|---|---|\n");
  std::printf("| images done / failed | %d / %d | %d / 0 |\n", done, served.failures, work.images);
  std::printf("| images per device | %s | |\n", spread.c_str());
  std::printf(
      "| throughput, %d workers | %.2f images/s | %.2f images/s (%d replicas in parallel) |\n",
      workers, served_ips, local_ips, workers);
  std::printf("| submit latency p50 / p99 (POST -> 202) | %.1f / %.1f ms | |\n",
              percentile(served.submit_ms, 50), percentile(served.submit_ms, 99));
  std::printf("| queue wait p50 / p99 | %.0f / %.0f ms | |\n", percentile(served.queue_wait_ms, 50),
              percentile(served.queue_wait_ms, 99));
  std::printf(
      "| end-to-end per image p50 / p99 (POST -> done event) | %.0f / %.0f ms | %.0f ms (one image "
      "at a time) |\n",
      e2e_p50, percentile(served.end_to_end_ms, 99), seq);
  std::printf(
      "| time per image on a busy device, mean | %.1f ms (started -> finished, incl. PNG) | %.1f "
      "ms (parallel run) |\n",
      mean(served.device_ms), mean(local.image_ms));
  std::printf("| wall time | %.2f s | %.2f s |\n", served.wall_s, local.wall_s);
  std::printf(
      "\nthroughput daemon / in-process: %.2f; device time per image daemon - in-process: %+.1f ms",
      served_ips / local_ips, mean(served.device_ms) - mean(local.image_ms));
  if (clients == 1)
    std::printf("; end-to-end p50 - one-at-a-time pipeline: %+.1f ms", e2e_p50 - seq);
  std::printf("\n");
  return served.failures == 0 ? 0 : 1;
}
