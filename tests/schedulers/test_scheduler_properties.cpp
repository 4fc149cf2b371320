// Behaviour the goldens do not cover, checked against analytic references:
//  - with an exact denoiser (the model returns the true epsilon / v / x0 of a known (x0, eps)
//    pair) every deterministic sampler stays on the noising path x0 + sigma * eps (or
//    sqrt(a) x0 + sqrt(1 - a) eps) and ends where the schedule says, for every prediction type;
//  - PNDM's Runge-Kutta warm-up (skip_prk_steps=false) timesteps;
//  - step_batch(): one generator per image gives each row the noise of its own single run.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/scheduler.h"

namespace {

const std::string kModel = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1/";

nlohmann::json fixture_config() {
  return diffusiond::read_json_file(kModel + "scheduler/scheduler_config.json");
}

double relative_l2(const torch::Tensor& a, const torch::Tensor& e) {
  return (a.to(torch::kFloat64) - e.to(torch::kFloat64)).norm().item<double>() /
         e.to(torch::kFloat64).norm().item<double>();
}

// Runs `name` with prediction_type `prediction` against an exact denoiser and returns the final
// latents together with what they must be.
void check_exact_denoiser(const std::string& name, const std::string& prediction,
                          nlohmann::json cfg = fixture_config(), int steps = 10) {
  INFO(name << " with prediction_type " << prediction);
  cfg["prediction_type"] = prediction;
  const torch::Tensor ac =
      diffusiond::SafetensorsFile::open(kModel + "golden/schedulers.safetensors")
          ->tensor("alphas_cumprod")
          .to(torch::kFloat64);
  auto sched = diffusiond::make_scheduler(name, cfg);
  sched->set_timesteps(steps);
  const auto sigmas = sched->sigmas();
  const auto& ts = sched->timesteps();

  at::Generator gen = at::detail::createCPUGenerator(3);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x0 = torch::randn({1, 4, 8, 8}, gen, f64) * 0.5;
  const torch::Tensor eps = torch::randn({1, 4, 8, 8}, gen, f64);

  // Noise level of evaluation i as the training alpha_bar the UNet input corresponds to.
  auto alpha_bar_at = [&](std::size_t i) {
    if (sigmas) {
      const double s = (*sigmas)[i];
      return 1.0 / (s * s + 1.0);
    }
    return ac[static_cast<int64_t>(ts[i])].item<double>();
  };
  auto model = [&](std::size_t i) {
    const double a = alpha_bar_at(i);
    torch::Tensor out;
    if (prediction == "epsilon") out = eps;
    if (prediction == "v_prediction") out = std::sqrt(a) * eps - std::sqrt(1 - a) * x0;
    if (prediction == "sample") out = x0;
    return out.to(torch::kFloat32);
  };

  torch::Tensor latents;
  if (sigmas) {
    latents = (x0 + (*sigmas)[0] * eps).to(torch::kFloat32);
  } else {
    const double a = alpha_bar_at(0);
    latents = (std::sqrt(a) * x0 + std::sqrt(1 - a) * eps).to(torch::kFloat32);
  }
  for (std::size_t i = 0; i < ts.size(); ++i) {
    INFO("step " << i);
    const int step = static_cast<int>(i);
    torch::Tensor x = sched->scale_model_input(latents, step);
    if (sigmas) {
      const double s = (*sigmas)[i];
      REQUIRE(relative_l2(x, latents / std::sqrt(s * s + 1)) < 1e-6);
    }
    latents = sched->step(model(i), step, latents, gen);
    REQUIRE(torch::isfinite(latents).all().item<bool>());
    if (sigmas) {  // every step lands on x0 + sigma_next * eps
      REQUIRE(relative_l2(latents, x0 + (*sigmas)[i + 1] * eps) < 1e-4);
    }
  }
  torch::Tensor expected;
  if (sigmas) {
    expected = x0 + sigmas->at(ts.size()) * eps;
  } else {  // the last step goes to final_alpha_cumprod = alphas_cumprod[0]
    const double a = ac[0].item<double>();
    expected = std::sqrt(a) * x0 + std::sqrt(1 - a) * eps;
  }
  CHECK(relative_l2(latents, expected) < 1e-4);
}

}  // namespace

TEST_CASE("deterministic samplers follow an exact denoiser for every prediction type",
          "[schedulers][properties]") {
  for (const char* p : {"epsilon", "v_prediction", "sample"}) {
    check_exact_denoiser("ddim", p);
    check_exact_denoiser("euler", p);
    check_exact_denoiser("lms", p);
    check_exact_denoiser("heun", p);
  }
  check_exact_denoiser("pndm", "epsilon");
  // PNDM converts v to epsilon with each step's own alpha after combining the outputs, so only
  // its first step is exact for v_prediction; check the one-step case.
  check_exact_denoiser("pndm", "v_prediction", fixture_config(), 1);
  nlohmann::json karras = fixture_config();
  karras["use_karras_sigmas"] = true;
  check_exact_denoiser("euler", "epsilon", karras);
  check_exact_denoiser("lms", "v_prediction", karras);
  check_exact_denoiser("heun", "epsilon", karras);
  nlohmann::json trailing = fixture_config();
  trailing["timestep_spacing"] = "trailing";
  check_exact_denoiser("ddim", "v_prediction", trailing);
  check_exact_denoiser("euler", "v_prediction", trailing);
  nlohmann::json log_linear = fixture_config();
  log_linear["interpolation_type"] = "log_linear";
  check_exact_denoiser("euler", "epsilon", log_linear);
}

TEST_CASE("PNDM with Runge-Kutta warm-up (skip_prk_steps=false)", "[schedulers][properties]") {
  nlohmann::json cfg = fixture_config();
  cfg["skip_prk_steps"] = false;
  auto pndm = diffusiond::make_scheduler("pndm", cfg);
  pndm->set_timesteps(10);
  // Leading spacing 1, 101, ..., 901; the last four with their half steps (+50) form the 12 RK
  // evaluations, then PLMS continues from the fourth-largest timestep.
  CHECK(pndm->timesteps() == std::vector<double>{901, 851, 851, 801, 801, 751, 751, 701, 701, 651,
                                                 651, 601, 601, 501, 401, 301, 201, 101, 1});
  check_exact_denoiser("pndm", "epsilon", cfg);
  CHECK_THROWS_WITH(pndm->set_timesteps(3), Catch::Contains("skip_prk_steps"));
}

TEST_CASE("PLMS repeats its first timestep", "[schedulers][properties]") {
  auto pndm = diffusiond::make_scheduler("PLMS", fixture_config());
  pndm->set_timesteps(4);
  CHECK(pndm->timesteps() == std::vector<double>{751, 501, 501, 251, 1});
}

TEST_CASE("step_batch draws each image's noise from its own generator",
          "[schedulers][properties]") {
  const nlohmann::json cfg = fixture_config();
  auto run = [&](std::vector<at::Generator> gens, int64_t batch) {
    auto sched = diffusiond::make_scheduler("euler_a", cfg);
    sched->set_timesteps(5);
    std::vector<torch::Tensor> rows;
    for (auto& g : gens) rows.push_back(torch::randn({1, 4, 8, 8}, g, torch::kFloat32));
    torch::Tensor latents = torch::cat(rows, 0) * sched->init_noise_sigma();
    REQUIRE(latents.size(0) == batch);
    for (int i = 0; i < static_cast<int>(sched->timesteps().size()); ++i) {
      torch::Tensor x = sched->scale_model_input(latents, i);
      latents = sched->step_batch(x * 0.3, i, latents, gens);
    }
    return latents;
  };
  const torch::Tensor both =
      run({at::detail::createCPUGenerator(7), at::detail::createCPUGenerator(8)}, 2);
  const torch::Tensor first = run({at::detail::createCPUGenerator(7)}, 1);
  const torch::Tensor second = run({at::detail::createCPUGenerator(8)}, 1);
  CHECK(relative_l2(both.slice(0, 0, 1), first) < 1e-6);
  CHECK(relative_l2(both.slice(0, 1, 2), second) < 1e-6);
  CHECK(relative_l2(first, second) > 0.1);  // the two seeds do give different images
  std::vector<at::Generator> three{at::detail::createCPUGenerator(1),
                                   at::detail::createCPUGenerator(2),
                                   at::detail::createCPUGenerator(3)};
  auto sched = diffusiond::make_scheduler("euler_a", cfg);
  sched->set_timesteps(2);
  const torch::Tensor two = torch::zeros({2, 4, 8, 8});
  CHECK_THROWS_AS(sched->step_batch(two, 0, two, three), std::invalid_argument);
}

TEST_CASE("step indices outside the schedule are errors", "[schedulers][properties]") {
  for (const char* name : {"pndm", "ddim", "euler", "euler_a", "lms", "heun"}) {
    INFO(name);
    auto sched = diffusiond::make_scheduler(name, fixture_config());
    sched->set_timesteps(3);
    const torch::Tensor x = torch::zeros({1, 4, 8, 8});
    at::Generator gen = at::detail::createCPUGenerator(0);
    CHECK_THROWS_AS(sched->scale_model_input(x, -1), std::out_of_range);
    CHECK_THROWS_AS(sched->step(x, static_cast<int>(sched->timesteps().size()), x, gen),
                    std::out_of_range);
  }
}
