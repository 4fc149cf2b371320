#include "daemon/cuda_driver.h"

#include <dlfcn.h>

#include <cstddef>
#include <mutex>
#include <type_traits>

namespace diffusiond {

namespace {
// The few driver entry points used, with their C ABI (CUresult is an int, CUdevice an int,
// CUcontext a pointer).
struct DriverApi {
  int (*cuInit)(unsigned) = nullptr;
  int (*cuDeviceGet)(int*, int) = nullptr;
  int (*cuDeviceGetName)(char*, int, int) = nullptr;
  int (*cuDeviceTotalMem)(std::size_t*, int) = nullptr;
  int (*cuMemGetInfo)(std::size_t*, std::size_t*) = nullptr;
  int (*cuCtxGetCurrent)(void**) = nullptr;
  bool ok = false;
};

const DriverApi& driver() {
  static DriverApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
      return fn != nullptr;
    };
    api.ok = get(api.cuInit, "cuInit") && get(api.cuDeviceGet, "cuDeviceGet") &&
             get(api.cuDeviceGetName, "cuDeviceGetName") &&
             get(api.cuDeviceTotalMem, "cuDeviceTotalMem_v2") &&
             get(api.cuMemGetInfo, "cuMemGetInfo_v2") &&
             get(api.cuCtxGetCurrent, "cuCtxGetCurrent") && api.cuInit(0) == 0;
  });
  return api;
}
}  // namespace

std::optional<CudaDeviceInfo> cuda_device_info(int ordinal) {
  const auto& api = driver();
  if (!api.ok) return std::nullopt;
  int device = 0;
  if (api.cuDeviceGet(&device, ordinal) != 0) return std::nullopt;
  CudaDeviceInfo info;
  char name[256] = {};
  if (api.cuDeviceGetName(name, sizeof name - 1, device) == 0) info.name = name;
  std::size_t total = 0;
  if (api.cuDeviceTotalMem(&total, device) == 0)
    info.memory.total_bytes = static_cast<std::int64_t>(total);
  void* context = nullptr;
  std::size_t free_bytes = 0, total_bytes = 0;
  if (api.cuCtxGetCurrent(&context) == 0 && context &&
      api.cuMemGetInfo(&free_bytes, &total_bytes) == 0)
    info.memory.used_bytes = static_cast<std::int64_t>(total_bytes - free_bytes);
  return info;
}

}  // namespace diffusiond
