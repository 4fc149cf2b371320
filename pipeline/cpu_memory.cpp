#include "pipeline/cpu_memory.h"

#include <climits>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace diffusiond {

void retain_freed_cpu_memory() {
  static std::once_flag once;
  std::call_once(once, [] {
#if defined(__GLIBC__)
    mallopt(M_MMAP_MAX, 0);              // every block from the heap, reused after free
    mallopt(M_TRIM_THRESHOLD, INT_MAX);  // keep up to 2 GiB of free heap top mapped
#endif
  });
}

void trim_freed_cpu_memory() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

namespace {
std::mutex& peak_phase_mutex() {
  static std::mutex mu;  // one for the process
  return mu;
}
}  // namespace

CpuPeakPhase::CpuPeakPhase(bool cpu) {
  if (!cpu) return;
  lock_ = std::unique_lock(peak_phase_mutex());
  trim_freed_cpu_memory();  // the phase starts from the live bytes, not the heap's high-water
}

CpuPeakPhase::~CpuPeakPhase() {
  if (!lock_.owns_lock()) return;
  trim_freed_cpu_memory();  // still locked: the next phase starts from a trimmed heap
}

}  // namespace diffusiond
