// The one small interface every sampler implements, plus the registry of names.
// Ref: diffusers SchedulerMixin (set_timesteps / scale_model_input / step).
// Owner: one Scheduler per generation, used by one thread (the device worker); not shared.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace diffusiond {

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Computes timesteps (and sigmas) for num_inference_steps, exactly as diffusers does.
  virtual void set_timesteps(int num_inference_steps) = 0;
  // One value per model evaluation, in order (Heun repeats, PNDM repeats its first): what the
  // UNet receives as its timestep and what step() / scale_model_input() are called with.
  virtual const std::vector<double>& timesteps() const = 0;
  // The sigma schedule for sigma-based samplers (incl. the trailing 0); nullopt otherwise.
  virtual std::optional<std::vector<double>> sigmas() const { return std::nullopt; }
  virtual double init_noise_sigma() const = 0;

  // step_index: position in timesteps() (the loop counter). sample: [B,4,h,w] on any device.
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, int step_index) = 0;
  // Returns prev_sample. Stochastic samplers draw noise with torch::randn(sample.sizes(),
  // generator, float32) on the CPU and move it to sample's device/dtype, like diffusers'
  // randn_tensor with a CPU generator.
  virtual torch::Tensor step(const torch::Tensor& model_output, int step_index,
                             const torch::Tensor& sample, at::Generator& generator) = 0;

  // Batched form of step(): generators[i] draws the noise of batch row i, as diffusers'
  // randn_tensor does with a list of generators (row i gets torch.randn((1, ...),
  // generator=generators[i])), so an image never depends on its batch neighbours. With one
  // generator this is exactly step(..., generators[0]). generators.size() must be 1 or B.
  torch::Tensor step_batch(const torch::Tensor& model_output, int step_index,
                           const torch::Tensor& sample, std::vector<at::Generator>& generators);

  // Drops batch rows from the sampler's state between two steps (an image left the batch):
  // `rows` [B'] int64 are the rows kept, in order. Stateless samplers have nothing to drop; the
  // multistep ones (DPM++ 2M, UniPC, LMS, PNDM, Heun) keep their history of those rows only, so
  // the images that stay step exactly as before. Their generators are the caller's to drop.
  virtual void keep_rows(const torch::Tensor& /*rows*/) {}

 protected:
  // The noise a sampler draws inside step(): torch::randn(like.sizes(), generator) in like's
  // dtype on the CPU, then moved to like's device (diffusers' randn_tensor with a CPU generator;
  // diffusers passes model_output as `like`). Inside step_batch() with B generators each batch
  // row comes from its own generator. Every sampler must draw its step noise through this.
  // On a CUDA device the draw goes through pinned memory and is copied without blocking, so the
  // step does not wait for the device (no host-device synchronisation inside the loop).
  torch::Tensor step_noise(const torch::Tensor& like, at::Generator& generator) const;
  // The same draw, left on the CPU: for a sampler that draws (to advance the generators as
  // diffusers does) but does not use the noise (Euler with s_churn = 0).
  torch::Tensor step_noise_on_host(const torch::Tensor& like, at::Generator& generator) const;
  // keep_rows() helper: t = t[rows] when t is defined and has a batch dimension.
  static void select_rows(torch::Tensor& t, const torch::Tensor& rows);

 private:
  std::vector<at::Generator>* row_generators_ = nullptr;  // set only during step_batch()
};

// Canonical names: pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lms, heun, unipc, lcm.
struct SchedulerEntry {
  std::string name;                  // canonical
  std::string diffusers_class;       // "EulerAncestralDiscreteScheduler"
  std::vector<std::string> aliases;  // AUTOMATIC1111 display names
};
const std::vector<SchedulerEntry>& scheduler_registry();

// Canonical name for a name or alias, case-insensitive; nullopt when unknown.
std::optional<std::string> canonical_scheduler_name(const std::string& name_or_alias);
// The canonical name matching a scheduler_config.json (_class_name, use_karras_sigmas).
// Throws std::invalid_argument naming the class when no sampler here implements it.
std::string default_scheduler_name(const nlohmann::json& model_scheduler_config);

// Builds the sampler from the model's scheduler_config.json the way
// SchedulerClass.from_config(pipe.scheduler.config) does (unknown keys ignored, missing keys take
// the class defaults), plus the name's own overrides (dpmpp_2m_karras: use_karras_sigmas=true).
// Throws std::invalid_argument listing the valid names when the name is unknown.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name_or_alias,
                                          const nlohmann::json& model_scheduler_config);

}  // namespace diffusiond
