// The parts the sigma-space samplers share (Euler, Euler a, Heun, LMS): the sigma table that
// ends in 0, init_noise_sigma, scale_model_input, and the training sigmas interpolated at the
// timesteps.
// Ref: the identical methods of diffusers' EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler, HeunDiscreteScheduler and LMSDiscreteScheduler (v0.27.2).
// Owner: as Scheduler: one instance per generation, used by the device worker thread only.
#pragma once

#include <optional>
#include <vector>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/scheduler.h"

namespace diffusiond::sched {

// np.interp(timesteps, arange(T), train_sigmas): the training sigmas at (fractional) timesteps.
std::vector<double> interpolate_train_sigmas(const std::vector<double>& timesteps,
                                             const std::vector<float>& train_sigmas);

class SigmaScheduler : public Scheduler {
 public:
  const std::vector<double>& timesteps() const override { return timesteps_; }
  std::optional<std::vector<double>> sigmas() const override { return sigma_values_; }
  // The largest sigma, or sqrt(max^2 + 1) for linspace/leading spacing (sigma_init_noise).
  double init_noise_sigma() const override;
  // sample / sqrt(sigma^2 + 1), sigma of this step.
  torch::Tensor scale_model_input(const torch::Tensor& sample, int step_index) override;

 protected:
  explicit SigmaScheduler(const char* class_name) : class_name_(class_name) {}
  // sigmas_ ([n + 1] float32 CPU tensor) and sigma_values_ from the float32 table, whose final
  // 0 the caller has appended.
  void set_sigma_table(const std::vector<float>& sigmas);
  void check_step(int step_index) const;  // "<class>: step index ... out of range"

  const char* const class_name_;
  Spacing spacing_ = Spacing::Linspace;
  std::vector<double> timesteps_;
  torch::Tensor sigmas_;  // [n + 1] float32 CPU, ends with 0 (Heun: doubled entries)
  std::vector<double> sigma_values_;
};

}  // namespace diffusiond::sched
