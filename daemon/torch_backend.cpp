#include "daemon/torch_backend.h"

#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <mutex>

#include "daemon/cuda_driver.h"
#include "daemon/dtype.h"
#include "daemon/pipeline_params.h"
#include "pipeline/media/config_util.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img.h"

// c10::OutOfMemoryError (what CUDA's caching allocator throws) came with LibTorch 1.13.
#if TORCH_VERSION_MAJOR > 1 || (TORCH_VERSION_MAJOR == 1 && TORCH_VERSION_MINOR >= 13)
#define DIFFUSIOND_HAVE_C10_OOM 1
#else
#define DIFFUSIOND_HAVE_C10_OOM 0
#endif

namespace diffusiond {

namespace {
// An allocation failure that LibTorch reports as a plain c10::Error: the CPU allocator
// ("DefaultCPUAllocator: not enough memory", "can't allocate memory"), cuBLAS/cuDNN
// (*_STATUS_ALLOC_FAILED), the CUDA runtime ("out of memory"), LibTorch before 1.13.
bool names_an_allocation_failure(std::string message) {
  std::transform(message.begin(), message.end(), message.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* marker :
       {"out of memory", "not enough memory", "can't allocate memory", "alloc_failed"})
    if (message.find(marker) != std::string::npos) return true;
  return false;
}

// An injected fault (--inject-faults), thrown from inside the pipeline as LibTorch would.
[[noreturn]] void throw_injected(InjectedFault fault, const std::string& device) {
  if (fault == InjectedFault::out_of_memory) {
#if DIFFUSIOND_HAVE_C10_OOM
    TORCH_CHECK_WITH(OutOfMemoryError, false, "out of memory on ", device,
                     " (injected by --inject-faults)");
#else
    TORCH_CHECK(false, "out of memory on ", device, " (injected by --inject-faults)");
#endif
  }
  TORCH_CHECK(false, "generation failed on ", device, " (injected by --inject-faults)");
  throw std::logic_error("unreachable");
}
}  // namespace

void rethrow_generation_error(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
#if DIFFUSIOND_HAVE_C10_OOM
  } catch (const c10::OutOfMemoryError& e) {
    throw DeviceOutOfMemory(e.what_without_backtrace());
#endif
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (names_an_allocation_failure(message)) throw DeviceOutOfMemory(message);
    throw std::runtime_error(message);
  } catch (const std::bad_alloc&) {
    throw DeviceOutOfMemory("host memory exhausted (std::bad_alloc)");
  }
}

DeviceTuning resolve_device_tuning(const DeviceTuningFlags& flags) {
  DeviceTuning t;
  if (!flags.cuda_graphs.empty()) t.cuda_graphs = flags.cuda_graphs == "on";
  if (flags.cuda_graph_cache >= 0) t.cuda_graph_cache = flags.cuda_graph_cache;
  if (!flags.channels_last.empty()) t.channels_last = flags.channels_last == "on";
  if (!flags.cudnn_benchmark.empty()) t.cudnn_benchmark = flags.cudnn_benchmark == "on";
  return t;
}

int cuda_device_count() {
  return static_cast<int>(torch::cuda::device_count());
}

namespace {

DeviceMemory host_memory() {
  DeviceMemory m;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) m.total_bytes = static_cast<std::int64_t>(pages) * page;
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  if (statm >> size >> resident) m.used_bytes = static_cast<std::int64_t>(resident) * page;
  return m;  // used = this process's resident memory (shared by every CPU worker)
}

class TorchGenerator final : public ImageGenerator {
 public:
  TorchGenerator(DeviceSpec device, std::unique_ptr<c10::StreamGuard> stream_guard,
                 std::unique_ptr<StableDiffusion> model, std::string description,
                 std::shared_ptr<FaultInjector> faults)
      : device_(std::move(device)),
        stream_guard_(std::move(stream_guard)),
        model_(std::move(model)),
        description_(std::move(description)),
        faults_(std::move(faults)) {}

  RgbImage generate_one(const ImageSpec& image, const StepProgress& progress) override {
    const Txt2ImgParams params = txt2img_params(image);
    const auto fault = faults_ ? faults_->next(device_.name) : std::nullopt;
    std::vector<RgbImage> images;
    try {
      images = model_->generate(params, [&](int, int step, int steps) {
        if (fault) throw_injected(*fault, device_.name);  // in the first step, as a real one
        return progress(step, steps);
      });
    } catch (const GenerationCancelled&) {
      throw GenerationStopped();
    } catch (...) {
      rethrow_generation_error(std::current_exception());
    }
    if (images.size() != 1)
      throw std::runtime_error("the pipeline returned " + std::to_string(images.size()) +
                               " images for one");
    return std::move(images.front());
  }

  std::vector<std::optional<RgbImage>> generate_batch(const std::vector<ImageSpec>& batch,
                                                      const BatchProgress& progress) override {
    std::vector<Txt2ImgParams> items;
    std::optional<InjectedFault> fault;  // one faulty image fails the batch, as a real fault
    for (const auto& image : batch) {
      items.push_back(txt2img_params(image));
      const auto next = faults_ ? faults_->next(device_.name) : std::nullopt;
      if (next && !fault) fault = next;
    }
    BatchOutcome outcome;
    try {
      outcome = model_->generate_batch(items, [&](int k, int step, int steps) {
        if (fault) throw_injected(*fault, device_.name);
        return progress(k, step, steps);
      });
    } catch (...) {
      rethrow_generation_error(std::current_exception());
    }
    return std::move(outcome.images);
  }

  std::string description() const override { return description_; }

  DeviceMemory memory() const override {
    if (device_.kind == DeviceSpec::Kind::cpu) return host_memory();
    const auto info = cuda_device_info(device_.index);
    return info ? info->memory : DeviceMemory{};
  }

 private:
  DeviceSpec device_;
  std::unique_ptr<c10::StreamGuard> stream_guard_;  // destroyed last: restores the old stream
  std::unique_ptr<StableDiffusion> model_;
  std::string description_;
  std::shared_ptr<FaultInjector> faults_;  // --inject-faults; null = none
};

class TorchBackend final : public ModelBackend {
 public:
  TorchBackend(ModelFolder model, TorchBackendOptions options)
      : model_(std::move(model)), options_(std::move(options)), info_(read_model_info()) {}

  ModelInfo model_info() const override { return info_; }

  std::optional<std::string> canonical_scheduler(const std::string& name) const override {
    return canonical_scheduler_name(name);
  }

  std::unique_ptr<ImageGenerator> load_replica(const DeviceSpec& spec) override {
    const std::string dtype = resolve_dtype(options_.dtype, spec.kind == DeviceSpec::Kind::cuda);
    std::unique_ptr<c10::StreamGuard> guard;
    std::string description;
    torch::Device device(torch::kCPU);
    if (spec.kind == DeviceSpec::Kind::cuda) {
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(spec.index));
      c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
      const c10::Stream stream = cuda.getStreamFromGlobalPool(device, /*isHighPriority=*/false);
      guard = std::make_unique<c10::StreamGuard>(stream);  // device + stream for this thread
      const auto info = cuda_device_info(spec.index);
      description = (info && !info->name.empty() ? info->name : "CUDA device") + " (" + dtype +
                    ", stream " + std::to_string(stream.id());  // ")" after the tuning
    } else {
      if (options_.threads_per_worker > 0) at::set_num_threads(options_.threads_per_worker);
      description = "CPU (" + std::to_string(at::get_num_threads()) + " threads, " + dtype + ")";
    }
    std::unique_ptr<StableDiffusion> sd;
    if (device.is_cpu()) {
      // One CPU replica loads at a time: each module is first built with freshly initialised
      // weights that the file's (in place, shared by the replicas) then replace. Those freed
      // initial weights stay in this thread's malloc arena unless trimmed, and each worker
      // thread has its own arena: without the trim every replica would keep a model-sized
      // transient. One at a time + trim: cpu*N peaks near one model's bytes, not N.
      std::lock_guard lock(cpu_load_mu_);
      sd = StableDiffusion::load(model_, device, scalar_type(dtype));
      ::malloc_trim(0);
    } else {
      sd = StableDiffusion::load(model_, device, scalar_type(dtype));
      const std::string name = spec.name;
      sd->set_device_tuning(options_.tuning,
                            [name](const std::string& m) { spdlog::warn("{}: {}", name, m); });
      const auto& t = options_.tuning;
      description +=
          std::string(", CUDA graphs ") +
          (sd->graph_stats().enabled ? "<=" + std::to_string(t.cuda_graph_cache) : "off") +
          (t.channels_last ? ", channels_last" : "") +
          (t.cudnn_benchmark ? ", cudnn.benchmark" : "") + ")";
    }
    spdlog::info("{}: loaded {} as {}", spec.name, model_.name, description);
    return std::make_unique<TorchGenerator>(spec, std::move(guard), std::move(sd), description,
                                            options_.faults);
  }

 private:
  ModelInfo read_model_info() const {
    ModelInfo info = diffusiond::model_info(model_, options_.default_steps);
    info.is_test_model = options_.is_test_model;
    info.notice = options_.notice;
    return info;
  }

  ModelFolder model_;
  TorchBackendOptions options_;
  ModelInfo info_;
  std::mutex cpu_load_mu_;  // CPU replicas load one at a time
};

}  // namespace

std::unique_ptr<ModelBackend> make_torch_backend(const ModelFolder& model,
                                                 TorchBackendOptions options) {
  return std::make_unique<TorchBackend>(model, std::move(options));
}

}  // namespace diffusiond
