#include "pipeline/schedulers/sigma_scheduler.h"

#include <stdexcept>
#include <string>

namespace diffusiond::sched {

std::vector<double> interpolate_train_sigmas(const std::vector<double>& timesteps,
                                             const std::vector<float>& train_sigmas) {
  std::vector<double> steps(train_sigmas.size());
  for (std::size_t i = 0; i < steps.size(); ++i) steps[i] = static_cast<double>(i);
  return np_interp(timesteps, steps, to_doubles(train_sigmas));
}

double SigmaScheduler::init_noise_sigma() const {
  if (!sigmas_.defined())
    throw std::logic_error(std::string(class_name_) + ": call set_timesteps() first");
  return sigma_init_noise(sigmas_, spacing_);
}

torch::Tensor SigmaScheduler::scale_model_input(const torch::Tensor& sample, int step_index) {
  check_step(step_index);
  return scale_by_sigma(sample, sigmas_[step_index]);
}

void SigmaScheduler::set_sigma_table(const std::vector<float>& sigmas) {
  sigmas_ = floats_to_tensor(sigmas);
  sigma_values_ = to_doubles(sigmas);
}

void SigmaScheduler::check_step(int step_index) const {
  check_step_index(class_name_, step_index, timesteps_.size());
}

}  // namespace diffusiond::sched
