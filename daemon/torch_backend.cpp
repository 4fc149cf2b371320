#include "daemon/torch_backend.h"

#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
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
#include "pipeline/cpu_memory.h"
#include "pipeline/latent_preview.h"
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

std::unique_ptr<ModelBackend> make_torch_backend(const ModelFolder& model,
                                                 TorchBackendOptions options) {
  ModelSource only = describe_folder(model);
  only.info.is_default = true;
  return make_torch_backend(std::vector<ModelSource>{std::move(only)}, std::move(options));
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
                 std::shared_ptr<FaultInjector> faults, bool pad_cond_uncond,
                 std::shared_ptr<const LoraCatalog> loras)
      : device_(std::move(device)),
        stream_guard_(std::move(stream_guard)),
        model_(std::move(model)),
        description_(std::move(description)),
        faults_(std::move(faults)),
        pad_cond_uncond_(pad_cond_uncond),
        loras_(std::move(loras)) {}

  RgbImage generate_one(const ImageSpec& image, const StepProgress& progress) override {
    const Txt2ImgParams params = params_for(image, 0);
    merge_loras(params.loras, image.loras);
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
    for (std::size_t k = 0; k < batch.size(); ++k) {
      items.push_back(params_for(batch[k], static_cast<int>(k)));
      const auto next = faults_ ? faults_->next(device_.name) : std::nullopt;
      if (next && !fault) fault = next;
    }
    merge_loras(items.front().loras, batch.front().loras);  // one set per batch (batch key)
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

  void set_previews(PreviewSink sink) override { previews_ = std::move(sink); }
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
  PreviewSink previews_;                   // set by the worker; empty: no previews
  std::shared_ptr<FaultInjector> faults_;  // --inject-faults; null = none
  bool pad_cond_uncond_;                   // serve --pad-cond-uncond
  std::shared_ptr<const LoraCatalog> loras_;

  // Image `position` of a generation on this replica: the server's options, its LoRA files,
  // its previews (when it asked for them and the worker installed a sink).
  Txt2ImgParams params_for(const ImageSpec& image, int position) const {
    Txt2ImgParams params = txt2img_params(image);
    params.pad_cond_uncond = pad_cond_uncond_;
    if (previews_ && image.previews) {  // A1111's "Approx cheap" preview, one per interval
      auto last = std::chrono::steady_clock::time_point{};
      params.on_latents = [this, last, position](int, const torch::Tensor& latents) mutable {
        const auto now = std::chrono::steady_clock::now();
        if (last != std::chrono::steady_clock::time_point{} && now - last < kPreviewInterval)
          return;
        last = now;
        previews_(position, cheap_latent_preview(latents[0], model_->is_xl()));
      };
    }
    params.loras = lora_set(image.loras);
    return params;
  }

  // The replica's weights become the task's LoRA set here, on this device thread, before the
  // task (the same set as the previous task costs nothing; none: the exact base weights).
  // Tasks with different LoRA sets never share a UNet batch (the batch key has
  // ImageSpec::loras, names and weights).
  void merge_loras(const std::vector<LoraApplication>& set, const std::vector<LoraRef>& names) {
    try {
      const LoraApplyReport report = model_->apply_loras(set);
      if (report.changed)
        spdlog::info("{}: LoRA set now [{}] ({} weights merged)", device_.name, describe(names),
                     report.merged_weights);
      for (const auto& [file, keys] : report.ignored)
        spdlog::warn(
            "{}: LoRA {}: {} key(s) name no layer of the model and were ignored (first: {})",
            device_.name, file, keys.size(), keys.front());
    } catch (const LoraError& e) {
      throw TaskInputError(e.what());
    } catch (...) {
      rethrow_generation_error(std::current_exception());
    }
  }

  static std::string describe(const std::vector<LoraRef>& loras) {
    std::string s;
    for (const auto& l : loras)
      s += (s.empty() ? "" : ", ") + l.name + ":" + std::to_string(l.weight);
    return s;
  }

  std::vector<LoraApplication> lora_set(const std::vector<LoraRef>& loras) const {
    std::vector<LoraApplication> set;
    for (const LoraRef& lora : loras) {
      const auto path = loras_ ? loras_->find(lora.name) : std::nullopt;
      if (!path) throw TaskInputError("unknown LoRA '" + lora.name + "': not in the LoRA folder");
      set.push_back({*path, lora.weight});
    }
    return set;
  }
};

class TorchBackend final : public ModelBackend {
 public:
  TorchBackend(std::vector<ModelSource> models, TorchBackendOptions options)
      : models_(std::move(models)), options_(std::move(options)) {
    for (auto& m : models_)
      if (m.info.is_default) {
        m.info.is_test_model = options_.is_test_model;
        m.info.notice = options_.notice;
      }
  }

  std::vector<ModelInfo> models() const override {
    std::vector<ModelInfo> out;
    for (const auto& m : models_) out.push_back(m.info);
    return out;
  }

  std::optional<std::string> canonical_scheduler(const std::string& name) const override {
    return canonical_scheduler_name(name);
  }

  std::unique_ptr<ImageGenerator> load_replica(const DeviceSpec& spec, int model) override {
    if (model < 0 || model >= static_cast<int>(models_.size()))
      throw std::out_of_range("no model #" + std::to_string(model));
    const ModelSource& source = models_[static_cast<std::size_t>(model)];
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
    try {
      if (device.is_cpu()) {
        // One CPU replica loads at a time: each module is first built with its own (undrawn,
        // pipeline/skip_init.h) tensors that the file's (in place, shared by the replicas) then
        // replace, and the packing of its convolutions leaves freed blocks behind. What is freed
        // stays in this thread's malloc arena unless trimmed, and each worker thread has its own
        // arena. One at a time + trim: cpu*N peaks near one model's bytes, not N.
        std::lock_guard lock(cpu_load_mu_);
        sd = load_pipeline(source, device, scalar_type(dtype));
        trim_freed_cpu_memory();
      } else {
        sd = load_pipeline(source, device, scalar_type(dtype));
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
    } catch (...) {
      rethrow_generation_error(std::current_exception());  // OOM -> DeviceOutOfMemory
    }
    spdlog::info("{}: loaded {} as {}", spec.name, source.info.name, description);
    return std::make_unique<TorchGenerator>(spec, std::move(guard), std::move(sd), description,
                                            options_.faults, options_.pad_cond_uncond,
                                            options_.loras);
  }

 private:
  std::vector<ModelSource> models_;
  TorchBackendOptions options_;
  std::mutex cpu_load_mu_;  // CPU replicas load one at a time
};

}  // namespace

std::unique_ptr<ModelBackend> make_torch_backend(std::vector<ModelSource> models,
                                                 TorchBackendOptions options) {
  if (models.empty()) throw std::invalid_argument("no model to serve");
  return std::make_unique<TorchBackend>(std::move(models), std::move(options));
}

}  // namespace diffusiond
