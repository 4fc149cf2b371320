// Ref: diffusers v0.27.2 scheduler helpers; see common.h for what each function mirrors.
#include "pipeline/schedulers/common.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace diffusiond::sched {

// ---- SchedulerConfig ----------------------------------------------------------------------

SchedulerConfig::SchedulerConfig(const nlohmann::json& model_config, std::string class_name)
    : json_(nlohmann::json::object()), class_name_(std::move(class_name)) {
  if (!model_config.is_object()) {
    throw std::invalid_argument(class_name_ + ": scheduler config must be a JSON object");
  }
  // Keys the saved config only carried as defaults of its own class are not passed on
  // (ConfigMixin.extract_init_dict), so the new class uses its own defaults for them.
  std::vector<std::string> used_defaults;
  if (auto it = model_config.find("_use_default_values"); it != model_config.end()) {
    if (it->is_array()) {
      for (const auto& k : *it) {
        if (k.is_string()) used_defaults.push_back(k.get<std::string>());
      }
    }
  }
  for (const auto& [key, value] : model_config.items()) {
    if (!key.empty() && key[0] == '_') continue;
    if (std::find(used_defaults.begin(), used_defaults.end(), key) != used_defaults.end()) continue;
    json_[key] = value;
  }
}

bool SchedulerConfig::has(const std::string& key) const {
  auto it = json_.find(key);
  return it != json_.end() && !it->is_null();
}

std::optional<double> SchedulerConfig::get_optional_double(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_or<double>(key, 0.0);
}

void SchedulerConfig::throw_wrong_type(const std::string& key) const {
  throw std::invalid_argument(class_name_ + ": scheduler config key '" + key +
                              "' has the wrong type (" + json_.at(key).type_name() + ")");
}

void SchedulerConfig::unsupported(const std::string& key, const std::string& value,
                                  const std::string& what_is_supported) const {
  throw std::invalid_argument(class_name_ + ": scheduler config " + key + "=" + value +
                              " is not supported (" + what_is_supported + ")");
}

// ---- schedules ----------------------------------------------------------------------------

torch::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, const std::string& transform,
                                  double max_beta) {
  auto alpha_bar = [&](double t) {
    if (transform == "cosine") {
      double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
      return c * c;  // Python's x ** 2 on floats is pow(x, 2), exact as x*x
    }
    return std::exp(t * -12.0);
  };
  if (transform != "cosine" && transform != "exp") {
    throw std::invalid_argument("betas_for_alpha_bar: unsupported alpha transform '" + transform +
                                "' (cosine, exp)");
  }
  std::vector<double> betas;
  betas.reserve(static_cast<std::size_t>(num_diffusion_timesteps));
  for (int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    double t1 = static_cast<double>(i) / static_cast<double>(num_diffusion_timesteps);
    double t2 = static_cast<double>(i + 1) / static_cast<double>(num_diffusion_timesteps);
    betas.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  torch::Tensor alphas = 1.0 - betas;
  torch::Tensor alphas_cumprod = torch::cumprod(alphas, 0);
  torch::Tensor alphas_bar_sqrt = alphas_cumprod.sqrt();
  torch::Tensor sqrt_0 = alphas_bar_sqrt[0].clone();
  torch::Tensor sqrt_T = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt -= sqrt_T;
  alphas_bar_sqrt *= sqrt_0 / (sqrt_0 - sqrt_T);
  torch::Tensor alphas_bar = alphas_bar_sqrt.pow(2);
  torch::Tensor ratios = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  torch::Tensor new_alphas = torch::cat({alphas_bar.slice(0, 0, 1), ratios});
  return 1 - new_alphas;
}

NoiseSchedule make_noise_schedule(const SchedulerConfig& cfg, const BetaDefaults& d) {
  NoiseSchedule s;
  s.num_train_timesteps = cfg.get_or<int64_t>("num_train_timesteps", d.num_train_timesteps);
  if (s.num_train_timesteps < 2) {
    cfg.unsupported("num_train_timesteps", std::to_string(s.num_train_timesteps), "must be >= 2");
  }
  const double beta_start = cfg.get_or<double>("beta_start", d.beta_start);
  const double beta_end = cfg.get_or<double>("beta_end", d.beta_end);
  const std::string schedule = cfg.get_or<std::string>("beta_schedule", d.beta_schedule);
  const int64_t n = s.num_train_timesteps;

  if (cfg.has("trained_betas")) {
    std::vector<double> trained;
    try {
      trained = cfg.json().at("trained_betas").get<std::vector<double>>();
    } catch (const nlohmann::json::exception&) {
      throw std::invalid_argument(
          cfg.class_name() + ": scheduler config key 'trained_betas' must be a list of numbers");
    }
    if (trained.empty()) cfg.unsupported("trained_betas", "[]", "needs at least one beta");
    if (static_cast<int64_t>(trained.size()) != n) {
      cfg.unsupported("trained_betas", "(" + std::to_string(trained.size()) + " values)",
                      "needs num_train_timesteps=" + std::to_string(n) + " values");
    }
    s.betas = torch::tensor(trained, torch::kFloat64).to(torch::kFloat32);
  } else if (schedule == "linear") {
    s.betas = torch::linspace(beta_start, beta_end, n, torch::kFloat32);
  } else if (schedule == "scaled_linear") {
    s.betas =
        torch::linspace(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), n, torch::kFloat32)
            .pow(2);
  } else if (schedule == "squaredcos_cap_v2") {
    s.betas = betas_for_alpha_bar(n, "cosine");
  } else if (schedule == "exp" && d.supports_exp) {
    s.betas = betas_for_alpha_bar(n, "exp");
  } else {
    cfg.unsupported("beta_schedule", "\"" + schedule + "\"",
                    std::string("linear, scaled_linear, squaredcos_cap_v2") +
                        (d.supports_exp ? ", exp" : "") + " or trained_betas");
  }

  if (d.supports_rescale_zero_snr && cfg.get_or<bool>("rescale_betas_zero_snr", false)) {
    s.betas = rescale_zero_terminal_snr(s.betas);
    s.rescaled_zero_snr = true;
  }
  s.alphas = 1.0 - s.betas;
  s.alphas_cumprod = torch::cumprod(s.alphas, 0);
  return s;
}

std::vector<float> train_sigmas(const torch::Tensor& alphas_cumprod) {
  return tensor_to_floats(((1 - alphas_cumprod) / alphas_cumprod).pow(0.5));
}

std::vector<float> log_f32(const std::vector<float>& values) {
  std::vector<float> out;
  out.reserve(values.size());
  for (float v : values) out.push_back(std::log(v));
  return out;
}

// ---- prediction type and spacing ----------------------------------------------------------

const char* to_string(Prediction p) {
  switch (p) {
    case Prediction::Epsilon:
      return "epsilon";
    case Prediction::VPrediction:
      return "v_prediction";
    case Prediction::Sample:
      return "sample";
  }
  return "?";
}

Prediction read_prediction_type(const SchedulerConfig& cfg,
                                const std::vector<Prediction>& allowed) {
  const std::string name = cfg.get_or("prediction_type", "epsilon");
  std::optional<Prediction> p;
  if (name == "epsilon") p = Prediction::Epsilon;
  if (name == "v_prediction") p = Prediction::VPrediction;
  if (name == "sample" || name == "original_sample") p = Prediction::Sample;
  std::string list;
  for (Prediction a : allowed) list += (list.empty() ? "" : ", ") + std::string(to_string(a));
  if (!p || std::find(allowed.begin(), allowed.end(), *p) == allowed.end()) {
    cfg.unsupported("prediction_type", "\"" + name + "\"", "supported: " + list);
  }
  return *p;
}

Spacing read_timestep_spacing(const SchedulerConfig& cfg, const char* class_default) {
  const std::string name = cfg.get_or("timestep_spacing", class_default);
  if (name == "linspace") return Spacing::Linspace;
  if (name == "leading") return Spacing::Leading;
  if (name == "trailing") return Spacing::Trailing;
  cfg.unsupported("timestep_spacing", "\"" + name + "\"", "linspace, leading or trailing");
}

// ---- numpy primitives ---------------------------------------------------------------------

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  if (num < 0) throw std::invalid_argument("np_linspace: negative count");
  std::vector<double> y(static_cast<std::size_t>(num));
  if (num == 0) return y;
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div == 0) {
    y[0] = start;  // numpy: 0 * delta + start
    return y;
  }
  const double step = delta / static_cast<double>(div);
  for (int64_t i = 0; i < num; ++i) {
    double v = step == 0 ? static_cast<double>(i) / static_cast<double>(div) * delta
                         : static_cast<double>(i) * step;
    y[static_cast<std::size_t>(i)] = v + start;
  }
  y.back() = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  if (step == 0) throw std::invalid_argument("np_arange: step must not be zero");
  const double len_f = std::ceil((stop - start) / step);
  if (!(len_f > 0)) return {};
  const auto len = static_cast<std::size_t>(len_f);
  std::vector<double> y(len);
  y[0] = start;
  if (len == 1) return y;
  const double second = start + step;
  const double delta = second - start;  // numpy's fill uses (start + step) - start
  y[1] = second;
  for (std::size_t i = 2; i < len; ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

double np_round(double x) {
  return std::nearbyint(x);
}

std::vector<double> np_interp(const std::vector<double>& x, const std::vector<double>& xp,
                              const std::vector<double>& fp) {
  if (xp.empty() || xp.size() != fp.size()) {
    throw std::invalid_argument("np_interp: xp and fp must be non-empty and of equal length");
  }
  const std::size_t n = xp.size();
  std::vector<double> out;
  out.reserve(x.size());
  for (double v : x) {
    if (std::isnan(v)) {
      out.push_back(v);
      continue;
    }
    if (v < xp.front()) {
      out.push_back(fp.front());
      continue;
    }
    if (v > xp.back()) {
      out.push_back(fp.back());
      continue;
    }
    // j with xp[j] <= v < xp[j+1] (j = n-1 when v == xp.back()).
    std::size_t j =
        static_cast<std::size_t>(std::upper_bound(xp.begin(), xp.end(), v) - xp.begin()) - 1;
    if (j == n - 1 || xp[j] == v) {
      out.push_back(fp[j]);
      continue;
    }
    const double slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    double r = slope * (v - xp[j]) + fp[j];
    if (std::isnan(r)) {
      r = slope * (v - xp[j + 1]) + fp[j + 1];
      if (std::isnan(r) && fp[j] == fp[j + 1]) r = fp[j];
    }
    out.push_back(r);
  }
  return out;
}

// ---- spacings -----------------------------------------------------------------------------

std::vector<double> linspace_timesteps(int64_t num_train_timesteps, int num_inference_steps) {
  std::vector<double> t =
      np_linspace(0.0, static_cast<double>(num_train_timesteps - 1), num_inference_steps);
  std::reverse(t.begin(), t.end());
  return t;
}

std::vector<double> leading_timesteps(int64_t num_train_timesteps, int num_inference_steps,
                                      int64_t steps_offset) {
  const int64_t ratio = num_train_timesteps / num_inference_steps;
  std::vector<double> t;
  t.reserve(static_cast<std::size_t>(num_inference_steps));
  for (int64_t i = num_inference_steps - 1; i >= 0; --i) {
    t.push_back(static_cast<double>(i * ratio + steps_offset));
  }
  return t;
}

std::vector<double> trailing_timesteps(int64_t num_train_timesteps, int num_inference_steps) {
  const double ratio =
      static_cast<double>(num_train_timesteps) / static_cast<double>(num_inference_steps);
  std::vector<double> t = np_arange(static_cast<double>(num_train_timesteps), 0.0, -ratio);
  for (double& v : t) v = np_round(v) - 1;
  return t;
}

std::vector<double> float32_timesteps(Spacing spacing, int64_t num_train_timesteps,
                                      int num_inference_steps, int64_t steps_offset) {
  std::vector<double> t;
  switch (spacing) {
    case Spacing::Linspace:
      t = linspace_timesteps(num_train_timesteps, num_inference_steps);
      break;
    case Spacing::Leading:
      t = leading_timesteps(num_train_timesteps, num_inference_steps, 0);
      for (double& v : t) {
        v = static_cast<double>(static_cast<float>(v) + static_cast<float>(steps_offset));
      }
      break;
    case Spacing::Trailing: {
      const double ratio =
          static_cast<double>(num_train_timesteps) / static_cast<double>(num_inference_steps);
      t = np_arange(static_cast<double>(num_train_timesteps), 0.0, -ratio);
      for (double& v : t) v = static_cast<double>(static_cast<float>(np_round(v)) - 1.0f);
      break;
    }
  }
  return round_to_float32(t);
}

// ---- sigma helpers ------------------------------------------------------------------------

double sigma_init_noise(const torch::Tensor& sigmas, Spacing spacing) {
  torch::Tensor max_sigma = sigmas.max();
  if (spacing == Spacing::Linspace || spacing == Spacing::Trailing) {
    return max_sigma.item<double>();
  }
  return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
}

torch::Tensor scale_by_sigma(const torch::Tensor& sample, const torch::Tensor& sigma) {
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int num_inference_steps,
                                  double rho) {
  const std::vector<double> ramp = np_linspace(0.0, 1.0, num_inference_steps);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out;
  out.reserve(ramp.size());
  for (double r : ramp) out.push_back(std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho));
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const std::size_t n = log_sigmas.size();
  if (n < 2) throw std::invalid_argument("sigma_to_t: need at least two training sigmas");
  // numpy 1.x value-based casting: the float64 scalar meets float32 arrays as float32.
  const double log_sigma_d = std::log(std::max(sigma, 1e-10));
  const auto log_sigma = static_cast<float>(log_sigma_d);
  // low_idx = argmax(cumsum(dists >= 0)) (first maximum), clipped to n - 2.
  std::size_t low_idx = 0;
  int64_t count = 0, best = -1;
  for (std::size_t i = 0; i < n; ++i) {
    if (log_sigma - log_sigmas[i] >= 0.0f) ++count;
    if (count > best) {
      best = count;
      low_idx = i;
    }
  }
  low_idx = std::min(low_idx, n - 2);
  const std::size_t high_idx = low_idx + 1;
  const float low = log_sigmas[low_idx];
  const float high = log_sigmas[high_idx];
  float w = (low - log_sigma) / (low - high);
  w = std::clamp(w, 0.0f, 1.0f);
  return static_cast<double>(1.0f - w) * static_cast<double>(low_idx) +
         static_cast<double>(w) * static_cast<double>(high_idx);
}

// ---- conversions --------------------------------------------------------------------------

std::vector<double> to_doubles(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

std::vector<float> to_floats(const std::vector<double>& v) {
  std::vector<float> out;
  out.reserve(v.size());
  for (double d : v) out.push_back(static_cast<float>(d));
  return out;
}

std::vector<float> tensor_to_floats(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  const float* p = c.data_ptr<float>();
  return {p, p + c.numel()};
}

torch::Tensor floats_to_tensor(const std::vector<float>& v) {
  return torch::tensor(v, torch::kFloat32);
}

std::vector<double> round_to_float32(const std::vector<double>& v) {
  std::vector<double> out;
  out.reserve(v.size());
  for (double d : v) out.push_back(static_cast<double>(static_cast<float>(d)));
  return out;
}

void check_step_index(const char* scheduler, int step_index, std::size_t count) {
  if (step_index < 0 || static_cast<std::size_t>(step_index) >= count) {
    throw std::out_of_range(std::string(scheduler) + ": step_index " + std::to_string(step_index) +
                            " is outside [0, " + std::to_string(count) +
                            "); call set_timesteps() first and step once per timestep");
  }
}

}  // namespace diffusiond::sched
