// LMS: linear multistep sampler (order 4) over the k-diffusion sigma schedule.
// Ref: diffusers LMSDiscreteScheduler (v0.27.2). Its coefficients are integrals of Lagrange basis
// polynomials that diffusers computes with scipy.integrate.quad (QUADPACK QAGS, 21-point
// Gauss-Kronrod first pass); this file evaluates the integrand the same way (float32 torch
// arithmetic on the sigma table) with the same 21-point Gauss-Kronrod rule, bisecting only if the
// error estimate asks for it (it never does for these low-degree polynomials).
// Owner: one instance per generation, used by the device worker thread only (see scheduler.h).
#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <stdexcept>

#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/sigma_scheduler.h"

namespace diffusiond {
namespace {

using torch::Tensor;
constexpr const char* kClass = "LMSDiscreteScheduler";
constexpr int kOrder = 4;

// 21-point Gauss-Kronrod rule on [-1, 1] (positive half; the last node is 0). The even-indexed
// nodes (1, 3, ..., 9) are the 10-point Gauss-Legendre nodes with weights kGauss.
constexpr double kNodes[11] = {0.995657163025808080735527280689003,
                               0.973906528517171720077964012084452,
                               0.930157491355708226001207180059508,
                               0.865063366688984510732096688423493,
                               0.780817726586416897063717578345042,
                               0.679409568299024406234327365114874,
                               0.562757134668604683339000099272694,
                               0.433395394129247190799265943165784,
                               0.294392862701460198131126603103866,
                               0.148874338981631210884826001129720,
                               0.0};
constexpr double kKronrod[11] = {
    0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
    0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
    0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
    0.123491976262065851077958109831074, 0.134709217311473325928054001771707,
    0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
    0.149445554002916905664936468389821};
constexpr double kGauss[5] = {
    0.066671344308688137593568809893332, 0.149451349150580593145776339657697,
    0.219086362515982043995534934228163, 0.269266719309996355091226921569469,
    0.295524224714752870173892994651338};

struct QuadResult {
  double value;
  double error;
};

// One 21-point Gauss-Kronrod pass over [a, b] (a > b allowed), QUADPACK's summation order and
// error estimate.
QuadResult gauss_kronrod_21(const std::function<double(double)>& f, double a, double b) {
  const double centr = 0.5 * (a + b);
  const double hlgth = 0.5 * (b - a);
  const double fc = f(centr);
  double resg = 0.0;
  double resk = kKronrod[10] * fc;
  double resabs = std::fabs(resk);
  double fv1[10], fv2[10];
  auto pair = [&](int node) {
    const double absc = hlgth * kNodes[node];
    fv1[node] = f(centr - absc);
    fv2[node] = f(centr + absc);
    return fv1[node] + fv2[node];
  };
  for (int j = 0; j < 5; ++j) {  // Gauss nodes
    const int node = 2 * j + 1;
    const double fsum = pair(node);
    resg += kGauss[j] * fsum;
    resk += kKronrod[node] * fsum;
    resabs += kKronrod[node] * (std::fabs(fv1[node]) + std::fabs(fv2[node]));
  }
  for (int j = 0; j < 5; ++j) {  // Kronrod-only nodes
    const int node = 2 * j;
    const double fsum = pair(node);
    resk += kKronrod[node] * fsum;
    resabs += kKronrod[node] * (std::fabs(fv1[node]) + std::fabs(fv2[node]));
  }
  const double reskh = resk * 0.5;
  double resasc = kKronrod[10] * std::fabs(fc - reskh);
  for (int j = 0; j < 10; ++j) {
    resasc += kKronrod[j] * (std::fabs(fv1[j] - reskh) + std::fabs(fv2[j] - reskh));
  }
  const double dhlgth = std::fabs(hlgth);
  resasc *= dhlgth;
  resabs *= dhlgth;
  double err = std::fabs((resk - resg) * hlgth);
  if (resasc != 0 && err != 0) err = resasc * std::min(1.0, std::pow(200 * err / resasc, 1.5));
  constexpr double eps = std::numeric_limits<double>::epsilon();
  if (resabs > std::numeric_limits<double>::min() / (50 * eps))
    err = std::max(eps * 50 * resabs, err);
  return {resk * hlgth, err};
}

// scipy.integrate.quad(f, a, b, epsrel=rel_tol): accepts the first pass when its error estimate
// is within tolerance (as QAGS does), otherwise bisects recursively.
double integrate(const std::function<double(double)>& f, double a, double b, double rel_tol,
                 int depth = 0) {
  const QuadResult r = gauss_kronrod_21(f, a, b);
  const double tol = std::max(1.49e-8, rel_tol * std::fabs(r.value));
  if (r.error <= tol || depth >= 30) return r.value;
  const double mid = 0.5 * (a + b);
  return integrate(f, a, mid, rel_tol, depth + 1) + integrate(f, mid, b, rel_tol, depth + 1);
}

class LmsScheduler final : public sched::SigmaScheduler {
 public:
  // Drops the history rows of images that left the batch (Scheduler::keep_rows).
  void keep_rows(const Tensor& rows) override {
    for (auto& d : derivatives_) select_rows(d, rows);
  }

  explicit LmsScheduler(const nlohmann::json& json) : SigmaScheduler(kClass) {
    sched::SchedulerConfig cfg(json, kClass);
    schedule_ = sched::make_noise_schedule(cfg, sched::BetaDefaults{});
    use_karras_sigmas_ = cfg.get_or<bool>("use_karras_sigmas", false);
    prediction_ = sched::read_prediction_type(
        cfg,
        {sched::Prediction::Epsilon, sched::Prediction::VPrediction, sched::Prediction::Sample});
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
    std::vector<double> sigmas = sched::interpolate_train_sigmas(timesteps_, train);
    if (use_karras_sigmas_) {
      sigmas = sched::karras_sigmas(sigmas.back(), sigmas.front(), num_inference_steps);
      const std::vector<float> log_sigmas = sched::log_f32(train);
      timesteps_.clear();  // float64 here, as diffusers keeps them
      for (double s : sigmas) timesteps_.push_back(sched::sigma_to_t(s, log_sigmas));
    }
    sigma_f32_ = sched::to_floats(sigmas);
    sigma_f32_.push_back(0.0f);
    set_sigma_table(sigma_f32_);
    derivatives_.clear();
  }

  Tensor step(const Tensor& model_output, int step_index, const Tensor& sample,
              at::Generator& /*generator*/) override {
    check_step(step_index);
    Tensor sigma = sigmas_[step_index];
    Tensor pred_original_sample;
    switch (prediction_) {
      case sched::Prediction::Epsilon:
        pred_original_sample = sample - sigma * model_output;
        break;
      case sched::Prediction::VPrediction:
        pred_original_sample =
            model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + sample / (sigma.pow(2) + 1);
        break;
      case sched::Prediction::Sample:
        pred_original_sample = model_output;
        break;
    }
    derivatives_.push_back((sample - pred_original_sample) / sigma);
    if (derivatives_.size() > static_cast<std::size_t>(kOrder)) derivatives_.pop_front();

    const int order = std::min(step_index + 1, kOrder);
    // sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives))).
    Tensor total;
    for (int k = 0; k < order; ++k) {
      const double coeff = lms_coefficient(order, step_index, k);
      Tensor term = derivatives_[derivatives_.size() - 1 - static_cast<std::size_t>(k)] * coeff;
      total = total.defined() ? total + term : term;
    }
    return sample + total;
  }

  // Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of node t - current
  // through the nodes sigma_t .. sigma_{t-order+1}. Ref: LMSDiscreteScheduler.get_lms_coefficient.
  double lms_coefficient(int order, int t, int current) const {
    const std::vector<float>& s = sigma_f32_;
    auto basis = [&](double tau) {
      // diffusers evaluates this on float32 tensor elements: tau is rounded to float32 first.
      float prod = 1.0f;
      for (int k = 0; k < order; ++k) {
        if (k == current) continue;
        const float num = static_cast<float>(tau) - s[static_cast<std::size_t>(t - k)];
        const float den =
            s[static_cast<std::size_t>(t - current)] - s[static_cast<std::size_t>(t - k)];
        prod = prod * (num / den);
      }
      return static_cast<double>(prod);
    };
    return integrate(basis, static_cast<double>(s[static_cast<std::size_t>(t)]),
                     static_cast<double>(s[static_cast<std::size_t>(t + 1)]), 1e-4);
  }

 private:
  sched::NoiseSchedule schedule_;
  bool use_karras_sigmas_ = false;
  sched::Prediction prediction_ = sched::Prediction::Epsilon;
  int64_t steps_offset_ = 0;

  std::vector<float> sigma_f32_;  // [n + 1], ends with 0 (the base's sigmas_ as floats)
  std::deque<Tensor> derivatives_;
};

}  // namespace

std::unique_ptr<Scheduler> make_lms_scheduler(const nlohmann::json& cfg) {
  return std::make_unique<LmsScheduler>(cfg);
}

}  // namespace diffusiond
