// Names, aliases, defaults and from_config semantics of the sampler registry.
#include <catch2/catch.hpp>

#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/common.h"
#include "pipeline/schedulers/scheduler.h"

using diffusiond::canonical_scheduler_name;
using diffusiond::default_scheduler_name;
using diffusiond::make_scheduler;

namespace {
const std::string kModel = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1/";
nlohmann::json fixture_scheduler_config() {
  return diffusiond::read_json_file(kModel + "scheduler/scheduler_config.json");
}
}  // namespace

TEST_CASE("scheduler names and aliases resolve case-insensitively", "[schedulers][registry]") {
  CHECK(canonical_scheduler_name("euler_a") == "euler_a");
  CHECK(canonical_scheduler_name("Euler a") == "euler_a");
  CHECK(canonical_scheduler_name("EULER A") == "euler_a");
  CHECK(canonical_scheduler_name("Euler") == "euler");
  CHECK(canonical_scheduler_name("dpm++ 2m") == "dpmpp_2m");
  CHECK(canonical_scheduler_name("DPM++ 2M Karras") == "dpmpp_2m_karras");
  CHECK(canonical_scheduler_name("lms") == "lms");
  CHECK(canonical_scheduler_name("Heun") == "heun");
  CHECK(canonical_scheduler_name("ddim") == "ddim");
  CHECK(canonical_scheduler_name("PLMS") == "pndm");
  CHECK(canonical_scheduler_name("pndm") == "pndm");
  CHECK(canonical_scheduler_name("UniPC") == "unipc");
  CHECK(canonical_scheduler_name("lcm") == "lcm");
  // diffusers class names, with or without the suffix.
  CHECK(canonical_scheduler_name("EulerAncestralDiscreteScheduler") == "euler_a");
  CHECK(canonical_scheduler_name("eulerdiscrete") == "euler");
  CHECK(canonical_scheduler_name("DPMSolverMultistepScheduler") == "dpmpp_2m");
  CHECK(canonical_scheduler_name("LCMScheduler") == "lcm");
  CHECK_FALSE(canonical_scheduler_name("euler b").has_value());
  CHECK_FALSE(canonical_scheduler_name("").has_value());
  CHECK_FALSE(canonical_scheduler_name("DDPMScheduler").has_value());
}

TEST_CASE("the registry lists the ten canonical samplers", "[schedulers][registry]") {
  const auto& reg = diffusiond::scheduler_registry();
  std::vector<std::string> names;
  for (const auto& e : reg) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"pndm", "ddim", "euler", "euler_a", "dpmpp_2m",
                                          "dpmpp_2m_karras", "lms", "heun", "unipc", "lcm"});
  for (const auto& e : reg) {
    INFO(e.name);
    CHECK(canonical_scheduler_name(e.name) == e.name);
    for (const auto& a : e.aliases) CHECK(canonical_scheduler_name(a) == e.name);
  }
}

TEST_CASE("an unknown scheduler name is an error listing the valid names",
          "[schedulers][registry]") {
  try {
    make_scheduler("Euler b", fixture_scheduler_config());
    FAIL("expected std::invalid_argument");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("Euler b") != std::string::npos);
    for (const auto& entry : diffusiond::scheduler_registry()) {
      INFO(entry.name);
      CHECK(msg.find(entry.name) != std::string::npos);
    }
    CHECK(msg.find("DPM++ 2M Karras") != std::string::npos);
  }
}

TEST_CASE("the default scheduler comes from _class_name", "[schedulers][registry]") {
  CHECK(default_scheduler_name(fixture_scheduler_config()) == "pndm");
  CHECK(default_scheduler_name({{"_class_name", "EulerDiscreteScheduler"}}) == "euler");
  CHECK(default_scheduler_name({{"_class_name", "DPMSolverMultistepScheduler"}}) == "dpmpp_2m");
  CHECK(default_scheduler_name({{"_class_name", "DPMSolverMultistepScheduler"},
                                {"use_karras_sigmas", true}}) == "dpmpp_2m_karras");
  CHECK(default_scheduler_name({{"_class_name", "LCMScheduler"}}) == "lcm");
  CHECK_THROWS_WITH(default_scheduler_name({{"_class_name", "DDPMScheduler"}}),
                    Catch::Contains("DDPMScheduler"));
  CHECK_THROWS_AS(default_scheduler_name(nlohmann::json::object()), std::invalid_argument);
}

TEST_CASE(
    "from_config: keys the model config has are inherited, missing keys take the class "
    "defaults",
    "[schedulers][registry]") {
  // The fixture's PNDM config carries timestep_spacing "leading" and steps_offset 1, which Euler
  // inherits (its own defaults would be linspace and 0): timesteps 901, 801, ..., 1 and
  // init_noise_sigma = (sigma_max^2 + 1)^0.5.
  const auto golden = diffusiond::SafetensorsFile::open(kModel + "golden/schedulers.safetensors");
  const torch::Tensor ac = golden->tensor("alphas_cumprod");
  auto euler = make_scheduler("Euler", fixture_scheduler_config());
  euler->set_timesteps(10);
  std::vector<double> expected_ts;
  for (int t = 901; t >= 1; t -= 100) expected_ts.push_back(t);
  CHECK(euler->timesteps() == expected_ts);
  const auto sigmas = euler->sigmas().value();
  REQUIRE(sigmas.size() == 11);
  for (std::size_t i = 0; i < 10; ++i) {
    const double a = ac[static_cast<int64_t>(expected_ts[i])].item<double>();
    CHECK(sigmas[i] == Approx(std::sqrt((1 - a) / a)).epsilon(1e-6));
  }
  CHECK(sigmas[10] == 0.0);
  CHECK(euler->init_noise_sigma() == Approx(std::sqrt(sigmas[0] * sigmas[0] + 1)).epsilon(1e-6));

  // Keys listed in _use_default_values are not passed on: Euler falls back to linspace.
  nlohmann::json cfg = fixture_scheduler_config();
  cfg["_use_default_values"] = {"timestep_spacing"};
  auto euler2 = make_scheduler("euler", cfg);
  euler2->set_timesteps(10);
  CHECK(euler2->timesteps().front() == 999.0);
  CHECK(euler2->timesteps().back() == 0.0);
  CHECK(euler2->init_noise_sigma() == Approx(euler2->sigmas().value().front()).epsilon(1e-7));
}

TEST_CASE("bad scheduler config values are clear errors", "[schedulers][registry]") {
  nlohmann::json cfg = fixture_scheduler_config();
  cfg["prediction_type"] = "sample";
  CHECK_THROWS_WITH(make_scheduler("pndm", cfg),
                    Catch::Contains("prediction_type") && Catch::Contains("PNDMScheduler"));
  cfg["prediction_type"] = "epsilon";
  cfg["beta_schedule"] = "cubic";
  CHECK_THROWS_WITH(make_scheduler("ddim", cfg), Catch::Contains("beta_schedule"));
  cfg["beta_schedule"] = "linear";
  cfg["timestep_spacing"] = "sideways";
  CHECK_THROWS_WITH(make_scheduler("euler", cfg), Catch::Contains("timestep_spacing"));
  cfg["timestep_spacing"] = "leading";
  cfg["steps_offset"] = "one";
  CHECK_THROWS_WITH(make_scheduler("lms", cfg), Catch::Contains("steps_offset"));
}

TEST_CASE("numpy-exact spacing helpers", "[schedulers][common]") {
  namespace s = diffusiond::sched;
  CHECK(s::np_linspace(0, 999, 10) ==
        std::vector<double>{0, 111, 222, 333, 444, 555, 666, 777, 888, 999});
  CHECK(s::np_linspace(2, 5, 1) == std::vector<double>{2});
  CHECK(s::leading_timesteps(1000, 4, 1) == std::vector<double>{751, 501, 251, 1});
  // DDIM "trailing" with 10 steps: 999, 899, ..., 99 (Table 2 of arXiv:2305.08891).
  std::vector<double> trailing;
  for (int t = 999; t >= 99; t -= 100) trailing.push_back(t);
  CHECK(s::trailing_timesteps(1000, 10) == trailing);
  CHECK(s::np_arange(10, 0, -2.5) == std::vector<double>{10, 7.5, 5, 2.5});
  CHECK(s::np_round(2.5) == 2.0);
  CHECK(s::np_round(3.5) == 4.0);
  CHECK(s::np_interp({-1, 0, 0.25, 1.5, 2, 3}, {0, 1, 2}, {10, 20, 40}) ==
        std::vector<double>{10, 10, 12.5, 30, 40, 40});
  const auto k = s::karras_sigmas(0.1, 10.0, 5);
  REQUIRE(k.size() == 5);
  CHECK(k.front() == Approx(10.0).epsilon(1e-12));
  CHECK(k.back() == Approx(0.1).epsilon(1e-12));
  // sigma_to_t inverts the training sigmas: an exact training sigma maps to its timestep.
  std::vector<float> train;
  for (int i = 0; i < 50; ++i) train.push_back(0.03f * std::exp(0.1f * static_cast<float>(i)));
  const auto logs = s::log_f32(train);
  CHECK(s::sigma_to_t(train[17], logs) == Approx(17.0).margin(1e-4));
  CHECK(s::sigma_to_t(std::sqrt(static_cast<double>(train[20]) * train[21]), logs) ==
        Approx(20.5).margin(1e-3));
  CHECK(s::sigma_to_t(1e-6, logs) == 0.0);
}
