#include "in_process.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "pipeline/model_family.h"
#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

namespace diffusiond::bench {

using Clock = std::chrono::steady_clock;

InProcessRun run_in_process(const std::string& model_dir, const std::vector<torch::Device>& devices,
                            torch::ScalarType dtype, int threads_per_worker, const WorkSpec& work,
                            int batch, const DeviceTuning& tuning) {
  batch = std::max(1, batch);
  const int workers = static_cast<int>(devices.size());
  if (threads_per_worker > 0) torch::set_num_threads(threads_per_worker);
  const ModelFolder folder = resolve_model(model_dir);
  std::vector<std::unique_ptr<StableDiffusion>> replicas;
  for (const auto& device : devices) {
    replicas.push_back(StableDiffusion::load(folder, device, dtype));
    replicas.back()->set_device_tuning(tuning);
  }
  // The guidance the daemon gives a request that names none: its model family's.
  const double guidance = work.guidance_scale >= 0
                              ? work.guidance_scale
                              : family_defaults(model_family(folder)).guidance_scale;
  // Warm-up (first-call allocations), not measured.
  Txt2ImgParams warm;
  warm.guidance_scale = guidance;
  warm.prompts = {"warm up"};
  warm.steps = 2;
  warm.width = warm.height = work.size;
  warm.scheduler = work.scheduler;
  for (auto& r : replicas) r->generate(warm);

  auto params_of_image = [&work, guidance](int i) {  // image i, as the HTTP clients ask it
    Txt2ImgParams p;
    p.guidance_scale = guidance;
    p.prompts = {bench_prompt(i)};
    p.steps = work.steps;
    p.width = p.height = work.size;
    p.seed = 1000 + i;
    p.scheduler = work.scheduler;
    return p;
  };
  InProcessRun run;
  for (int i = 0; i < work.images; ++i) {
    const Txt2ImgParams p = params_of_image(i);
    const auto t0 = Clock::now();
    replicas[0]->generate(p);
    run.sequential_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::mutex mu;
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = next.fetch_add(batch); i < work.images; i = next.fetch_add(batch)) {
        std::vector<Txt2ImgParams> items;
        for (int k = i; k < std::min(work.images, i + batch); ++k)
          items.push_back(params_of_image(k));
        const auto t0 = Clock::now();
        if (items.size() == 1)
          replicas[w]->generate(items.front());
        else
          replicas[w]->generate_batch(items);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        std::lock_guard lock(mu);
        for (std::size_t k = 0; k < items.size(); ++k)
          run.image_ms.push_back(ms / static_cast<double>(items.size()));
      }
    });
  }
  for (auto& t : threads) t.join();
  run.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  return run;
}

}  // namespace diffusiond::bench
