// One factory per sampler file; make_scheduler() (registry.cpp) picks among them by name.
// Each takes the model's scheduler_config.json as-is and reads it the way
// SchedulerClass.from_config(config) does (see sched::SchedulerConfig in common.h).
// Owner: schedulers. Thread-safety: free functions; each call builds an independent Scheduler.
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "pipeline/schedulers/scheduler.h"

namespace diffusiond {

std::unique_ptr<Scheduler> make_pndm_scheduler(const nlohmann::json& cfg);   // pndm.cpp
std::unique_ptr<Scheduler> make_ddim_scheduler(const nlohmann::json& cfg);   // ddim.cpp
std::unique_ptr<Scheduler> make_euler_scheduler(const nlohmann::json& cfg);  // euler.cpp
std::unique_ptr<Scheduler> make_euler_ancestral_scheduler(
    const nlohmann::json& cfg);                                             // euler_ancestral.cpp
std::unique_ptr<Scheduler> make_lms_scheduler(const nlohmann::json& cfg);   // lms.cpp
std::unique_ptr<Scheduler> make_heun_scheduler(const nlohmann::json& cfg);  // heun.cpp
// DPMSolverMultistepScheduler (dpmsolver++, order 2). karras=true forces use_karras_sigmas=true
// (dpmpp_2m_karras); karras=false forces it off (dpmpp_2m), whatever the model config says.
std::unique_ptr<Scheduler> make_dpmpp_2m_scheduler(const nlohmann::json& cfg,
                                                   bool karras);             // dpmpp_2m.cpp
std::unique_ptr<Scheduler> make_unipc_scheduler(const nlohmann::json& cfg);  // unipc.cpp
std::unique_ptr<Scheduler> make_lcm_scheduler(const nlohmann::json& cfg);    // lcm.cpp

}  // namespace diffusiond
