// How the process's C heap treats the large temporaries of CPU inference.
// Thread-safety: every function may be called from any thread, any number of times;
// CpuPeakPhase is one object per phase, on the thread that runs it.
#pragma once

#include <mutex>

namespace diffusiond {

// Process-wide, once (glibc only; a no-op elsewhere): freed heap memory stays in the process for
// the next allocation instead of going back to the kernel. By default glibc serves every block
// above its mmap threshold (at most 32 MiB) with a fresh mmap() and unmaps it on free, and it
// trims the heap's free top; the next call then takes a page fault and a kernel zero-fill for
// every 4 KiB page again. A CPU UNet call allocates gigabytes that way: oneDNN reorders each
// convolution's weights into a fresh buffer on every call (59 MB for a 1280-channel 3x3 conv)
// and the VAE's full-resolution activations are 32-64 MB each. Keeping the memory removes that
// system time (about a tenth of the CPU time of an SD 1.5 image at 256², bench/RESULTS.md).
// The cost: the heap's high-water mark stays resident after a generation (the peak does not
// grow). The loaders call this when they load a model on the CPU.
void retain_freed_cpu_memory();

// Returns the C heap's free memory of every arena to the kernel now (glibc's malloc_trim; a
// no-op elsewhere): after a CPU model's load, the freshly initialised weights its modules were
// built with, freed when the file's replaced them, would otherwise stay resident (every thread
// has its own arena, and retain_freed_cpu_memory keeps freed blocks).
void trim_freed_cpu_memory();

// One CPU phase with a large transient at a time in the process, started from a trimmed heap and
// its freed heap handed back when it ends. The VAE decode is the peak of a CPU generation: its
// full-resolution activations (about 0.3 GiB at 256², one image, SD 1.5, with the row slabs of
// packed_conv.h; the UNet's step needs under half of that). With `serve --devices cpu*N` the N
// replicas share one model's weights, but N decodes at once would each add their peak, and,
// since retain_freed_cpu_memory keeps freed blocks in the thread's own malloc arena, N decodes
// one after another would still leave N peaks resident. So a phase holds a process-wide lock
// while it runs (another worker's decode waits for it; UNet steps do not) and trims the heap
// when it starts and when it ends: it adds its transient to the live bytes rather than to the
// heap's high-water mark (the UNet loop's freed blocks, too fragmented for the decode's large
// ones), and the next phase starts from the weights, whichever thread runs it. The cost is the
// first touch of the decode's memory per image and of the next UNet loop's (bench/RESULTS.md).
// Owner: the pipeline that runs the phase, on its worker thread; `cpu` false (a CUDA device)
// makes it a no-op.
class CpuPeakPhase {
 public:
  explicit CpuPeakPhase(bool cpu);
  ~CpuPeakPhase();
  CpuPeakPhase(const CpuPeakPhase&) = delete;
  CpuPeakPhase& operator=(const CpuPeakPhase&) = delete;

 private:
  std::unique_lock<std::mutex> lock_;  // empty when not on the CPU
};

}  // namespace diffusiond
