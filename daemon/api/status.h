// Job and image states and their legal transitions: the one place that says which status may
// follow which; and a device's health. Part of diffusiond_api (no dependencies). Pure
// functions; any thread.
//
// Image states:  queued -> running -> done | failed | cancelled;  queued -> cancelled;
//                running -> queued (re-queued: retry on another device, drain, restart).
// Job states:    queued -> running -> done | failed | cancelled;  queued -> cancelled.
// Device health: healthy -> unhealthy (K failures in a row) -> probing (its probe interval
//                passed: it gets one task) -> healthy (the task succeeded) | unhealthy (it
//                failed; the interval doubles); disabled: its model replica failed to load
//                (never given work). The dispatcher (daemon/dispatcher.h) applies it.
#pragma once

#include <optional>
#include <string>

namespace diffusiond {

enum class JobStatus { queued, running, done, failed, cancelled };
// Image tasks share the same five states (and one more legal transition: running -> queued).
using ImageStatus = JobStatus;

const char* to_string(JobStatus s);                               // "queued", "running", ...
std::optional<JobStatus> parse_job_status(const std::string& s);  // inverse; nullopt if unknown

bool is_terminal(JobStatus s);  // done, failed or cancelled
bool is_legal_job_transition(JobStatus from, JobStatus to);
bool is_legal_image_transition(ImageStatus from, ImageStatus to);

enum class DeviceHealth { healthy, unhealthy, probing, disabled };
const char* to_string(DeviceHealth h);  // "healthy", "unhealthy", "probing", "disabled"

}  // namespace diffusiond
