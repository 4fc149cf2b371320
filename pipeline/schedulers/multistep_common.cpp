// Ref: diffusers v0.27.2 multistep solvers; see multistep_common.h.
#include "pipeline/schedulers/multistep_common.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace diffusiond::sched {

std::vector<int64_t> multistep_timesteps(Spacing spacing, int num_inference_steps,
                                         int64_t last_timestep, int64_t num_train_timesteps,
                                         int64_t steps_offset) {
  if (num_inference_steps < 1) {
    throw std::invalid_argument("num_inference_steps must be >= 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int n = num_inference_steps;
  std::vector<double> values;  // descending, float64 before the int64 cast
  switch (spacing) {
    case Spacing::Linspace: {
      values = np_linspace(0.0, static_cast<double>(last_timestep - 1), n + 1);
      for (double& v : values) v = np_round(v);
      std::reverse(values.begin(), values.end());
      values.pop_back();
      break;
    }
    case Spacing::Leading: {
      const int64_t ratio = last_timestep / (n + 1);  // Python // on non-negative ints
      for (int64_t i = n; i >= 1; --i) values.push_back(static_cast<double>(i * ratio));
      break;
    }
    case Spacing::Trailing: {
      const double ratio = static_cast<double>(num_train_timesteps) / static_cast<double>(n);
      values = np_arange(static_cast<double>(last_timestep), 0.0, -ratio);
      for (double& v : values) v = np_round(v);
      break;
    }
  }
  std::vector<int64_t> out;
  out.reserve(values.size());
  for (double v : values) {
    auto t = static_cast<int64_t>(v);
    if (spacing == Spacing::Leading) t += steps_offset;
    if (spacing == Spacing::Trailing) t -= 1;
    out.push_back(t);
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> alpha_sigma_from_sigma(const torch::Tensor& sigma) {
  // Python's `1 / x` on a tensor is x.reciprocal() * 1.
  torch::Tensor alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
  torch::Tensor sigma_t = sigma * alpha_t;
  return {alpha_t, sigma_t};
}

torch::Tensor lambda_from_sigma(const torch::Tensor& sigma) {
  auto [alpha_t, sigma_t] = alpha_sigma_from_sigma(sigma);
  return torch::log(alpha_t) - torch::log(sigma_t);
}

std::vector<int64_t> rounded_sigma_timesteps(const std::vector<double>& sigmas,
                                             const std::vector<float>& log_sigmas) {
  std::vector<int64_t> out;
  out.reserve(sigmas.size());
  for (double s : sigmas) out.push_back(static_cast<int64_t>(np_round(sigma_to_t(s, log_sigmas))));
  return out;
}

}  // namespace diffusiond::sched
