// Heun: second-order sampler (Karras et al. 2022, Alg. 2 without churn). Every step except the
// last takes two model evaluations: an Euler step to sigma_next, then a correction with the
// average of both derivatives; timesteps() therefore repeats every timestep after the first.
// Ref: diffusers HeunDiscreteScheduler (v0.27.2).
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: the (repeated) sigma table is a float32 CPU tensor; step() combines 0-dim float32
// tensors with diffusers' torch operations in its order.
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/sigma_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "HeunDiscreteScheduler";

class HeunScheduler final : public sched::SigmaScheduler {
 public:
  // Drops the history rows of images that left the batch (Scheduler::keep_rows).
  void keep_rows(const Tensor& rows) override {
    select_rows(prev_derivative_, rows);  // dt_ is 0-dim: shared by every row
    select_rows(first_sample_, rows);
  }

  explicit HeunScheduler(const nlohmann::json& json) : SigmaScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    sched::BetaDefaults defaults;  // Heun's own defaults are SD's betas
    defaults.beta_start = 0.00085;
    defaults.beta_end = 0.012;
    defaults.supports_exp = true;
    schedule_ = sched::make_noise_schedule(cfg, defaults);
    prediction_ = sched::read_prediction_type(
        cfg,
        {sched::Prediction::Epsilon, sched::Prediction::VPrediction, sched::Prediction::Sample});
    use_karras_sigmas_ = cfg.get_or<bool>("use_karras_sigmas", false);
    // Not __init__ arguments of this class, but read from the config when present
    // (hasattr(self.config, "sigma_min") in _convert_to_karras).
    sigma_min_ = cfg.get_optional_double("sigma_min");
    sigma_max_ = cfg.get_optional_double("sigma_max");
    clip_sample_ = cfg.get_or<bool>("clip_sample", false);
    clip_sample_range_ = cfg.get_or<double>("clip_sample_range", 1.0);
    spacing_ = sched::read_timestep_spacing(cfg, "linspace");
    steps_offset_ = cfg.get_or<int64_t>("steps_offset", 0);
  }

  void set_timesteps(int num_inference_steps) override {
    if (num_inference_steps < 1) {
      throw std::invalid_argument(std::string(kClass) + ": num_inference_steps must be >= 1");
    }
    std::vector<double> ts = sched::float32_timesteps(spacing_, schedule_.num_train_timesteps,
                                                      num_inference_steps, steps_offset_);
    const std::vector<float> train = sched::train_sigmas(schedule_.alphas_cumprod);
    std::vector<double> sigmas = sched::interpolate_train_sigmas(ts, train);
    if (use_karras_sigmas_) {
      const double lo = sigma_min_ ? *sigma_min_ : sigmas.back();
      const double hi = sigma_max_ ? *sigma_max_ : sigmas.front();
      sigmas = sched::karras_sigmas(lo, hi, num_inference_steps);
      const std::vector<float> log_sigmas = sched::log_f32(train);
      ts.clear();  // float64, as diffusers keeps them here
      for (double s : sigmas) ts.push_back(sched::sigma_to_t(s, log_sigmas));
    }
    std::vector<float> base = sched::to_floats(sigmas);
    base.push_back(0.0f);
    // [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] and [t0, t1, t1, ..., t_{n-1}, t_{n-1}].
    std::vector<float> doubled{base.front()};
    for (std::size_t i = 1; i + 1 < base.size(); ++i)
      doubled.insert(doubled.end(), {base[i], base[i]});
    doubled.push_back(base.back());
    timesteps_.assign(1, ts.front());
    for (std::size_t i = 1; i < ts.size(); ++i) timesteps_.insert(timesteps_.end(), {ts[i], ts[i]});
    set_sigma_table(doubled);  // 2n float32 entries, ends with 0
    prev_derivative_ = Tensor();
    dt_ = Tensor();
    first_sample_ = Tensor();
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample_in,
              at::Generator& /*generator*/) override {
    check_step(step_index);
    const bool first_order = !dt_.defined();
    if (!first_order && step_index == 0) {
      throw std::logic_error(std::string(kClass) + ": second-order step at step_index 0");
    }
    Tensor sigma = first_order ? sigmas_[step_index] : sigmas_[step_index - 1];
    Tensor sigma_next = first_order ? sigmas_[step_index + 1] : sigmas_[step_index];
    Tensor sigma_hat = sigma * 1;  // gamma = 0
    Tensor sigma_input = first_order ? sigma_hat : sigma_next;

    Tensor pred_original_sample;
    switch (prediction_) {
      case sched::Prediction::Epsilon:
        pred_original_sample = sample_in - sigma_input * model_output;
        break;
      case sched::Prediction::VPrediction:
        pred_original_sample = model_output * (-sigma_input / (sigma_input.pow(2) + 1).pow(0.5)) +
                               sample_in / (sigma_input.pow(2) + 1);
        break;
      case sched::Prediction::Sample:
        pred_original_sample = model_output;
        break;
    }
    if (clip_sample_) {
      pred_original_sample = pred_original_sample.clamp(-clip_sample_range_, clip_sample_range_);
    }

    Tensor derivative, dt, sample;
    if (first_order) {
      derivative = (sample_in - pred_original_sample) / sigma_hat;
      dt = sigma_next - sigma_hat;
      prev_derivative_ = derivative;
      dt_ = dt;
      first_sample_ = sample_in;
      sample = sample_in;
    } else {
      derivative = (sample_in - pred_original_sample) / sigma_next;
      derivative = (prev_derivative_ + derivative) / 2;
      dt = dt_;
      sample = first_sample_;
      prev_derivative_ = Tensor();
      dt_ = Tensor();
      first_sample_ = Tensor();
    }
    return sample + derivative * dt;
  }

 private:
  sched::NoiseSchedule schedule_;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  bool use_karras_sigmas_ = false;
  std::optional<double> sigma_min_, sigma_max_;
  bool clip_sample_ = false;
  double clip_sample_range_ = 1.0;
  int64_t steps_offset_ = 0;
  // State between the two evaluations of one step (undefined = first-order state).
  Tensor prev_derivative_, dt_, first_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_heun_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<HeunScheduler>(cfg);
}

}  // namespace diffusiond
