// CUDA graphs for the denoising step, the device half: warm-up, capture and replay of one UNet
// evaluation with at::cuda::CUDAGraph (LibTorch 2.x). Compiled only when the LibTorch found has
// CUDA and DIFFUSIOND_CUDA_GRAPHS is ON (pipeline/CMakeLists.txt sets
// DIFFUSIOND_HAVE_CUDA_GRAPHS for this file alone); elsewhere make_cuda_graph_capturer returns
// null and every step runs eagerly.
// Each graph is captured on its own stream into its own private memory pool and replayed on the
// caller's current stream. Own stream: destroying a CUDAGraph clears the cuBLAS workspace of its
// capture stream, which other graphs captured on that stream would still address. Own pool: the
// caching allocator reuses a block only on the stream it was freed on, so graphs on different
// streams could not share a pool anyway, and an evicted graph gives its memory back.
// Thread-safety: a capturer belongs to one replica (its device worker's thread). Captures use
// cudaStreamCaptureModeThreadLocal, so other device workers' threads may go on using CUDA.
#pragma once

#include <memory>

#include "pipeline/step_graphs.h"

namespace diffusiond {

// True when this build can capture CUDA graphs (CUDA LibTorch, DIFFUSIOND_CUDA_GRAPHS ON).
bool cuda_graphs_built();

// A capturer for CUDA device `device_index`; `warmups` eager runs on the current stream before
// each capture. Null when !cuda_graphs_built().
std::unique_ptr<GraphCapturer> make_cuda_graph_capturer(int device_index, int warmups = 1);

}  // namespace diffusiond
