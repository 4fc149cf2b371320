// DDIM: denoising diffusion implicit models, deterministic (eta = 0, as StableDiffusionPipeline
// calls it by default).
// Ref: diffusers DDIMScheduler (v0.27.2): set_timesteps, step, _threshold_sample.
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: alphas_cumprod entries and every coefficient are 0-dim float32 CPU tensors combined
// with the same torch operations in the same order as diffusers.
#include <algorithm>
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/unscaled_input_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "DDIMScheduler";

class DdimScheduler final : public sched::UnscaledInputScheduler {
 public:
  explicit DdimScheduler(const nlohmann::json& json) : UnscaledInputScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    sched::BetaDefaults defaults;
    defaults.supports_rescale_zero_snr = true;
    schedule_ = sched::make_noise_schedule(cfg, defaults);
    clip_sample_ = cfg.get_or<bool>("clip_sample", true);
    clip_sample_range_ = cfg.get_or<double>("clip_sample_range", 1.0);
    const bool set_alpha_to_one = cfg.get_or<bool>("set_alpha_to_one", true);
    steps_offset_ = cfg.get_or<int64_t>("steps_offset", 0);
    prediction_ = sched::read_prediction_type(
        cfg,
        {sched::Prediction::Epsilon, sched::Prediction::Sample, sched::Prediction::VPrediction});
    thresholding_ = cfg.get_or<bool>("thresholding", false);
    dynamic_thresholding_ratio_ = cfg.get_or<double>("dynamic_thresholding_ratio", 0.995);
    sample_max_value_ = cfg.get_or<double>("sample_max_value", 1.0);
    spacing_ = sched::read_timestep_spacing(cfg, "leading");
    final_alpha_cumprod_ = set_alpha_to_one ? torch::scalar_tensor(1.0, torch::kFloat32)
                                            : schedule_.alphas_cumprod[0].clone();
  }

  void set_timesteps(int num_inference_steps) override {
    const int64_t T = schedule_.num_train_timesteps;
    if (num_inference_steps < 1 || num_inference_steps > T) {
      throw std::invalid_argument(std::string(kClass) + ": num_inference_steps must be in [1, " +
                                  std::to_string(T) + "], got " +
                                  std::to_string(num_inference_steps));
    }
    num_inference_steps_ = num_inference_steps;
    switch (spacing_) {
      case sched::Spacing::Linspace:
        timesteps_ = sched::linspace_timesteps(T, num_inference_steps);
        for (double& v : timesteps_) v = sched::np_round(v);
        break;
      case sched::Spacing::Leading:
        timesteps_ = sched::leading_timesteps(T, num_inference_steps, steps_offset_);
        break;
      case sched::Spacing::Trailing:
        timesteps_ = sched::trailing_timesteps(T, num_inference_steps);
        break;
    }
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& /*generator: eta = 0 draws no noise*/) override {
    check_step(step_index);
    const auto timestep = static_cast<int64_t>(timesteps_[static_cast<std::size_t>(step_index)]);
    const int64_t prev_timestep = timestep - schedule_.num_train_timesteps / num_inference_steps_;
    const Tensor& ac = schedule_.alphas_cumprod;
    Tensor alpha_prod_t = ac[timestep];
    Tensor alpha_prod_t_prev = prev_timestep >= 0 ? ac[prev_timestep] : final_alpha_cumprod_;
    Tensor beta_prod_t = 1 - alpha_prod_t;

    Tensor pred_original_sample, pred_epsilon;
    switch (prediction_) {
      case sched::Prediction::Epsilon:
        pred_original_sample =
            (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
        pred_epsilon = model_output;
        break;
      case sched::Prediction::Sample:
        pred_original_sample = model_output;
        pred_epsilon =
            (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
        break;
      case sched::Prediction::VPrediction:
        pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
        pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
        break;
    }
    if (thresholding_) {
      pred_original_sample = threshold_sample(pred_original_sample);
    } else if (clip_sample_) {
      pred_original_sample = pred_original_sample.clamp(-clip_sample_range_, clip_sample_range_);
    }

    // eta = 0: std_dev_t = 0 * variance ** 0.5, computed as diffusers does.
    Tensor alpha_prod_t_prev_beta = 1 - alpha_prod_t_prev;
    Tensor variance = alpha_prod_t_prev_beta / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev);
    Tensor std_dev_t = variance.pow(0.5) * kEta;
    Tensor pred_sample_direction =
        (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
    return alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;
  }

 private:
  static constexpr double kEta = 0.0;

  // Ref: DDIMScheduler._threshold_sample (dynamic thresholding, Imagen).
  Tensor threshold_sample(const Tensor& sample) const {
    const auto dtype = sample.scalar_type();
    Tensor x = sample;
    if (dtype != torch::kFloat32 && dtype != torch::kFloat64) x = x.to(torch::kFloat32);
    const auto sizes = x.sizes().vec();
    x = x.reshape({sizes[0], -1});
    Tensor s = torch::quantile(x.abs(), dynamic_thresholding_ratio_, 1);
    s = torch::clamp(s, 1, sample_max_value_).unsqueeze(1);
    x = torch::clamp(x, -s, s) / s;
    return x.reshape(sizes).to(dtype);
  }

  sched::NoiseSchedule schedule_;
  bool clip_sample_ = true;
  double clip_sample_range_ = 1.0;
  int64_t steps_offset_ = 0;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  bool thresholding_ = false;
  double dynamic_thresholding_ratio_ = 0.995;
  double sample_max_value_ = 1.0;
  sched::Spacing spacing_ = sched::Spacing::Leading;
  Tensor final_alpha_cumprod_;

  int num_inference_steps_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<DdimScheduler>(cfg);
}

}  // namespace diffusiond
