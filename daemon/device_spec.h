// Parsing --devices: "auto", "cpu", "cpu*N", "cuda", "cuda:0,cuda:2". Torch-free: the number of
// CUDA devices is passed in (torch_backend.h asks LibTorch).
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

namespace diffusiond {

struct DeviceSpec {
  enum class Kind { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;     // CUDA ordinal; for CPU workers the worker number
  std::string name;  // "cuda:1", "cpu" (one CPU worker) or "cpu:0".."cpu:N-1" (cpu*N)
};

// auto: every CUDA device (cuda_count of them), else one CPU worker. Throws
// std::invalid_argument naming the bad entry (unknown kind, CUDA ordinal out of range,
// duplicates, N < 1, mixing CPU and CUDA workers).
std::vector<DeviceSpec> parse_devices(const std::string& spec, int cuda_count);

// Intra-op threads per worker: total / workers, at least 1 (LibTorch's thread count is
// process-wide, so every CPU worker gets the same share).
int threads_per_worker(int total_threads, int workers);

}  // namespace diffusiond
