// DPM-Solver++(2M): the multistep second-order data-prediction solver.
// Ref: diffusers DPMSolverMultistepScheduler (v0.27.2), with algorithm_type "dpmsolver++" and
// solver_order 2 (what AUTOMATIC1111 calls "DPM++ 2M"; "DPM++ 2M Karras" with karras sigmas).
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
//
// Exactness: every per-step scalar (sigma, alpha_t, lambda, h, ...) is a 0-dim float32 CPU tensor
// computed with the same torch operations, in the same order, as diffusers does, so the step is
// bit-for-bit the Python one on CPU; the schedule (timesteps, karras sigmas) is computed in double
// like numpy does, then rounded to float32 where diffusers casts.
#include <algorithm>
#include <cmath>
#include <limits>
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

constexpr const char* kClassName = "DPMSolverMultistepScheduler";

// The DPMSolverMultistepScheduler.__init__ arguments this port honours, with its defaults.
struct DpmSolverConfig {
  sched::NoiseSchedule schedule;  // betas and alphas_cumprod from the beta keys
  Prediction prediction = Prediction::Epsilon;
  std::string solver_type = "midpoint";  // midpoint | heun
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_karras_sigmas = false;
  bool use_lu_lambdas = false;
  std::string final_sigmas_type = "zero";  // zero | sigma_min
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  std::string variance_type;  // "" (None) | learned | learned_range | ...
  sched::Spacing spacing = sched::Spacing::Linspace;
  int64_t steps_offset = 0;
};

// lambda_min_clipped is -inf by default, which Python's json writes as -Infinity; accept numbers
// and the spellings a converted config may carry ("-inf", "-Infinity").
double read_lambda_min_clipped(const sched::SchedulerConfig& cfg) {
  const double fallback = -std::numeric_limits<double>::infinity();
  if (!cfg.has("lambda_min_clipped")) return fallback;
  const nlohmann::json& v = cfg.json().at("lambda_min_clipped");
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "-inf" || s == "-Infinity") return fallback;
    if (s == "inf" || s == "Infinity") return -fallback;
  }
  cfg.unsupported("lambda_min_clipped", v.dump(), "a number, -inf or -Infinity");
}

DpmSolverConfig parse_config(const nlohmann::json& json, bool karras) {
  sched::SchedulerConfig cfg(json, kClassName);
  DpmSolverConfig c;
  sched::BetaDefaults defaults;  // 1000, 0.0001, 0.02, linear
  defaults.supports_rescale_zero_snr = true;
  c.schedule = sched::make_noise_schedule(cfg, defaults);
  if (c.schedule.rescaled_zero_snr) {
    // As __init__: close to 0 without being 0, so the first sigma is not inf.
    c.schedule.alphas_cumprod[-1] = std::pow(2.0, -24);
  }
  c.prediction = sched::read_prediction_type(
      cfg, {Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample});
  if (cfg.get_or<bool>("thresholding", false)) {
    cfg.unsupported("thresholding", "true", "dynamic thresholding is for pixel-space models");
  }
  c.solver_type = cfg.get_or("solver_type", "midpoint");
  // Like __init__: the other solver families' names map onto midpoint.
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") {
    c.solver_type = "midpoint";
  }
  if (c.solver_type != "midpoint" && c.solver_type != "heun") {
    cfg.unsupported("solver_type", "\"" + c.solver_type + "\"", "midpoint or heun");
  }
  c.lower_order_final = cfg.get_or<bool>("lower_order_final", true);
  c.euler_at_final = cfg.get_or<bool>("euler_at_final", false);
  // The sampler's name decides these, not the model's config: "DPM++ 2M" is algorithm_type
  // dpmsolver++ with solver_order 2 (the config's values of both are not read), and "DPM++ 2M
  // Karras" the same with use_karras_sigmas.
  c.use_karras_sigmas = karras;
  c.use_lu_lambdas = cfg.get_or<bool>("use_lu_lambdas", false);
  c.final_sigmas_type = cfg.get_or("final_sigmas_type", "zero");
  if (c.final_sigmas_type != "zero" && c.final_sigmas_type != "sigma_min") {
    cfg.unsupported("final_sigmas_type", "\"" + c.final_sigmas_type + "\"", "zero or sigma_min");
  }
  c.lambda_min_clipped = read_lambda_min_clipped(cfg);
  c.variance_type = cfg.get_or("variance_type", "");
  c.spacing = sched::read_timestep_spacing(cfg, "linspace");
  c.steps_offset = cfg.get_or<int64_t>("steps_offset", 0);
  return c;
}

class DpmSolverMultistepScheduler final : public sched::UnscaledInputScheduler {
 public:
  // Drops the history rows of images that left the batch (Scheduler::keep_rows).
  void keep_rows(const Tensor& rows) override {
    select_rows(current_x0_, rows);
    select_rows(previous_x0_, rows);
  }

  explicit DpmSolverMultistepScheduler(DpmSolverConfig cfg)
      : UnscaledInputScheduler(kClassName), cfg_(std::move(cfg)) {
    const Tensor& acp = cfg_.schedule.alphas_cumprod;  // [T] float32
    // lambda(t) as __init__ computes it: [T] float32
    lambda_t_ = torch::log(torch::sqrt(acp)) - torch::log(torch::sqrt(1 - acp));
  }

  void set_timesteps(int num_inference_steps) override;
  std::optional<std::vector<double>> sigmas() const override { return sigma_values_; }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& generator) override;

 private:
  Tensor sigma_at(int index) const { return sigmas_[index]; }  // 0-dim float32 (CPU)
  Tensor convert_model_output(Tensor model_output, const Tensor& sample, int step_index) const;
  Tensor first_order_update(const Tensor& x0_pred, const Tensor& sample, int step_index) const;
  Tensor second_order_update(const Tensor& sample, int step_index) const;

  DpmSolverConfig cfg_;
  Tensor lambda_t_;  // [T] float32
  Tensor sigmas_;    // [N+1] float32, CPU
  std::optional<std::vector<double>> sigma_values_;

  Tensor current_x0_;   // the converted model output of this step (m0)
  Tensor previous_x0_;  // the converted model output of the previous step (m1)
  int lower_order_nums_ = 0;
};

void DpmSolverMultistepScheduler::set_timesteps(int num_inference_steps) {
  const int64_t num_train = cfg_.schedule.num_train_timesteps;
  // Clip the schedule where lambda(t) falls under lambda_min_clipped: searchsorted (left) over
  // the increasing flipped lambdas, comparing in float32 as torch does.
  const auto clip = static_cast<float>(cfg_.lambda_min_clipped);
  const std::vector<float> flipped = sched::tensor_to_floats(torch::flip(lambda_t_, {0}));
  const int64_t clipped_idx =
      std::lower_bound(flipped.begin(), flipped.end(), clip) - flipped.begin();
  const int64_t last_timestep = num_train - clipped_idx;

  std::vector<int64_t> steps = sched::multistep_timesteps(
      cfg_.spacing, num_inference_steps, last_timestep, num_train, cfg_.steps_offset);

  const std::vector<float> train_sigmas = sched::train_sigmas(cfg_.schedule.alphas_cumprod);
  const std::vector<float> log_sigmas = sched::log_f32(train_sigmas);
  std::vector<double> sig;  // float64 like numpy, cast to float32 at the end
  if (cfg_.use_karras_sigmas) {
    sig = sched::karras_sigmas(train_sigmas.front(), train_sigmas.back(), num_inference_steps);
    steps = sched::rounded_sigma_timesteps(sig, log_sigmas);
  } else if (cfg_.use_lu_lambdas) {
    // Uniform steps in log sigma (_convert_to_lu with rho = 1), then back to sigmas.
    const double lambda_min = log_sigmas.front();
    const double lambda_max = log_sigmas.back();
    for (double r : sched::np_linspace(0.0, 1.0, num_inference_steps)) {
      sig.push_back(std::exp(lambda_max + r * (lambda_min - lambda_max)));
    }
    steps = sched::rounded_sigma_timesteps(sig, log_sigmas);
  } else {
    std::vector<double> xs(steps.begin(), steps.end());
    std::vector<double> xp(train_sigmas.size());
    for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
    sig = sched::np_interp(xs, xp, sched::to_doubles(train_sigmas));
  }
  sig.push_back(cfg_.final_sigmas_type == "sigma_min" ? train_sigmas.front() : 0.0);

  const std::vector<float> sig_f = sched::to_floats(sig);
  sigmas_ = sched::floats_to_tensor(sig_f);
  sigma_values_ = sched::to_doubles(sig_f);
  timesteps_.assign(steps.begin(), steps.end());
  previous_x0_ = Tensor();
  lower_order_nums_ = 0;
}

// Ref: convert_model_output for dpmsolver++: the model's prediction of x0.
Tensor DpmSolverMultistepScheduler::convert_model_output(Tensor model_output, const Tensor& sample,
                                                         int step_index) const {
  switch (cfg_.prediction) {
    case Prediction::Epsilon: {
      if (cfg_.variance_type == "learned" || cfg_.variance_type == "learned_range") {
        model_output = model_output.slice(1, 0, 3);  // only the mean channels
      }
      auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
      return (sample - sigma_t * model_output) / alpha_t;
    }
    case Prediction::Sample:
      return model_output;
    case Prediction::VPrediction: {
      auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
      return alpha_t * sample - sigma_t * model_output;
    }
  }
  throw std::logic_error("DPMSolverMultistepScheduler: unknown prediction type");
}

// Ref: dpm_solver_first_order_update (dpmsolver++): DDIM in the data-prediction form.
Tensor DpmSolverMultistepScheduler::first_order_update(const Tensor& x0_pred, const Tensor& sample,
                                                       int step_index) const {
  auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index + 1));
  auto [alpha_s, sigma_s] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
  const Tensor lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  const Tensor lambda_s = torch::log(alpha_s) - torch::log(sigma_s);
  const Tensor h = lambda_t - lambda_s;
  return (sigma_t / sigma_s) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * x0_pred;
}

// Ref: multistep_dpm_solver_second_order_update (dpmsolver++), midpoint or heun; uses the x0
// predictions of this step (m0) and the previous one (m1).
Tensor DpmSolverMultistepScheduler::second_order_update(const Tensor& sample,
                                                        int step_index) const {
  auto [alpha_t, sigma_t] = sched::alpha_sigma_from_sigma(sigma_at(step_index + 1));
  auto [alpha_s0, sigma_s0] = sched::alpha_sigma_from_sigma(sigma_at(step_index));
  const Tensor lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  const Tensor lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  const Tensor lambda_s1 = sched::lambda_from_sigma(sigma_at(step_index - 1));

  const Tensor& m0 = current_x0_;
  const Tensor& m1 = previous_x0_;
  const Tensor h = lambda_t - lambda_s0;
  const Tensor h_0 = lambda_s0 - lambda_s1;
  const Tensor r0 = h_0 / h;
  const Tensor& d0 = m0;
  const Tensor d1 = (r0.reciprocal() * 1.0) * (m0 - m1);  // Python: (1.0 / r0) * (m0 - m1)
  const Tensor phi = alpha_t * (torch::exp(-h) - 1.0);
  if (cfg_.solver_type == "midpoint") {
    return (sigma_t / sigma_s0) * sample - phi * d0 - (0.5 * phi) * d1;
  }
  return (sigma_t / sigma_s0) * sample - phi * d0 +
         (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * d1;
}

Tensor DpmSolverMultistepScheduler::step(const Tensor& model_output, int step_index,
                                         const Tensor& sample, at::Generator& /*generator*/) {
  check_step(step_index);
  const int n = static_cast<int>(timesteps_.size());
  // First order on the last step (diffusers' conditions; with final sigma 0 always). The
  // "lower_order_second" case of diffusers only matters for solver_order 3.
  const bool lower_order_final =
      step_index == n - 1 && (cfg_.euler_at_final || (cfg_.lower_order_final && n < 15) ||
                              cfg_.final_sigmas_type == "zero");

  current_x0_ = convert_model_output(model_output, sample, step_index);
  const Tensor sample32 = sample.to(torch::kFloat32);  // upcast like diffusers
  Tensor prev_sample;
  if (lower_order_nums_ < 1 || lower_order_final) {
    prev_sample = first_order_update(current_x0_, sample32, step_index);
  } else {
    prev_sample = second_order_update(sample32, step_index);
  }
  if (lower_order_nums_ < 2) ++lower_order_nums_;
  previous_x0_ = current_x0_;
  return prev_sample.to(current_x0_.scalar_type());
}

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2m_scheduler(const nlohmann::json& cfg, bool karras) {
  return std::make_unique<DpmSolverMultistepScheduler>(parse_config(cfg, karras));
}

}  // namespace diffusiond
