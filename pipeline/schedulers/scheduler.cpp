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
  torch::Tensor noise = step_noise_on_host(like, generator);
  if (!like.is_cuda()) return noise.to(like.device());
  // Pinned + non_blocking: the copy is queued on the current stream; LibTorch's caching host
  // allocator keeps the pinned block until the copy has run.
  return noise.pin_memory().to(like.device(), /*non_blocking=*/true);
}

void Scheduler::select_rows(torch::Tensor& t, const torch::Tensor& rows) {
  if (t.defined() && t.dim() > 0) t = t.index_select(0, rows.to(t.device()));
}

torch::Tensor Scheduler::step_noise_on_host(const torch::Tensor& like,
                                            at::Generator& generator) const {
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
  return noise;
}

}  // namespace diffusiond
