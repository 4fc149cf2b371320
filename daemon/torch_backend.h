// The real ModelBackend: a diffusers folder loaded with pipeline/txt2img.h, one StableDiffusion
// replica per device. No LibTorch types in this header.
// CUDA workers: each replica gets a stream from LibTorch's pool, made current on its worker
// thread (with its device) for the thread's lifetime, through the device-generic c10
// stream/guard API, so the same code builds against CPU-only LibTorch.
// CPU workers: LibTorch's intra-op thread count is process-wide; every CPU worker uses
// `threads_per_worker` (the total divided by the number of workers, see device_spec.h).
// Thread-safety: see ModelBackend.
#pragma once

#include <exception>
#include <memory>
#include <string>

#include "daemon/fault_injection.h"
#include "daemon/image_generator.h"
#include "daemon/serve_options.h"
#include "pipeline/device_tuning.h"
#include "pipeline/model_folder.h"

namespace diffusiond {

struct TorchBackendOptions {
  std::string dtype = "auto";  // auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
  int threads_per_worker = 0;  // intra-op threads for CPU workers; 0 = LibTorch's default
  bool is_test_model = false;  // the bundled random-weight model
  std::string notice;          // shown by /devices and the UI when is_test_model
  int default_steps = 0;       // 0: the model family's (pipeline/model_family.h)
  // A test facility (--inject-faults): the chosen generations fail inside the pipeline with
  // LibTorch's own errors (c10::Error, c10::OutOfMemoryError), as real ones do. null = none.
  std::shared_ptr<FaultInjector> faults;
  DeviceTuning tuning;  // CUDA replicas: graphs, channels_last, cudnn.benchmark
};

// The tuning the flags ask for: the pipeline's defaults (pipeline/device_tuning.h) where a flag
// was not given.
DeviceTuning resolve_device_tuning(const DeviceTuningFlags& flags);

// What a replica throws when the pipeline failed: DeviceOutOfMemory for c10::OutOfMemoryError
// (CUDA's caching allocator; LibTorch >= 1.13), for a c10::Error naming an allocation failure
// (the CPU allocator, cuBLAS/cuDNN, older LibTorch) and for std::bad_alloc; std::runtime_error
// with the message (no C++ backtrace) for any other c10::Error; anything else unchanged.
[[noreturn]] void rethrow_generation_error(std::exception_ptr error);

std::unique_ptr<ModelBackend> make_torch_backend(const ModelFolder& model,
                                                 TorchBackendOptions options);

int cuda_device_count();  // torch::cuda::device_count(); 0 without CUDA

}  // namespace diffusiond
