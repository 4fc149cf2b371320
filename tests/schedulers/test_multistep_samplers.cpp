// DPM-Solver++ 2M, UniPC and LCM beyond the goldens (test_golden_schedulers.cpp replays their
// diffusers trajectories), checked against analytic references:
//  - with an exact denoiser (the model returns the true epsilon / v / x0 of a known (x0, eps)
//    pair) DPM-Solver++ and UniPC stay on the variance-preserving noising path
//    alpha_i x0 + sigma_i eps (alpha = 1/sqrt(s^2+1), sigma = s alpha for the schedule's sigma s)
//    for every prediction type, spacing and solver variant, and DPM-Solver++ ends exactly at x0;
//  - LCM with an exact denoiser gives the same trajectory for every prediction type, and its last
//    step is the boundary-condition combination c_out x0 + c_skip x_t;
//  - from_config semantics on an SD 1.x (PNDM) config: the spacing keys it carries apply;
//  - bad configs and step indices are errors naming the problem.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/scheduler.h"

namespace {

using diffusiond::make_scheduler;

const std::string kModel = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1/";

nlohmann::json fixture_config() {
  return diffusiond::read_json_file(kModel + "scheduler/scheduler_config.json");
}

double relative_l2(const torch::Tensor& a, const torch::Tensor& e) {
  const torch::Tensor e64 = e.to(torch::kFloat64);
  return (a.to(torch::kFloat64) - e64).norm().item<double>() / e64.norm().item<double>();
}

struct CleanPair {
  torch::Tensor x0, eps;  // float64 [1,4,8,8]
};

CleanPair clean_pair(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  CleanPair p;
  p.x0 = torch::randn({1, 4, 8, 8}, gen, f64) * 0.5;
  p.eps = torch::randn({1, 4, 8, 8}, gen, f64);
  return p;
}

// The exact denoiser's output for noise level alpha_bar = a.
torch::Tensor exact_output(const std::string& prediction, const CleanPair& p, double a) {
  if (prediction == "epsilon") return p.eps.to(torch::kFloat32);
  if (prediction == "v_prediction") {
    return (std::sqrt(a) * p.eps - std::sqrt(1 - a) * p.x0).to(torch::kFloat32);
  }
  return p.x0.to(torch::kFloat32);  // sample
}

// DPM-Solver++ / UniPC with an exact denoiser: every step lands on the VP noising path of the
// next sigma. Returns the final latents.
torch::Tensor check_vp_path(const std::string& name, const std::string& prediction,
                            nlohmann::json cfg, int steps) {
  INFO(name << " prediction_type=" << prediction << " config=" << cfg.dump());
  cfg["prediction_type"] = prediction;
  auto sched = make_scheduler(name, cfg);
  sched->set_timesteps(steps);
  REQUIRE(sched->init_noise_sigma() == 1.0);
  const auto sigmas = sched->sigmas();
  REQUIRE(sigmas.has_value());
  const std::size_t n = sched->timesteps().size();
  REQUIRE(sigmas->size() == n + 1);
  const CleanPair p = clean_pair(11);
  auto alpha_bar = [&](std::size_t i) { return 1.0 / ((*sigmas)[i] * (*sigmas)[i] + 1.0); };
  auto on_path = [&](std::size_t i) {
    const double a = alpha_bar(i);
    return std::sqrt(a) * p.x0 + std::sqrt(1 - a) * p.eps;
  };

  at::Generator gen = at::detail::createCPUGenerator(0);
  torch::Tensor latents = on_path(0).to(torch::kFloat32);
  for (std::size_t i = 0; i < n; ++i) {
    INFO("step " << i << " of " << n);
    const int step = static_cast<int>(i);
    const torch::Tensor x = sched->scale_model_input(latents, step);
    REQUIRE(torch::equal(x, latents));  // these samplers do not scale the model input
    latents = sched->step(exact_output(prediction, p, alpha_bar(i)), step, latents, gen);
    REQUIRE(latents.scalar_type() == torch::kFloat32);
    REQUIRE(relative_l2(latents, on_path(i + 1)) < 1e-5);
  }
  return latents;
}

}  // namespace

TEST_CASE("DPM-Solver++ 2M and UniPC follow an exact denoiser for every prediction type",
          "[schedulers][properties][multistep]") {
  const CleanPair p = clean_pair(11);
  for (const char* prediction : {"epsilon", "v_prediction", "sample"}) {
    // DPM-Solver++ ends at sigma 0: the clean sample itself.
    for (const char* name : {"dpmpp_2m", "dpmpp_2m_karras"}) {
      const torch::Tensor last = check_vp_path(name, prediction, fixture_config(), 10);
      CHECK(relative_l2(last, p.x0) < 1e-5);
    }
    check_vp_path("unipc", prediction, fixture_config(), 10);
    nlohmann::json trailing = fixture_config();
    trailing["timestep_spacing"] = "trailing";
    check_vp_path("dpmpp_2m", prediction, trailing, 7);
    check_vp_path("unipc", prediction, trailing, 7);
  }
  // Variants from the model config: final sigma sigma_min, euler_at_final, heun solver, many
  // steps (no lower-order final), UniPC bh1 / order 3 / without corrector / karras.
  nlohmann::json cfg = fixture_config();
  cfg["final_sigmas_type"] = "sigma_min";
  cfg["solver_type"] = "heun";
  cfg["timestep_spacing"] = "linspace";
  check_vp_path("dpmpp_2m", "v_prediction", cfg, 20);
  cfg["euler_at_final"] = true;
  check_vp_path("dpmpp_2m_karras", "epsilon", cfg, 6);
  nlohmann::json uni = fixture_config();
  uni["solver_type"] = "bh1";
  uni["solver_order"] = 3;
  uni["disable_corrector"] = {0, 2};
  uni["lower_order_final"] = false;
  check_vp_path("unipc", "v_prediction", uni, 8);
  // Karras: UniPC repeats the last sigma, so its last step (first order there) keeps the sample.
  uni = fixture_config();
  uni["use_karras_sigmas"] = true;
  check_vp_path("unipc", "epsilon", uni, 5);
  // One step: DPM-Solver++ is a single first-order update straight to x0.
  CHECK(relative_l2(check_vp_path("dpmpp_2m", "epsilon", fixture_config(), 1), p.x0) < 1e-5);
}

// (No ";" or "," in test names: CTest and Catch filters would split them.)
TEST_CASE("LCM gives one trajectory for every prediction type and ends on the boundary condition",
          "[schedulers][properties][lcm]") {
  const torch::Tensor ac =
      diffusiond::SafetensorsFile::open(kModel + "golden/schedulers.safetensors")
          ->tensor("alphas_cumprod")
          .to(torch::kFloat64);
  const CleanPair p = clean_pair(5);
  auto run = [&](const std::string& prediction) {
    nlohmann::json cfg = fixture_config();
    cfg["prediction_type"] = prediction;
    auto sched = make_scheduler("LCM", cfg);
    sched->set_timesteps(4);
    const auto& ts = sched->timesteps();
    REQUIRE(ts.size() == 4);
    at::Generator gen = at::detail::createCPUGenerator(99);
    auto alpha_bar = [&](std::size_t i) { return ac[static_cast<int64_t>(ts[i])].item<double>(); };
    torch::Tensor latents =
        (std::sqrt(alpha_bar(0)) * p.x0 + std::sqrt(1 - alpha_bar(0)) * p.eps).to(torch::kFloat32);
    torch::Tensor before_last;
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const int step = static_cast<int>(i);
      const double a = alpha_bar(i);
      // The true epsilon of the current latents given x0 (the exact denoiser).
      const torch::Tensor eps_now =
          (latents.to(torch::kFloat64) - std::sqrt(a) * p.x0) / std::sqrt(1 - a);
      const CleanPair now{p.x0, eps_now};
      before_last = latents;
      latents = sched->step(exact_output(prediction, now, a), step,
                            sched->scale_model_input(latents, step), gen);
    }
    // Boundary condition at the last timestep t: c_skip = 0.25 / ((10 t)^2 + 0.25),
    // c_out = 10 t / sqrt((10 t)^2 + 0.25).
    const double t10 = 10.0 * ts.back();
    const double c_skip = 0.25 / (t10 * t10 + 0.25);
    const double c_out = t10 / std::sqrt(t10 * t10 + 0.25);
    const torch::Tensor expected = c_out * p.x0 + c_skip * before_last.to(torch::kFloat64);
    CHECK(relative_l2(latents, expected) < 1e-5);
    return latents;
  };
  const torch::Tensor eps_run = run("epsilon");
  CHECK(relative_l2(run("v_prediction"), eps_run) < 1e-5);
  CHECK(relative_l2(run("sample"), eps_run) < 1e-5);
}

TEST_CASE("multistep samplers read an SD 1.x config like from_config", "[schedulers][multistep]") {
  // The fixture is a PNDM config carrying timestep_spacing "leading" and steps_offset 1; the
  // solvers' leading spacing is (arange(0, n + 1) * (1000 // (n + 1)))[::-1][:-1] + 1.
  const std::vector<double> leading{901, 811, 721, 631, 541, 451, 361, 271, 181, 91};
  for (const char* name : {"DPM++ 2M", "UniPC"}) {
    INFO(name);
    auto sched = make_scheduler(name, fixture_config());
    sched->set_timesteps(10);
    CHECK(sched->timesteps() == leading);
  }
  // LCM: every 20th of the 1000 training steps (999, 979, ..., 19), 4 picked at floor(i * 12.5).
  auto lcm = make_scheduler("lcm", fixture_config());
  lcm->set_timesteps(4);
  CHECK(lcm->timesteps() == std::vector<double>{999, 759, 499, 259});
  CHECK_FALSE(lcm->sigmas().has_value());
  CHECK_THROWS_WITH(lcm->set_timesteps(51), Catch::Contains("original_inference_steps"));
  // Keys the class does not take are ignored; keys it takes with bad values are named.
  nlohmann::json cfg = fixture_config();
  cfg["some_future_key"] = 3;
  CHECK_NOTHROW(make_scheduler("unipc", cfg));
  cfg["solver_type"] = "rk4";
  CHECK_THROWS_WITH(make_scheduler("dpmpp_2m", cfg), Catch::Contains("solver_type"));
  CHECK_THROWS_WITH(make_scheduler("unipc", cfg), Catch::Contains("solver_type"));
  cfg = fixture_config();
  cfg["final_sigmas_type"] = "one";
  CHECK_THROWS_WITH(make_scheduler("dpmpp_2m_karras", cfg), Catch::Contains("final_sigmas_type"));
  cfg = fixture_config();
  cfg["prediction_type"] = "flow";
  for (const char* name : {"dpmpp_2m", "unipc", "lcm"}) {
    CHECK_THROWS_WITH(make_scheduler(name, cfg), Catch::Contains("prediction_type"));
  }
}

TEST_CASE("multistep samplers reject step indices outside the schedule",
          "[schedulers][multistep]") {
  for (const char* name : {"dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm"}) {
    INFO(name);
    auto sched = make_scheduler(name, fixture_config());
    const torch::Tensor x = torch::zeros({1, 4, 8, 8});
    at::Generator gen = at::detail::createCPUGenerator(0);
    CHECK_THROWS_AS(sched->step(x, 0, x, gen), std::out_of_range);  // before set_timesteps
    sched->set_timesteps(3);
    CHECK_THROWS_AS(sched->scale_model_input(x, -1), std::out_of_range);
    CHECK_THROWS_AS(sched->step(x, 3, x, gen), std::out_of_range);
  }
}
