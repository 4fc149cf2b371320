// Shared pieces of every sampler: from_config-style config reading, beta/alpha schedules, the
// numpy-exact timestep spacings, sigma interpolation and the Karras schedule.
// Ref: diffusers v0.27.2 ConfigMixin.extract_init_dict, betas_for_alpha_bar,
// rescale_zero_terminal_snr and the set_timesteps() of each scheduler class.
// Owner: schedulers (schedA). Thread-safety: free functions and immutable values; any thread.
//
// Exactness rules followed here (each diffusers class computes in this way):
//  - betas / alphas_cumprod are float32 torch tensors built with the same torch ops and order;
//  - timestep spacings are computed in float64 with numpy's own arange/linspace/round semantics
//    and only then cast (to int64 or float32) by the caller, as each class does;
//  - np.interp is reproduced bit for bit (float64).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace diffusiond::sched {

// What SchedulerClass.from_config(config) sees: keys named in "_use_default_values" are dropped
// (so the class's own default applies), private "_..." keys and unknown keys are ignored, a
// missing or null key takes the class default passed to get_or(). Errors name the class and key.
class SchedulerConfig {
 public:
  SchedulerConfig(const nlohmann::json& model_config, std::string class_name);

  const std::string& class_name() const { return class_name_; }
  const nlohmann::json& json() const { return json_; }
  bool has(const std::string& key) const;  // present and not null

  // The value of key, or fallback when absent/null; std::invalid_argument on a wrong type.
  template <typename T>
  T get_or(const std::string& key, const T& fallback) const {
    auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return fallback;
    try {
      return it->get<T>();
    } catch (const nlohmann::json::exception&) {
      throw_wrong_type(key);
    }
  }
  std::string get_or(const std::string& key, const char* fallback) const {
    return get_or<std::string>(key, std::string(fallback));
  }
  std::optional<double> get_optional_double(const std::string& key) const;

  // Overrides a key (like a kwarg of from_config), e.g. use_karras_sigmas for dpmpp_2m_karras.
  void set(const std::string& key, nlohmann::json value) { json_[key] = std::move(value); }

  // std::invalid_argument("DDIMScheduler: thresholding=true is not supported (...)").
  [[noreturn]] void unsupported(const std::string& key, const std::string& value,
                                const std::string& what_is_supported) const;

 private:
  [[noreturn]] void throw_wrong_type(const std::string& key) const;
  nlohmann::json json_;
  std::string class_name_;
};

// ---- beta / alpha schedules ---------------------------------------------------------------

// The class defaults of the beta keys (they differ per class: Heun and LCM default to SD's).
struct BetaDefaults {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";
  bool supports_exp = false;               // HeunDiscrete accepts beta_schedule "exp"
  bool supports_rescale_zero_snr = false;  // the class has rescale_betas_zero_snr
};

struct NoiseSchedule {
  int64_t num_train_timesteps = 1000;
  torch::Tensor betas;           // [T] float32
  torch::Tensor alphas;          // [T] float32, 1 - betas
  torch::Tensor alphas_cumprod;  // [T] float32, torch.cumprod(alphas)
  bool rescaled_zero_snr = false;
};

// trained_betas | linear | scaled_linear | squaredcos_cap_v2 (| exp), then optional zero-SNR
// rescale, exactly as the classes' __init__ do.
NoiseSchedule make_noise_schedule(const SchedulerConfig& cfg, const BetaDefaults& defaults);
// Ref: betas_for_alpha_bar (float64 math, float32 result). transform: "cosine" | "exp".
torch::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, const std::string& transform,
                                  double max_beta = 0.999);
// Ref: rescale_zero_terminal_snr (float32 torch ops).
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas);

// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 as float32 (torch ops), in training order.
std::vector<float> train_sigmas(const torch::Tensor& alphas_cumprod);
// np.log of a float32 array (float32 results).
std::vector<float> log_f32(const std::vector<float>& values);

// ---- prediction type and spacing ----------------------------------------------------------

enum class Prediction { Epsilon, VPrediction, Sample };
// Reads prediction_type (default "epsilon"); `allowed` lists the ones this class implements.
Prediction read_prediction_type(const SchedulerConfig& cfg, const std::vector<Prediction>& allowed);
const char* to_string(Prediction p);

enum class Spacing { Linspace, Leading, Trailing };
// Reads timestep_spacing with the class default ("leading" for PNDM/DDIM/LCM, else "linspace").
Spacing read_timestep_spacing(const SchedulerConfig& cfg, const char* class_default);

// ---- numpy-exact primitives (float64) -----------------------------------------------------

// np.linspace(start, stop, num) (endpoint=True): start + i*step, last element = stop.
std::vector<double> np_linspace(double start, double stop, int64_t num);
// np.arange(start, stop, step) for float arguments (numpy's length and fill rule).
std::vector<double> np_arange(double start, double stop, double step);
// np.round / np.rint: round half to even.
double np_round(double x);
// np.interp(x, xp, fp) with xp increasing; values outside clamp to fp's ends.
std::vector<double> np_interp(const std::vector<double>& x, const std::vector<double>& xp,
                              const std::vector<double>& fp);

// ---- the three spacings, descending, float64 before each class's own cast -----------------
// linspace: np.linspace(0, T-1, n)[::-1] (not rounded: callers round or cast to float32).
std::vector<double> linspace_timesteps(int64_t num_train_timesteps, int num_inference_steps);
// leading: (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset.
std::vector<double> leading_timesteps(int64_t num_train_timesteps, int num_inference_steps,
                                      int64_t steps_offset);
// trailing: np.round(np.arange(T, 0, -T/n)) - 1 (already descending).
std::vector<double> trailing_timesteps(int64_t num_train_timesteps, int num_inference_steps);

// The float32 timesteps of the sigma samplers (Euler, Euler a, LMS, Heun all compute them the
// same way: the spacing in float64, cast to float32, then +steps_offset / -1 in float32).
std::vector<double> float32_timesteps(Spacing spacing, int64_t num_train_timesteps,
                                      int num_inference_steps, int64_t steps_offset);

// ---- sigma helpers ------------------------------------------------------------------------

// init_noise_sigma of the sigma samplers: sigmas.max() for linspace/trailing spacing, else
// (max**2 + 1) ** 0.5, in float32 tensor math. sigmas: 1-D float32 CPU tensor.
double sigma_init_noise(const torch::Tensor& sigmas, Spacing spacing);
// sample / (sigma**2 + 1) ** 0.5 with sigma a 0-dim float32 CPU tensor (scale_model_input).
torch::Tensor scale_by_sigma(const torch::Tensor& sample, const torch::Tensor& sigma);

// Ref: _convert_to_karras: (max^(1/rho) + ramp*(min^(1/rho) - max^(1/rho)))^rho, ramp =
// np.linspace(0, 1, n), float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int num_inference_steps,
                                  double rho = 7.0);
// Ref: _sigma_to_t: the fractional training timestep of a sigma, interpolating in log space
// against the float32 log_sigmas of the training schedule (float64 result).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// ---- small conversions --------------------------------------------------------------------

std::vector<double> to_doubles(const std::vector<float>& v);
std::vector<float> to_floats(const std::vector<double>& v);   // each value rounded to float32
std::vector<float> tensor_to_floats(const torch::Tensor& t);  // 1-D float32 tensor -> values
torch::Tensor floats_to_tensor(const std::vector<float>& v);  // -> 1-D float32 CPU tensor
// The values a float32 tensor would hold, back as doubles (timesteps of the sigma samplers).
std::vector<double> round_to_float32(const std::vector<double>& v);

// Throws std::out_of_range naming the scheduler when step_index is outside [0, count).
void check_step_index(const char* scheduler, int step_index, std::size_t count);

}  // namespace diffusiond::sched
