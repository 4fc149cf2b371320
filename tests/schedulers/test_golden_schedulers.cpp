// Every case of tests/fixtures/tiny-sd1/golden/schedulers.{json,safetensors} (diffusers v0.27.2)
// replayed through make_scheduler(): timesteps, sigmas, init_noise_sigma, the initial latents from
// the seeded CPU generator, and per step the model input, the fake model's output, the step noise
// and the latents, relative L2 <= 1e-5 per tensor (CPU float32). The procedure and the fake model
// are the ones schedulers.json documents; the case's own config is the "model config".
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <nlohmann/json.hpp>

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/scheduler.h"

namespace {

using diffusiond::Scheduler;
const std::string kGolden = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1/golden/";

// diffusers' own scheduler configs, as Python's json wrote them: DPMSolver's lambda_min_clipped
// is float('-inf'), written as a bare -Infinity, which read_json_file must take.
nlohmann::json load_golden_json() {
  return diffusiond::read_json_file(kGolden + "schedulers.json");
}

// Golden case name -> the scheduler name users type.
std::string scheduler_name_for_case(const std::string& case_name) {
  if (case_name == "euler_ancestral") return "euler_a";
  return case_name;
}

std::string key(const std::string& case_name, const char* what, int i) {
  char idx[16];
  std::snprintf(idx, sizeof idx, "%02d", i);
  return case_name + "." + what + "." + idx;
}

double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  const torch::Tensor a = actual.to(torch::kCPU, torch::kFloat64);
  const torch::Tensor e = expected.to(torch::kFloat64);
  REQUIRE(a.sizes() == e.sizes());
  const double denom = e.norm().item<double>();
  const double diff = (a - e).norm().item<double>();
  return denom == 0 ? diff : diff / denom;
}

#define CHECK_TENSOR(actual, expected_key)                         \
  do {                                                             \
    const std::string k_ = (expected_key);                         \
    REQUIRE(golden->contains(k_));                                 \
    const double err_ = relative_l2((actual), golden->tensor(k_)); \
    INFO(k_ << ": relative L2 " << err_);                          \
    REQUIRE(err_ <= 1e-5);                                         \
  } while (0)

// The documented fake UNet: x * c + 0.1 * sin(x), c = float32(0.5 * cos(float64(t) / 1000)).
torch::Tensor fake_model(const torch::Tensor& x, double t) {
  const auto c = static_cast<float>(0.5 * std::cos(t / 1000.0));
  return x * torch::scalar_tensor(c, torch::kFloat32) + torch::sin(x) * 0.1;
}

void run_case(const nlohmann::json& c,
              const std::shared_ptr<const diffusiond::SafetensorsFile>& golden) {
  const std::string name = c.at("name").get<std::string>();
  std::unique_ptr<Scheduler> sched =
      diffusiond::make_scheduler(scheduler_name_for_case(name), c.at("config"));
  sched->set_timesteps(c.at("num_inference_steps").get<int>());

  // Timesteps: float32 or int64 values, exact.
  const auto expected_ts = c.at("timesteps").get<std::vector<double>>();
  const std::vector<double>& ts = sched->timesteps();
  REQUIRE(ts.size() == expected_ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    INFO("timestep " << i);
    REQUIRE(ts[i] == Approx(expected_ts[i]).epsilon(1e-7).margin(1e-9));
  }
  // Sigmas (null for the alpha-based samplers).
  const auto sigmas = sched->sigmas();
  if (c.at("sigmas").is_null()) {
    REQUIRE_FALSE(sigmas.has_value());
  } else {
    REQUIRE(sigmas.has_value());
    const auto expected = c.at("sigmas").get<std::vector<double>>();
    REQUIRE(sigmas->size() == expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
      INFO("sigma " << i);
      REQUIRE((*sigmas)[i] == Approx(expected[i]).epsilon(1e-6).margin(1e-9));
    }
  }
  REQUIRE(sched->init_noise_sigma() ==
          Approx(c.at("init_noise_sigma").get<double>()).epsilon(1e-6));

  // The same seeded generator makes the initial latents and every step's noise; a replica with
  // the same seed replays what each draw must have produced.
  const auto seed = c.at("seed").get<uint64_t>();
  const auto shape = c.at("latent_shape").get<std::vector<int64_t>>();
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Generator replica = at::detail::createCPUGenerator(seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor latents = torch::randn(shape, gen, f32) * sched->init_noise_sigma();
  (void)torch::randn(shape, replica, f32);
  CHECK_TENSOR(latents, key(name, "latents", 0));

  const auto draws = c.at("noise_draws_per_step").get<std::vector<int>>();
  REQUIRE(c.at("num_steps_recorded").get<std::size_t>() == ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const int step = static_cast<int>(i);
    INFO(name << " step " << i << " (t=" << ts[i] << ")");
    torch::Tensor x = sched->scale_model_input(latents, step);
    CHECK_TENSOR(x, key(name, "model_input", step));
    torch::Tensor out = fake_model(x, ts[i]);
    CHECK_TENSOR(out, key(name, "model_output", step));
    latents = sched->step(out, step, latents, gen);
    CHECK_TENSOR(latents, key(name, "latents", step + 1));
    for (int d = 0; d < draws.at(i); ++d) {
      torch::Tensor noise = torch::randn(shape, replica, f32);
      const std::string nk = key(name, "step_noise", step);
      if (golden->contains(nk)) CHECK_TENSOR(noise, nk);
    }
  }
  // The scheduler drew exactly as often as diffusers did: both generators are in the same state.
  REQUIRE(torch::equal(torch::randn({8}, gen, f32), torch::randn({8}, replica, f32)));
}

}  // namespace

TEST_CASE("every golden scheduler case matches diffusers", "[schedulers][golden]") {
  const nlohmann::json golden_json = load_golden_json();
  const auto golden = diffusiond::SafetensorsFile::open(kGolden + "schedulers.safetensors");
  REQUIRE(golden_json.at("cases").size() >= 10);
  for (const auto& c : golden_json.at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    DYNAMIC_SECTION(name) {
      run_case(c, golden);
    }
  }
}

TEST_CASE("alphas_cumprod of the base config matches diffusers", "[schedulers][golden]") {
  const nlohmann::json golden_json = load_golden_json();
  const auto golden = diffusiond::SafetensorsFile::open(kGolden + "schedulers.safetensors");
  const nlohmann::json base = golden_json.at("base_config");
  const torch::Tensor expected = golden->tensor("alphas_cumprod");
  // Through an Euler scheduler: its training sigmas are ((1 - a) / a) ** 0.5, so the sigma of an
  // integer timestep t is exactly that of alphas_cumprod[t].
  auto euler = diffusiond::make_scheduler("euler", base);
  euler->set_timesteps(1000);
  const auto sigmas = euler->sigmas().value();
  REQUIRE(sigmas.size() == 1001);
  const torch::Tensor train = ((1 - expected) / expected).pow(0.5).flip(0);
  for (int64_t i = 0; i < 1000; ++i) {
    INFO("sigma " << i);
#if TORCH_VERSION_MAJOR >= 2
    // LibTorch 2.x's CPU cumprod rounds otherwise than 1.13's (alphas_cumprod[999]: 0.00466009509
    // against 0.00466009602), as diffusers' does on the same torch; the golden ran on torch 1.13,
    // so here the two agree to float32 rounding (a few ulp), not bit for bit.
    REQUIRE(sigmas[static_cast<std::size_t>(i)] == Approx(train[i].item<double>()).epsilon(1e-6));
#else
    REQUIRE(sigmas[static_cast<std::size_t>(i)] == train[i].item<double>());
#endif
  }
}
