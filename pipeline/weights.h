// Strict state-dict loading of a torch::nn::Module from a safetensors file.
// Ref: torch.nn.Module.load_state_dict(strict=True) semantics (missing / unexpected / shape
// mismatch are all errors), reported together in one message naming the file.
// Thread-safety: free functions; the caller must own the module (no concurrent forward()).
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

#include "pipeline/safetensors.h"

namespace diffusiond {

// Every missing, unexpected or mis-shaped key, listed in what() with the file's path.
class WeightsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadWeightsOptions {
  // Keys (in the module or in the file) to skip entirely, e.g.
  // "text_model.embeddings.position_ids".
  std::function<bool(const std::string&)> ignore;
  // Parameters/buffers for which this returns true are kept in float32 whatever `dtype` is
  // (e.g. norms that must stay fp32). Non-floating tensors always keep their own dtype.
  std::function<bool(const std::string&)> keep_fp32;
};

// Sets every parameter and buffer of `module` (recursive names joined with '.') from `file`:
// on the CPU in the file's own dtype the tensor is used in place from the memory map (no copy;
// shared by every replica that opened the same file, see SafetensorsFile::open), else copied
// once from the mapping into its device and dtype. In-place weights are READ-ONLY: whoever
// changes a weight (LoRA merges, ...) must swap in a new tensor (set_data), never write into it.
// Throws WeightsError listing all problems.
void load_weights(torch::nn::Module& module, const SafetensorsFile& file, torch::Device device,
                  torch::ScalarType dtype, const LoadWeightsOptions& options);

// Convenience overload with only an ignore predicate.
void load_weights(torch::nn::Module& module, const SafetensorsFile& file, torch::Device device,
                  torch::ScalarType dtype,
                  const std::function<bool(const std::string&)>& ignore = {});

// The module's state dict (parameters then buffers, recursive names), e.g. to save it.
std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& module);

}  // namespace diffusiond
