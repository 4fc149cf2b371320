// CUDA graphs for the denoising step, the device-independent half: the cache of captured UNet
// evaluations, keyed by everything that fixes a graph (every input's shape, strides and dtype:
// batch incl. the CFG halves, latent size, text sequence length, SDXL's added conditions), with
// static input buffers, LRU eviction, a once-per-shape fallback to eager when a capture fails,
// and invalidation when the UNet's weights move (a LoRA swaps parameters with set_data: the
// graph would read the old storage). The device half — warm-up, capture on a non-default stream
// into the replica's private memory pool, replay — is behind GraphCapturer; the CUDA one is in
// pipeline/cuda_graph_step.h, tests use a CPU one.
// Owner: one UNetGraphCache per StableDiffusion replica, called from its device worker's thread
// only (as the UNet itself).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipeline/device_tuning.h"
#include "pipeline/unet.h"

namespace diffusiond {

// One evaluation's inputs: sample [B, C, h, w], timestep (0-d or [B]), encoder_hidden_states
// [B, S, hidden], SDXL's added conditions (undefined otherwise).
struct UNetInputs {
  torch::Tensor sample, timestep, embeds;
  UNetAddedConditions added;
};
using UNetEval = std::function<torch::Tensor(const UNetInputs&)>;

class ReplayableGraph {
 public:
  virtual ~ReplayableGraph() = default;
  // Re-runs the captured work on the current stream: reads the static inputs as they are now
  // and rewrites output() in place.
  virtual void replay() = 0;
  // What the captured run of the body returned (memory the graph owns).
  const torch::Tensor& output() const { return output_; }

 protected:
  torch::Tensor output_;
};

// The device half. capture() warms `body` up (runs it eagerly so lazy initialisation and
// cuDNN's algorithm choice happen outside the capture), captures one run of it, and returns the
// graph; it throws (std::exception) when the capture fails, leaving the device usable for eager
// work. body: one UNet evaluation on the static inputs, returning its output.
class GraphCapturer {
 public:
  virtual ~GraphCapturer() = default;
  virtual std::unique_ptr<ReplayableGraph> capture(const std::function<torch::Tensor()>& body) = 0;
};

using WarningSink = std::function<void(const std::string&)>;

class UNetGraphCache {
 public:
  // capacity: graphs kept (>= 1). weights: the UNet's parameters and buffers (their storage
  // addresses are the graphs' validity). warn: told once per shape whose capture failed.
  UNetGraphCache(std::unique_ptr<GraphCapturer> capturer, int capacity,
                 std::vector<torch::Tensor> weights, WarningSink warn);
  ~UNetGraphCache();

  // eager(inputs) by replaying this shape's graph (capturing it first on a miss); eager itself
  // for a shape whose capture failed. The result is a fresh tensor (the graph's static output
  // is copied), equal in every bit to eager(inputs) on the same device.
  torch::Tensor run(const UNetInputs& inputs, const UNetEval& eager);

  void clear();  // drops every graph (the failed shapes stay eager)
  GraphCacheStats stats() const;

  // What identifies a graph: per input (sample, timestep, embeds, text_embeds, time_ids) its
  // dtype, device, sizes and strides; an undefined one is a single -1.
  static std::vector<std::int64_t> key_of(const UNetInputs& inputs);

 private:
  struct Entry;
  std::uint64_t weights_fingerprint() const;
  Entry* find(const std::vector<std::int64_t>& key);
  Entry* capture(const std::vector<std::int64_t>& key, const UNetInputs& inputs,
                 const UNetEval& eager);

  std::unique_ptr<GraphCapturer> capturer_;
  std::size_t capacity_;
  std::vector<torch::Tensor> weights_;
  std::uint64_t fingerprint_ = 0;
  WarningSink warn_;
  std::list<std::unique_ptr<Entry>> lru_;  // most recently used first
  std::map<std::vector<std::int64_t>, std::list<std::unique_ptr<Entry>>::iterator> index_;
  std::set<std::vector<std::int64_t>> failed_;  // shapes that run eagerly
  GraphCacheStats stats_;
};

}  // namespace diffusiond
