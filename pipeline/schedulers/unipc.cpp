// UniPC: the unified predictor-corrector multistep solver, B(h) = expm1(h) ("bh2").
// Ref: diffusers UniPCMultistepScheduler (v0.27.2), solver_type bh1|bh2, predict_x0 true|false,
// solver_order from the config (2 for Stable Diffusion), lower_order_final, disable_corrector.
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: per-step scalars are 0-dim float32 CPU tensors computed with diffusers' torch
// operations in diffusers' order; rhos come from torch::linalg_solve on float32 like theirs.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/multistep_common.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/schedulers/unscaled_input_scheduler.h"

namespace diffusiond {
namespace {

using sched::Prediction;
using torch::Tensor;

constexpr const char* kClassName = "UniPCMultistepScheduler";

// The UniPCMultistepScheduler.__init__ arguments this port honours, with its defaults.
struct UniPcConfig {
  sched::NoiseSchedule schedule;  // betas and alphas_cumprod from the beta keys
  int solver_order = 2;
  Prediction prediction = Prediction::Epsilon;
  bool predict_x0 = true;
  std::string solver_type = "bh2";  // bh1 | bh2
  bool lower_order_final = true;
  std::vector<int> disable_corrector;  // step indices whose corrector is skipped
  bool use_karras_sigmas = false;
  sched::Spacing spacing = sched::Spacing::Linspace;
  int64_t steps_offset = 0;
};

UniPcConfig parse_config(const nlohmann::json& json) {
  sched::SchedulerConfig cfg(json, kClassName);
  UniPcConfig c;
  c.schedule = sched::make_noise_schedule(cfg, sched::BetaDefaults{});  // 1000, 1e-4, 0.02, linear
  c.solver_order = cfg.get_or<int>("solver_order", 2);
  if (c.solver_order < 1) {
    cfg.unsupported("solver_order", std::to_string(c.solver_order), "must be >= 1");
  }
  c.prediction = sched::read_prediction_type(
      cfg, {Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample});
  if (cfg.get_or<bool>("thresholding", false)) {
    cfg.unsupported("thresholding", "true", "dynamic thresholding is for pixel-space models");
  }
  c.predict_x0 = cfg.get_or<bool>("predict_x0", true);
  c.solver_type = cfg.get_or("solver_type", "bh2");
  // Like __init__: the other solver families' names map onto bh2.
  if (c.solver_type == "midpoint" || c.solver_type == "heun" || c.solver_type == "logrho") {
    c.solver_type = "bh2";
  }
  if (c.solver_type != "bh1" && c.solver_type != "bh2") {
    cfg.unsupported("solver_type", "\"" + c.solver_type + "\"", "bh1 or bh2");
  }
  c.lower_order_final = cfg.get_or<bool>("lower_order_final", true);
  c.disable_corrector = cfg.get_or<std::vector<int>>("disable_corrector", {});
  if (cfg.has("solver_p")) {
    cfg.unsupported("solver_p", cfg.json().at("solver_p").dump(), "only null");
  }
  c.use_karras_sigmas = cfg.get_or<bool>("use_karras_sigmas", false);
  c.spacing = sched::read_timestep_spacing(cfg, "linspace");
  c.steps_offset = cfg.get_or<int64_t>("steps_offset", 0);
  return c;
}

// The B(h) coefficients shared by the predictor and the corrector (diffusers builds them the
// same way in both): hh = -h for x0 prediction, h_phi_1 = expm1(hh), B_h, and the right-hand
// side b[0..order) of the order conditions. All 0-dim / 1-dim float32 CPU tensors.
struct BhCoefficients {
  Tensor hh, h_phi_1, b_h;
  std::vector<Tensor> b;
};

BhCoefficients bh_coefficients(const Tensor& h, int order, bool predict_x0,
                               const std::string& solver_type) {
  BhCoefficients c;
  c.hh = predict_x0 ? -h : h;
  c.h_phi_1 = torch::expm1(c.hh);
  Tensor h_phi_k = c.h_phi_1 / c.hh - 1;
  c.b_h = solver_type == "bh1" ? c.hh : torch::expm1(c.hh);
  int64_t factorial_i = 1;
  for (int i = 1; i <= order; ++i) {
    c.b.push_back(h_phi_k * factorial_i / c.b_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / c.hh - 1.0 / static_cast<double>(factorial_i);
  }
  return c;
}

class UniPcMultistepScheduler final : public sched::UnscaledInputScheduler {
 public:
  // Drops the history rows of images that left the batch (Scheduler::keep_rows).
  void keep_rows(const Tensor& rows) override {
    for (auto& m : model_outputs_) select_rows(m, rows);
    select_rows(last_sample_, rows);
  }

  explicit UniPcMultistepScheduler(UniPcConfig cfg)
      : UnscaledInputScheduler(kClassName), cfg_(std::move(cfg)) {}

  void set_timesteps(int num_inference_steps) override;
  std::optional<std::vector<double>> sigmas() const override { return sigma_values_; }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& generator) override;

 private:
  Tensor sigma_at(int index) const { return sigmas_[index]; }  // 0-dim float32 (CPU)
  // model_outputs_[k] from the newest: 0 is the newest.
  const Tensor& recent_output(int k) const { return model_outputs_[model_outputs_.size() - 1 - k]; }
  Tensor convert_model_output(const Tensor& model_output, const Tensor& sample,
                              int step_index) const;
  Tensor predictor_update(const Tensor& sample, int order, int step_index) const;
  Tensor corrector_update(const Tensor& this_model_output, const Tensor& last_sample, int order,
                          int step_index) const;

  UniPcConfig cfg_;
  Tensor sigmas_;  // [N+1] float32, CPU
  std::optional<std::vector<double>> sigma_values_;

  std::vector<Tensor> model_outputs_;  // solver_order slots, oldest first (undefined = None)
  int lower_order_nums_ = 0;
  int this_order_ = 0;
  Tensor last_sample_;  // the sample the last predictor started from (undefined = None)
};

void UniPcMultistepScheduler::set_timesteps(int num_inference_steps) {
  const int64_t num_train = cfg_.schedule.num_train_timesteps;
  std::vector<int64_t> steps = sched::multistep_timesteps(cfg_.spacing, num_inference_steps,
                                                          num_train, num_train, cfg_.steps_offset);

  const std::vector<float> train_sigmas = sched::train_sigmas(cfg_.schedule.alphas_cumprod);
  std::vector<double> sig;  // float64 like numpy, cast to float32 at the end
  if (cfg_.use_karras_sigmas) {
    const std::vector<float> log_sigmas = sched::log_f32(train_sigmas);
    sig = sched::karras_sigmas(train_sigmas.front(), train_sigmas.back(), num_inference_steps);
    steps = sched::rounded_sigma_timesteps(sig, log_sigmas);
    sig.push_back(sig.back());  // UniPC repeats the last karras sigma
  } else {
    std::vector<double> xs(steps.begin(), steps.end());
    std::vector<double> xp(train_sigmas.size());
    for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
    sig = sched::np_interp(xs, xp, sched::to_doubles(train_sigmas));
    sig.push_back(train_sigmas.front());  // the final sigma is sigma(t=0), not 0
  }

  const std::vector<float> sig_f = sched::to_floats(sig);
  sigmas_ = sched::floats_to_tensor(sig_f);
  sigma_values_ = sched::to_doubles(sig_f);
  timesteps_.assign(steps.begin(), steps.end());
  model_outputs_.assign(cfg_.solver_order, Tensor());
  lower_order_nums_ = 0;
  this_order_ = 0;
  last_sample_ = Tensor();
}

// Ref: UniPCMultistepScheduler.convert_model_output: x0 (predict_x0) or epsilon.
Tensor UniPcMultistepScheduler::convert_model_output(const Tensor& model_output,
                                                     const Tensor& sample, int step_index) const {
  auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
  if (cfg_.predict_x0) {
    switch (cfg_.prediction) {
      case Prediction::Epsilon:
        return (sample - sigma_t * model_output) / alpha_t;
      case Prediction::Sample:
        return model_output;
      case Prediction::VPrediction:
        return alpha_t * sample - sigma_t * model_output;
    }
  }
  switch (cfg_.prediction) {
    case Prediction::Epsilon:
      return model_output;
    case Prediction::Sample:
      return (sample - alpha_t * model_output) / sigma_t;
    case Prediction::VPrediction:
      return alpha_t * model_output + sigma_t * sample;
  }
  throw std::logic_error("UniPCMultistepScheduler: unknown prediction type");
}

// Ref: multistep_uni_p_bh_update: UniP of the given order from sigma[i] to sigma[i+1].
Tensor UniPcMultistepScheduler::predictor_update(const Tensor& x, int order, int step_index) const {
  const Tensor& m0 = recent_output(0);
  auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index + 1));
  auto [alpha_s0, sigma_s0] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
  const Tensor lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  const Tensor h = (torch::log(alpha_t) - torch::log(sigma_t)) - lambda_s0;

  std::vector<Tensor> rks;
  std::vector<Tensor> d1s;  // each [B,C,H,W]
  for (int i = 1; i < order; ++i) {
    const Tensor rk = (sched::lambda_from_sigma(sigma_at(step_index - i)) - lambda_s0) / h;
    rks.push_back(rk);
    d1s.push_back((recent_output(i) - m0) / rk);
  }
  rks.push_back(torch::ones({}, torch::kFloat32));
  const BhCoefficients c = bh_coefficients(h, order, cfg_.predict_x0, cfg_.solver_type);

  Tensor pred_res;  // sum_k rhos_p[k] * D1s[k]; undefined when there are none
  if (!d1s.empty()) {
    Tensor rhos_p;
    if (order == 2) {
      rhos_p = torch::full({1}, 0.5, torch::kFloat32);
    } else {
      const Tensor rk_vec = torch::stack(rks);
      std::vector<Tensor> rows;
      for (int i = 1; i < order; ++i) rows.push_back(torch::pow(rk_vec, i - 1).slice(0, 0, -1));
      const Tensor r = torch::stack(rows);
      const Tensor b = torch::stack(c.b).slice(0, 0, -1);
      rhos_p = torch::linalg_solve(r, b);
    }
    const Tensor d1_stack = torch::stack(d1s, 1);  // [B,K,C,H,W]
    pred_res = torch::einsum("k,bkc...->bc...", {rhos_p.to(d1_stack.options()), d1_stack});
  }
  const Tensor& scale_t = cfg_.predict_x0 ? alpha_t : sigma_t;
  Tensor x_t_ = cfg_.predict_x0 ? (sigma_t / sigma_s0) * x - (alpha_t * c.h_phi_1) * m0
                                : (alpha_t / alpha_s0) * x - (sigma_t * c.h_phi_1) * m0;
  Tensor x_t = pred_res.defined() ? x_t_ - (scale_t * c.b_h) * pred_res : x_t_;
  return x_t.to(x.scalar_type());
}

// Ref: multistep_uni_c_bh_update: corrects the sample the last predictor produced, now that the
// model output at it (this_model_output, converted) is known.
Tensor UniPcMultistepScheduler::corrector_update(const Tensor& this_model_output,
                                                 const Tensor& last_sample, int order,
                                                 int step_index) const {
  const Tensor& m0 = recent_output(0);
  const Tensor& x = last_sample;
  auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
  auto [alpha_s0, sigma_s0] = sched::alpha_sigma_from_sigma(sigma_at(step_index - 1));
  const Tensor lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  const Tensor h = (torch::log(alpha_t) - torch::log(sigma_t)) - lambda_s0;

  std::vector<Tensor> rks;
  std::vector<Tensor> d1s;
  for (int i = 1; i < order; ++i) {
    const Tensor rk = (sched::lambda_from_sigma(sigma_at(step_index - (i + 1))) - lambda_s0) / h;
    rks.push_back(rk);
    d1s.push_back((recent_output(i) - m0) / rk);
  }
  rks.push_back(torch::ones({}, torch::kFloat32));
  const BhCoefficients c = bh_coefficients(h, order, cfg_.predict_x0, cfg_.solver_type);

  Tensor rhos_c;
  if (order == 1) {
    rhos_c = torch::full({1}, 0.5, torch::kFloat32);
  } else {
    const Tensor rk_vec = torch::stack(rks);
    std::vector<Tensor> rows;
    for (int i = 1; i <= order; ++i) rows.push_back(torch::pow(rk_vec, i - 1));
    rhos_c = torch::linalg_solve(torch::stack(rows), torch::stack(c.b));
  }
  const Tensor& scale_t = cfg_.predict_x0 ? alpha_t : sigma_t;
  Tensor x_t_ = cfg_.predict_x0 ? (sigma_t / sigma_s0) * x - (alpha_t * c.h_phi_1) * m0
                                : (alpha_t / alpha_s0) * x - (sigma_t * c.h_phi_1) * m0;
  const Tensor d1_t = this_model_output - m0;
  const Tensor rho_last = rhos_c[order - 1];
  Tensor correction;
  if (!d1s.empty()) {
    const Tensor d1_stack = torch::stack(d1s, 1);  // [B,K,C,H,W]
    const Tensor corr_res = torch::einsum(
        "k,bkc...->bc...", {rhos_c.slice(0, 0, order - 1).to(d1_stack.options()), d1_stack});
    correction = corr_res + rho_last * d1_t;
  } else {
    correction = rho_last * d1_t;  // diffusers adds the integer 0 here: no change
  }
  Tensor x_t = x_t_ - (scale_t * c.b_h) * correction;
  return x_t.to(x.scalar_type());
}

Tensor UniPcMultistepScheduler::step(const Tensor& model_output, int step_index,
                                     const Tensor& sample, at::Generator& /*generator*/) {
  check_step(step_index);
  const int n = static_cast<int>(timesteps_.size());
  const bool corrector_disabled =
      std::find(cfg_.disable_corrector.begin(), cfg_.disable_corrector.end(), step_index - 1) !=
      cfg_.disable_corrector.end();
  const bool use_corrector = step_index > 0 && !corrector_disabled && last_sample_.defined();

  const Tensor converted = convert_model_output(model_output, sample, step_index);
  Tensor x = sample;
  if (use_corrector) x = corrector_update(converted, last_sample_, this_order_, step_index);

  for (int i = 0; i + 1 < cfg_.solver_order; ++i) model_outputs_[i] = model_outputs_[i + 1];
  model_outputs_.back() = converted;

  int order =
      cfg_.lower_order_final ? std::min(cfg_.solver_order, n - step_index) : cfg_.solver_order;
  this_order_ = std::min(order, lower_order_nums_ + 1);  // warm-up of the multistep history

  last_sample_ = x;
  Tensor prev_sample = predictor_update(x, this_order_, step_index);
  if (lower_order_nums_ < cfg_.solver_order) ++lower_order_nums_;
  return prev_sample;
}

}  // namespace

std::unique_ptr<Scheduler> make_unipc_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<UniPcMultistepScheduler>(parse_config(cfg));
}

}  // namespace diffusiond
