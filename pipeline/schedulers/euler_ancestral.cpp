// Euler a: ancestral Euler sampling (a deterministic step to sigma_down, then fresh noise scaled
// by sigma_up), AUTOMATIC1111's "Euler a".
// Ref: diffusers EulerAncestralDiscreteScheduler (v0.27.2).
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: the sigma table is a float32 CPU tensor; step() combines 0-dim float32 tensors with
// diffusers' torch operations in its order. The step noise comes from the request's generator
// (Scheduler::step_noise), so the result is reproducible and independent of the device.
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/sigma_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "EulerAncestralDiscreteScheduler";

class EulerAncestralScheduler final : public sched::SigmaScheduler {
 public:
  explicit EulerAncestralScheduler(const nlohmann::json& json) : SigmaScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    sched::BetaDefaults defaults;
    defaults.supports_rescale_zero_snr = true;
    schedule_ = sched::make_noise_schedule(cfg, defaults);
    if (schedule_.rescaled_zero_snr) schedule_.alphas_cumprod[-1] = 1.0 / (1 << 24);
    // As diffusers: prediction_type "sample" is refused by this scheduler.
    prediction_ = sched::read_prediction_type(
        cfg, {sched::Prediction::Epsilon, sched::Prediction::VPrediction});
    spacing_ = sched::read_timestep_spacing(cfg, "linspace");
    steps_offset_ = cfg.get_or<int64_t>("steps_offset", 0);
  }

  void set_timesteps(int num_inference_steps) override {
    if (num_inference_steps < 1) {
      throw std::invalid_argument(std::string(kClass) + ": num_inference_steps must be >= 1");
    }
    timesteps_ = sched::float32_timesteps(spacing_, schedule_.num_train_timesteps,
                                          num_inference_steps, steps_offset_);
    const std::vector<float> train = sched::train_sigmas(schedule_.alphas_cumprod);
    std::vector<float> sigmas =
        sched::to_floats(sched::interpolate_train_sigmas(timesteps_, train));
    sigmas.push_back(0.0f);
    set_sigma_table(sigmas);
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample_in,
              at::Generator& generator) override {
    check_step(step_index);
    Tensor sigma = sigmas_[step_index];
    Tensor sample = sample_in.to(torch::kFloat32);
    Tensor pred_original_sample;
    if (prediction_ == sched::Prediction::Epsilon) {
      pred_original_sample = sample - sigma * model_output;
    } else {  // v_prediction
      pred_original_sample =
          model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + sample / (sigma.pow(2) + 1);
    }
    Tensor sigma_from = sigmas_[step_index];
    Tensor sigma_to = sigmas_[step_index + 1];
    Tensor sigma_up =
        (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
    Tensor sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

    Tensor derivative = (sample - pred_original_sample) / sigma;
    Tensor dt = sigma_down - sigma;
    Tensor prev_sample = sample + derivative * dt;
    Tensor noise = step_noise(model_output, generator);
    prev_sample = prev_sample + noise * sigma_up;
    return prev_sample.to(model_output.scalar_type());
  }

 private:
  sched::NoiseSchedule schedule_;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  int64_t steps_offset_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<EulerAncestralScheduler>(cfg);
}

}  // namespace diffusiond
