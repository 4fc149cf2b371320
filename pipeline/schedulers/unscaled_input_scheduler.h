// The samplers whose model input is the latent itself: init_noise_sigma 1 and a scale_model_input
// that only checks the step (DDIM, PNDM, DPM++ 2M, UniPC, LCM).
// Ref: those methods of diffusers' DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler,
// UniPCMultistepScheduler and LCMScheduler (v0.27.2), identical in all five.
// Owner: as Scheduler: one instance per generation, used by the device worker thread only.
#pragma once

#include <vector>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/scheduler.h"

namespace diffusiond::sched {

class UnscaledInputScheduler : public Scheduler {
 public:
  const std::vector<double>& timesteps() const override { return timesteps_; }
  double init_noise_sigma() const override { return 1.0; }
  torch::Tensor scale_model_input(const torch::Tensor& sample, int step_index) override {
    check_step(step_index);
    return sample;
  }

 protected:
  explicit UnscaledInputScheduler(const char* class_name) : class_name_(class_name) {}
  void check_step(int step_index) const {  // "<class>: step index ... out of range"
    check_step_index(class_name_, step_index, timesteps_.size());
  }

  const char* const class_name_;
  std::vector<double> timesteps_;  // what set_timesteps() chose, one per model evaluation
};

}  // namespace diffusiond::sched
