// Ref: torch.cuda.graphs (CUDAGraph, graph(): warm-up, capture on a side stream, replay) and
// aten/src/ATen/cuda/CUDAGraph.h of LibTorch 2.x. The part under DIFFUSIOND_HAVE_CUDA_GRAPHS is
// compiled only against a CUDA LibTorch (never on the CPU-only development machine).
#include "pipeline/cuda_graph_step.h"

#if DIFFUSIOND_HAVE_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/version.h>

#include <stdexcept>
#include <string>
#endif

namespace diffusiond {

#if DIFFUSIOND_HAVE_CUDA_GRAPHS
namespace {

// Owns the graph and the stream it was captured on (destroyed after the graph: CUDAGraph's
// reset() clears that stream's cuBLAS workspace). Replays on the current stream.
class CudaStepGraph final : public ReplayableGraph {
 public:
  CudaStepGraph(std::unique_ptr<at::cuda::CUDAGraph> graph, cudaStream_t stream,
                torch::Tensor output)
      : graph_(std::move(graph)), stream_(stream) {
    output_ = std::move(output);
  }
  ~CudaStepGraph() override {
    output_ = torch::Tensor();  // back to the graph's pool before the pool goes
    graph_.reset();
    if (stream_) (void)cudaStreamDestroy(stream_);  // released once its work is done
  }
  CudaStepGraph(const CudaStepGraph&) = delete;
  CudaStepGraph& operator=(const CudaStepGraph&) = delete;

  void replay() override { graph_->replay(); }

 private:
  std::unique_ptr<at::cuda::CUDAGraph> graph_;
  cudaStream_t stream_ = nullptr;
};

// After a failure inside a capture: ends a capture still open on `stream` (dropping what it
// recorded) and clears the error the failure left, so the device goes on eagerly.
void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
      status != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    (void)cudaStreamEndCapture(stream, &partial);
    if (partial) (void)cudaGraphDestroy(partial);
  }
  (void)cudaGetLastError();
}

class CudaGraphCapturer final : public GraphCapturer {
 public:
  CudaGraphCapturer(int device_index, int warmups)
      : device_(static_cast<c10::DeviceIndex>(device_index)), warmups_(warmups) {}

  std::unique_ptr<ReplayableGraph> capture(const std::function<torch::Tensor()>& body) override {
    const c10::cuda::CUDAGuard device_guard(device_);
    // Warm-up on the current stream, in order with the work around it: lazy initialisation,
    // cuDNN's algorithm choice (benchmark mode included) and the allocator's first blocks
    // happen here, not in the capture.
    for (int i = 0; i < warmups_; ++i) (void)body();

    cudaStream_t raw = nullptr;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking));
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    torch::Tensor output;
    try {
      const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromExternal(raw, device_);
      // Current until the capture is over, failed or not: capture_end must run on it.
      const c10::cuda::CUDAStreamGuard stream_guard(stream);
      bool begun = false, ended = false;
      try {
        // Nothing runs during a capture: the replay, on the current stream, does the work.
#if TORCH_VERSION_MAJOR >= 2
        graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
#else
        graph->capture_begin({0, 0});  // LibTorch 1.x: its own (global) capture mode
#endif
        begun = true;
        output = body();
        ended = true;
        graph->capture_end();
      } catch (const std::exception&) {
        if (begun && !ended) {
          try {
            graph->capture_end();  // ends the capture and the pool's routing; throws (invalid)
          } catch (const std::exception&) {
          }
        }
        throw;
      }
    } catch (const std::exception& error) {
      const std::string message = error.what();
      abandon_capture(raw);  // should capture_end not have ended it
      output = torch::Tensor();
      graph.reset();
      (void)cudaStreamDestroy(raw);
      throw std::runtime_error(message.substr(0, message.find('\n')));  // no C++ backtrace
    }
    return std::make_unique<CudaStepGraph>(std::move(graph), raw, std::move(output));
  }

 private:
  c10::DeviceIndex device_;
  int warmups_;
};

}  // namespace

bool cuda_graphs_built() {
  return true;
}

std::unique_ptr<GraphCapturer> make_cuda_graph_capturer(int device_index, int warmups) {
  return std::make_unique<CudaGraphCapturer>(device_index, warmups);
}

#else

bool cuda_graphs_built() {
  return false;
}

std::unique_ptr<GraphCapturer> make_cuda_graph_capturer(int, int) {
  return nullptr;
}

#endif

}  // namespace diffusiond
