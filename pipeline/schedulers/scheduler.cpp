// The Scheduler base-class helpers: batched stepping with one generator per image and the step
// noise draw. Ref: diffusers.utils.torch_utils.randn_tensor.
#include "pipeline/schedulers/scheduler.h"

#include <stdexcept>

namespace diffusiond {

torch::Tensor Scheduler::step_batch(const torch::Tensor& model_output, int step_index,
                                    const torch::Tensor& sample,
                                    std::vector<at::Generator>& generators) {
  if (generators.empty()) throw std::invalid_argument("step_batch: no generator given");
  if (generators.size() == 1) return step(model_output, step_index, sample, generators[0]);
  if (static_cast<int64_t>(generators.size()) != sample.size(0)) {
    throw std::invalid_argument("step_batch: " + std::to_string(generators.size()) +
                                " generators for a batch of " + std::to_string(sample.size(0)));
  }
  struct Reset {
    std::vector<at::Generator>*& slot;
    ~Reset() { slot = nullptr; }
  } reset{row_generators_};
  row_generators_ = &generators;
  return step(model_output, step_index, sample, generators[0]);
}

torch::Tensor Scheduler::step_noise(const torch::Tensor& like, at::Generator& generator) const {
  const auto options = torch::TensorOptions().dtype(like.scalar_type()).device(torch::kCPU);
  torch::Tensor noise;
  if (row_generators_ != nullptr && row_generators_->size() > 1) {
    std::vector<int64_t> row_shape(like.sizes().begin(), like.sizes().end());
    row_shape[0] = 1;
    std::vector<torch::Tensor> rows;
    rows.reserve(row_generators_->size());
    for (auto& g : *row_generators_) rows.push_back(torch::randn(row_shape, g, options));
    noise = torch::cat(rows, 0);
  } else {
    noise = torch::randn(like.sizes(), generator, options);
  }
  return noise.to(like.device());
}

}  // namespace diffusiond
