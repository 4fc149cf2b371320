// Device name and memory of CUDA devices through the driver API (libcuda.so.1, opened with
// dlopen at first use), so neither the build nor CPU-only machines need CUDA headers or
// libraries. Ordinals follow CUDA_VISIBLE_DEVICES like the runtime's.
// Thread-safety: any thread. used_bytes needs a CUDA context current on the calling thread (a
// device worker's thread after LibTorch ran on it); without one it is 0.
#pragma once

#include <optional>
#include <string>

#include "daemon/image_generator.h"

namespace diffusiond {

struct CudaDeviceInfo {
  std::string name;  // "NVIDIA H100 80GB HBM3"
  DeviceMemory memory;
};

// nullopt when the driver library or the device is not available.
std::optional<CudaDeviceInfo> cuda_device_info(int ordinal);

}  // namespace diffusiond
