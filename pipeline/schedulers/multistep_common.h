// Pieces shared by the two multistep solvers (DPM-Solver++ and UniPC), which compute their
// schedules and per-step coefficients the same way in diffusers.
// Ref: diffusers v0.27.2 DPMSolverMultistepScheduler / UniPCMultistepScheduler: set_timesteps()
// spacings and _sigma_to_alpha_sigma_t.
// Owner: schedulers (schedB). Thread-safety: free functions without state; any thread.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "pipeline/schedulers/common.h"

namespace diffusiond::sched {

// The multistep solvers' spacings (they differ from DDIM/Euler's: n+1 points, the last dropped):
//   linspace: np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
//   leading:  (np.arange(0, n + 1) * (last_timestep // (n + 1))).round()[::-1][:-1] + offset
//   trailing: np.arange(last_timestep, 0, -T / n).round() - 1
// last_timestep is T, or T minus the steps DPM-Solver clips by lambda_min_clipped.
// The result may hold other than n values for trailing with a clipped last_timestep, as in
// diffusers; callers use its size.
std::vector<int64_t> multistep_timesteps(Spacing spacing, int num_inference_steps,
                                         int64_t last_timestep, int64_t num_train_timesteps,
                                         int64_t steps_offset);

// Ref: _sigma_to_alpha_sigma_t: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t, with
// the torch ops diffusers uses (0-dim float32 tensors in, 0-dim float32 tensors out).
std::pair<torch::Tensor, torch::Tensor> alpha_sigma_from_sigma(const torch::Tensor& sigma);

// lambda = log(alpha_t) - log(sigma_t) of a sigma (0-dim float32), the solvers' log-SNR time.
torch::Tensor lambda_from_sigma(const torch::Tensor& sigma);

// The karras timesteps of the multistep solvers: np.array([_sigma_to_t(s) ...]).round().
std::vector<int64_t> rounded_sigma_timesteps(const std::vector<double>& sigmas,
                                             const std::vector<float>& log_sigmas);

}  // namespace diffusiond::sched
