// How the process's C heap treats the large temporaries of CPU inference.
// Thread-safety: retain_freed_cpu_memory() may be called from any thread, any number of times.
#pragma once

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

}  // namespace diffusiond
