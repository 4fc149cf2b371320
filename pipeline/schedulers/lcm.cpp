// LCM: multistep consistency sampling for latent consistency models (few steps, fresh noise
// injected between steps).
// Ref: diffusers LCMScheduler (v0.27.2): original_inference_steps schedule, the boundary
// condition scalings c_skip/c_out with timestep_scaling, one noise draw per step except the last.
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: per-step scalars are 0-dim float32 CPU tensors computed with diffusers' torch
// operations in diffusers' order; the noise comes from Scheduler::step_noise (diffusers'
// randn_tensor with a CPU generator, one generator per image in step_batch()).
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/schedulers/unscaled_input_scheduler.h"

namespace diffusiond {
namespace {

using sched::Prediction;
using torch::Tensor;

constexpr const char* kClassName = "LCMScheduler";

// The LCMScheduler.__init__ arguments this port honours, with its defaults.
struct LcmConfig {
  sched::NoiseSchedule schedule;  // LCM's defaults: 1000, 0.00085, 0.012, scaled_linear
  int64_t original_inference_steps = 50;
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;
  Prediction prediction = Prediction::Epsilon;
  double timestep_scaling = 10.0;
};

LcmConfig parse_config(const nlohmann::json& json) {
  sched::SchedulerConfig cfg(json, kClassName);
  LcmConfig c;
  sched::BetaDefaults defaults;
  defaults.beta_start = 0.00085;
  defaults.beta_end = 0.012;
  defaults.beta_schedule = "scaled_linear";
  defaults.supports_rescale_zero_snr = true;
  c.schedule = sched::make_noise_schedule(cfg, defaults);
  c.original_inference_steps = cfg.get_or<int64_t>("original_inference_steps", 50);
  if (c.original_inference_steps < 1 ||
      c.original_inference_steps > c.schedule.num_train_timesteps) {
    cfg.unsupported("original_inference_steps", std::to_string(c.original_inference_steps),
                    "must be in [1, num_train_timesteps]");
  }
  c.clip_sample = cfg.get_or<bool>("clip_sample", false);
  c.clip_sample_range = cfg.get_or<double>("clip_sample_range", 1.0);
  c.set_alpha_to_one = cfg.get_or<bool>("set_alpha_to_one", true);
  c.prediction = sched::read_prediction_type(
      cfg, {Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample});
  if (cfg.get_or<bool>("thresholding", false)) {
    cfg.unsupported("thresholding", "true", "dynamic thresholding is for pixel-space models");
  }
  // timestep_spacing and steps_offset are accepted by LCMScheduler but unused by its schedule.
  c.timestep_scaling = cfg.get_or<double>("timestep_scaling", 10.0);
  return c;
}

class LcmScheduler final : public sched::UnscaledInputScheduler {
 public:
  explicit LcmScheduler(LcmConfig cfg) : UnscaledInputScheduler(kClassName), cfg_(std::move(cfg)) {
    alphas_cumprod_ = cfg_.schedule.alphas_cumprod;  // [T] float32
    final_alpha_cumprod_ =
        cfg_.set_alpha_to_one ? torch::ones({}, torch::kFloat32) : alphas_cumprod_[0];
  }

  void set_timesteps(int num_inference_steps) override;

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& generator) override;

 private:
  LcmConfig cfg_;
  Tensor alphas_cumprod_;       // [T] float32
  Tensor final_alpha_cumprod_;  // 0-dim float32
  std::vector<int64_t> steps_;
};

void LcmScheduler::set_timesteps(int num_inference_steps) {
  const int64_t original_steps = cfg_.original_inference_steps;
  if (num_inference_steps < 1 || num_inference_steps > original_steps) {
    throw std::invalid_argument("LCMScheduler: num_inference_steps " +
                                std::to_string(num_inference_steps) + " must be in [1, " +
                                std::to_string(original_steps) + "] (original_inference_steps)");
  }
  // The distillation schedule: every k-th training timestep, k = T // original_steps, newest
  // first; then num_inference_steps of them picked at evenly spaced (floored) indices.
  const int64_t k = cfg_.schedule.num_train_timesteps / original_steps;
  std::vector<int64_t> origin;  // descending
  for (int64_t i = original_steps; i >= 1; --i) origin.push_back(i * k - 1);
  // np.linspace(0, len, num=n, endpoint=False) is i * (len / n); then np.floor.
  const double spacing = static_cast<double>(origin.size()) / num_inference_steps;
  steps_.clear();
  for (int i = 0; i < num_inference_steps; ++i) {
    steps_.push_back(origin[static_cast<size_t>(std::floor(i * spacing))]);
  }
  timesteps_.assign(steps_.begin(), steps_.end());
}

Tensor LcmScheduler::step(const Tensor& model_output, int step_index, const Tensor& sample,
                          at::Generator& generator) {
  sched::check_step_index(kClassName, step_index, steps_.size());
  const int n = static_cast<int>(steps_.size());
  const int64_t t = steps_[step_index];
  const int64_t prev_t = step_index + 1 < n ? steps_[step_index + 1] : t;

  const Tensor alpha_prod_t = alphas_cumprod_[t];
  const Tensor alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
  const Tensor beta_prod_t = 1 - alpha_prod_t;
  const Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;

  // Boundary-condition scalings (get_scalings_for_boundary_condition_discrete), sigma_data 0.5.
  // diffusers multiplies the int64 timestep tensor by the float scaling: a float32 result.
  const double sigma_data = 0.5;
  const Tensor scaled_t = torch::full({}, t, torch::kInt64) * cfg_.timestep_scaling;
  const Tensor denom = scaled_t.pow(2) + sigma_data * sigma_data;
  const Tensor c_skip = denom.reciprocal() * (sigma_data * sigma_data);  // Python's x / tensor
  const Tensor c_out = scaled_t / denom.pow(0.5);

  Tensor x0_pred;
  switch (cfg_.prediction) {
    case Prediction::Epsilon:
      x0_pred = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt();
      break;
    case Prediction::Sample:
      x0_pred = model_output;
      break;
    case Prediction::VPrediction:
      x0_pred = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output;
      break;
  }
  if (cfg_.clip_sample) {
    x0_pred = x0_pred.clamp(-cfg_.clip_sample_range, cfg_.clip_sample_range);
  }

  const Tensor denoised = c_out * x0_pred + c_skip * sample;
  if (step_index == n - 1) return denoised;  // no noise after the last step

  // randn_tensor(model_output.shape, dtype=denoised.dtype) with the CPU generator.
  const Tensor noise = step_noise(denoised, generator);
  return alpha_prod_t_prev.sqrt() * denoised + beta_prod_t_prev.sqrt() * noise;
}

}  // namespace

std::unique_ptr<Scheduler> make_lcm_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<LcmScheduler>(parse_config(cfg));
}

}  // namespace diffusiond
