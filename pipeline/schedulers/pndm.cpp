// PNDM / PLMS: pseudo numerical methods (Runge-Kutta warm-up, then linear multistep).
// Ref: diffusers PNDMScheduler (v0.27.2). SD 1.x ships it with skip_prk_steps=true (PLMS with a
// repeated first timestep); skip_prk_steps=false runs the 12 Runge-Kutta evaluations first.
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: alphas_cumprod and every per-step coefficient are 0-dim float32 CPU tensors combined
// with the same torch operations in the same order as diffusers.
#include <algorithm>
#include <deque>
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/unscaled_input_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "PNDMScheduler";

class PndmScheduler final : public sched::UnscaledInputScheduler {
 public:
  // Drops the history rows of images that left the batch (Scheduler::keep_rows).
  void keep_rows(const Tensor& rows) override {
    for (auto& e : ets_) select_rows(e, rows);
    select_rows(cur_model_output_, rows);
    select_rows(cur_sample_, rows);
  }

  explicit PndmScheduler(const nlohmann::json& json) : UnscaledInputScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    schedule_ = sched::make_noise_schedule(cfg, sched::BetaDefaults{});
    skip_prk_steps_ = cfg.get_or<bool>("skip_prk_steps", false);
    const bool set_alpha_to_one = cfg.get_or<bool>("set_alpha_to_one", false);
    prediction_ = sched::read_prediction_type(
        cfg, {sched::Prediction::Epsilon, sched::Prediction::VPrediction});
    spacing_ = sched::read_timestep_spacing(cfg, "leading");
    steps_offset_ = cfg.get_or<int64_t>("steps_offset", 0);
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
    if (!skip_prk_steps_ && num_inference_steps < 4) {
      throw std::invalid_argument(std::string(kClass) +
                                  ": with skip_prk_steps=false at least 4 steps are needed");
    }
    num_inference_steps_ = num_inference_steps;
    // The spacing in ascending order (diffusers' _timesteps), as int64 values.
    std::vector<double> asc;
    switch (spacing_) {
      case sched::Spacing::Linspace:
        for (double v : sched::np_linspace(0.0, static_cast<double>(T - 1), num_inference_steps)) {
          asc.push_back(sched::np_round(v));
        }
        break;
      case sched::Spacing::Leading:
        asc = sched::leading_timesteps(T, num_inference_steps, steps_offset_);
        std::reverse(asc.begin(), asc.end());
        break;
      case sched::Spacing::Trailing:
        asc = sched::trailing_timesteps(T, num_inference_steps);
        std::reverse(asc.begin(), asc.end());
        break;
    }
    std::vector<int64_t> ts(asc.begin(), asc.end());
    const auto n = static_cast<int64_t>(ts.size());

    prk_timesteps_.clear();
    std::vector<int64_t> plms;
    if (skip_prk_steps_) {
      // concatenate(ts[:-1], ts[-2:-1], ts[-1:])[::-1]: the first (largest) step runs twice.
      std::vector<int64_t> fwd(ts.begin(), ts.end() - 1);
      if (n >= 2) fwd.push_back(ts[n - 2]);
      fwd.push_back(ts[n - 1]);
      plms.assign(fwd.rbegin(), fwd.rend());
    } else {
      // Last four timesteps, each paired with its half-step: [a, a+h, b, b+h, c, c+h, d, d+h];
      // drop the last, double every entry, trim both ends, reverse.
      const int64_t half = T / num_inference_steps / 2;
      std::vector<int64_t> pairs;
      for (int64_t i = n - 4; i < n; ++i) {
        pairs.push_back(ts[i]);
        pairs.push_back(ts[i] + half);
      }
      pairs.pop_back();
      std::vector<int64_t> doubled;
      for (int64_t v : pairs) doubled.insert(doubled.end(), {v, v});
      std::vector<int64_t> trimmed(doubled.begin() + 1, doubled.end() - 1);
      prk_timesteps_.assign(trimmed.rbegin(), trimmed.rend());
      plms.assign(ts.rbegin() + 3, ts.rend());  // ts[:-3][::-1]
    }
    timesteps_.clear();
    for (int64_t v : prk_timesteps_) timesteps_.push_back(static_cast<double>(v));
    for (int64_t v : plms) timesteps_.push_back(static_cast<double>(v));

    ets_.clear();
    counter_ = 0;
    cur_model_output_ = Tensor();
    cur_sample_ = Tensor();
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& /*generator*/) override {
    check_step(step_index);
    const auto timestep = static_cast<int64_t>(timesteps_[static_cast<std::size_t>(step_index)]);
    if (counter_ < static_cast<int64_t>(prk_timesteps_.size()) && !skip_prk_steps_) {
      return step_prk(model_output, timestep, sample);
    }
    return step_plms(model_output, timestep, sample);
  }

 private:
  // Ref: PNDMScheduler.step_prk (4th-order Runge-Kutta, four evaluations per step).
  Tensor step_prk(const Tensor& model_output, int64_t timestep, const Tensor& sample) {
    const int64_t T = schedule_.num_train_timesteps;
    const int64_t diff_to_prev = (counter_ % 2) ? 0 : T / num_inference_steps_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    const int64_t group_timestep = prk_timesteps_[static_cast<std::size_t>(counter_ / 4 * 4)];

    Tensor output = model_output;
    switch (counter_ % 4) {
      case 0:
        cur_model_output_ = model_output * (1.0 / 6);  // 0 + 1/6 * e (adding 0 is exact)
        ets_.push_back(model_output);
        cur_sample_ = sample;
        break;
      case 1:
      case 2:
        cur_model_output_ = cur_model_output_ + model_output * (1.0 / 3);
        break;
      case 3:
        output = cur_model_output_ + model_output * (1.0 / 6);
        cur_model_output_ = Tensor();
        break;
    }
    const Tensor& base = cur_sample_.defined() ? cur_sample_ : sample;
    Tensor prev = prev_sample(base, group_timestep, prev_timestep, output);
    ++counter_;
    return prev;
  }

  // Ref: PNDMScheduler.step_plms (Adams-Bashforth of growing order over the ets history).
  Tensor step_plms(const Tensor& model_output, int64_t timestep, const Tensor& sample) {
    if (!skip_prk_steps_ && ets_.size() < 3) {
      throw std::logic_error(std::string(kClass) + ": PLMS steps need 3 Runge-Kutta steps first");
    }
    const int64_t stride = schedule_.num_train_timesteps / num_inference_steps_;
    int64_t prev_timestep = timestep - stride;
    if (counter_ != 1) {
      while (ets_.size() > 3) ets_.pop_front();
      ets_.push_back(model_output);
    } else {
      // The repeated first timestep: step from t+stride to t again with the averaged output.
      prev_timestep = timestep;
      timestep = timestep + stride;
    }

    Tensor output;
    Tensor x = sample;
    const std::size_t k = ets_.size();
    if (k == 1 && counter_ == 0) {
      output = model_output;
      cur_sample_ = sample;
    } else if (k == 1 && counter_ == 1) {
      output = (model_output + ets_[0]) / 2;
      x = cur_sample_;
      cur_sample_ = Tensor();
    } else if (k == 2) {
      output = (ets_[1] * 3 - ets_[0]) / 2;
    } else if (k == 3) {
      output = (ets_[2] * 23 - ets_[1] * 16 + ets_[0] * 5) / 12;
    } else {
      output = (ets_[3] * 55 - ets_[2] * 59 + ets_[1] * 37 - ets_[0] * 9) * (1.0 / 24);
    }
    Tensor prev = prev_sample(x, timestep, prev_timestep, output);
    ++counter_;
    return prev;
  }

  // Ref: PNDMScheduler._get_prev_sample (formula (9) of the PNDM paper).
  Tensor prev_sample(const Tensor& sample, int64_t timestep, int64_t prev_timestep,
                     Tensor model_output) const {
    const Tensor& ac = schedule_.alphas_cumprod;
    Tensor alpha_prod_t = ac[timestep];
    Tensor alpha_prod_t_prev = prev_timestep >= 0 ? ac[prev_timestep] : final_alpha_cumprod_;
    Tensor beta_prod_t = 1 - alpha_prod_t;
    Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    if (prediction_ == sched::Prediction::VPrediction) {
      model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    }
    Tensor sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    Tensor denom = alpha_prod_t * beta_prod_t_prev.pow(0.5) +
                   (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom;
  }

  sched::NoiseSchedule schedule_;
  bool skip_prk_steps_ = false;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  sched::Spacing spacing_ = sched::Spacing::Leading;
  int64_t steps_offset_ = 0;
  Tensor final_alpha_cumprod_;

  int num_inference_steps_ = 0;
  std::vector<int64_t> prk_timesteps_;
  // Running state of the multistep method.
  std::deque<Tensor> ets_;  // past model outputs, oldest first (at most 4)
  int64_t counter_ = 0;
  Tensor cur_model_output_;  // undefined = diffusers' 0
  Tensor cur_sample_;        // undefined = None
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<PndmScheduler>(cfg);
}

}  // namespace diffusiond
