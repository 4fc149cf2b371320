// Euler: first-order sampler over the k-diffusion sigma schedule (Karras et al. 2022, Alg. 2
// with s_churn = 0, which is how StableDiffusionPipeline runs it).
// Ref: diffusers EulerDiscreteScheduler (v0.27.2): interpolation_type linear|log_linear,
// use_karras_sigmas, sigma_min/sigma_max, timestep_type discrete|continuous.
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: the sigma table is a float32 CPU tensor; step() works on 0-dim float32 tensors with
// diffusers' torch operations in its order. Like diffusers, step() draws one noise tensor from
// the generator per step even though s_churn = 0 leaves it unused, so the generator advances
// identically.
#include <algorithm>
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/sigma_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "EulerDiscreteScheduler";

class EulerScheduler final : public sched::SigmaScheduler {
 public:
  explicit EulerScheduler(const nlohmann::json& json) : SigmaScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    sched::BetaDefaults defaults;
    defaults.supports_rescale_zero_snr = true;
    schedule_ = sched::make_noise_schedule(cfg, defaults);
    if (schedule_.rescaled_zero_snr) {
      // Close to 0 without being 0, so the first sigma stays finite (diffusers does the same).
      schedule_.alphas_cumprod[-1] = 1.0 / (1 << 24);
    }
    prediction_ = sched::read_prediction_type(
        cfg,
        {sched::Prediction::Epsilon, sched::Prediction::VPrediction, sched::Prediction::Sample});
    const std::string interpolation = cfg.get_or("interpolation_type", "linear");
    if (interpolation == "linear") {
      log_linear_ = false;
    } else if (interpolation == "log_linear") {
      log_linear_ = true;
    } else {
      cfg.unsupported("interpolation_type", "\"" + interpolation + "\"", "linear or log_linear");
    }
    use_karras_sigmas_ = cfg.get_or<bool>("use_karras_sigmas", false);
    sigma_min_ = cfg.get_optional_double("sigma_min");
    sigma_max_ = cfg.get_optional_double("sigma_max");
    spacing_ = sched::read_timestep_spacing(cfg, "linspace");
    const std::string timestep_type = cfg.get_or("timestep_type", "discrete");
    if (timestep_type != "discrete" && timestep_type != "continuous") {
      cfg.unsupported("timestep_type", "\"" + timestep_type + "\"", "discrete or continuous");
    }
    continuous_timesteps_ =
        timestep_type == "continuous" && prediction_ == sched::Prediction::VPrediction;
    steps_offset_ = cfg.get_or<int64_t>("steps_offset", 0);
  }

  void set_timesteps(int num_inference_steps) override {
    const int64_t T = schedule_.num_train_timesteps;
    if (num_inference_steps < 1) {
      throw std::invalid_argument(std::string(kClass) + ": num_inference_steps must be >= 1");
    }
    std::vector<double> timesteps =
        sched::float32_timesteps(spacing_, T, num_inference_steps, steps_offset_);
    const std::vector<float> train = sched::train_sigmas(schedule_.alphas_cumprod);
    const std::vector<float> log_sigmas = sched::log_f32(train);

    std::vector<double> sigmas;
    if (!log_linear_) {
      sigmas = sched::interpolate_train_sigmas(timesteps, train);
    } else {
      // torch.linspace(log(sigma_max), log(sigma_min), n + 1).exp(), float32: n + 1 sigmas.
      Tensor s = torch::linspace(static_cast<double>(log_sigmas.back()),
                                 static_cast<double>(log_sigmas.front()), num_inference_steps + 1,
                                 torch::kFloat32)
                     .exp();
      sigmas = sched::to_doubles(sched::tensor_to_floats(s));
    }
    if (use_karras_sigmas_) {
      const double lo = sigma_min_ ? *sigma_min_ : sigmas.back();
      const double hi = sigma_max_ ? *sigma_max_ : sigmas.front();
      sigmas = sched::karras_sigmas(lo, hi, num_inference_steps);
      timesteps.clear();
      for (double s : sigmas) timesteps.push_back(sched::sigma_to_t(s, log_sigmas));
    }
    Tensor sigma_tensor = sched::floats_to_tensor(sched::to_floats(sigmas));
    if (continuous_timesteps_) {
      timesteps = sched::to_doubles(sched::tensor_to_floats(sigma_tensor.log() * 0.25));
    } else {
      timesteps = sched::round_to_float32(timesteps);
    }
    timesteps_ = std::move(timesteps);
    std::vector<float> table = sched::tensor_to_floats(sigma_tensor);
    table.push_back(0.0f);
    set_sigma_table(table);
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample_in,
              at::Generator& generator) override {
    check_step(step_index);
    Tensor sample = sample_in.to(torch::kFloat32);
    Tensor sigma = sigmas_[step_index];
    // s_churn = 0 -> gamma = 0; the noise is drawn anyway (diffusers does) but not used.
    (void)step_noise_on_host(model_output, generator);
    const double gamma = 0.0;
    Tensor sigma_hat = sigma * (gamma + 1);

    Tensor pred_original_sample;
    switch (prediction_) {
      case sched::Prediction::Sample:
        pred_original_sample = model_output;
        break;
      case sched::Prediction::Epsilon:
        pred_original_sample = sample - sigma_hat * model_output;
        break;
      case sched::Prediction::VPrediction:
        pred_original_sample =
            model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + sample / (sigma.pow(2) + 1);
        break;
    }
    Tensor derivative = (sample - pred_original_sample) / sigma_hat;
    Tensor dt = sigmas_[step_index + 1] - sigma_hat;
    Tensor prev_sample = sample + derivative * dt;
    return prev_sample.to(model_output.scalar_type());
  }

 private:
  sched::NoiseSchedule schedule_;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  bool log_linear_ = false;
  bool use_karras_sigmas_ = false;
  std::optional<double> sigma_min_, sigma_max_;
  bool continuous_timesteps_ = false;
  int64_t steps_offset_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<EulerScheduler>(cfg);
}

}  // namespace diffusiond
