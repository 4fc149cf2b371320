#include "daemon/api/status.h"

namespace diffusiond {

const char* to_string(JobStatus s) {
  switch (s) {
    case JobStatus::queued:
      return "queued";
    case JobStatus::running:
      return "running";
    case JobStatus::done:
      return "done";
    case JobStatus::failed:
      return "failed";
    case JobStatus::cancelled:
      return "cancelled";
  }
  return "unknown";
}

std::optional<JobStatus> parse_job_status(const std::string& s) {
  for (JobStatus v : {JobStatus::queued, JobStatus::running, JobStatus::done, JobStatus::failed,
                      JobStatus::cancelled}) {
    if (s == to_string(v)) return v;
  }
  return std::nullopt;
}

bool is_terminal(JobStatus s) {
  return s == JobStatus::done || s == JobStatus::failed || s == JobStatus::cancelled;
}

bool is_legal_job_transition(JobStatus from, JobStatus to) {
  switch (from) {
    case JobStatus::queued:
      return to == JobStatus::running || to == JobStatus::cancelled;
    case JobStatus::running:
      return to == JobStatus::done || to == JobStatus::failed || to == JobStatus::cancelled;
    default:
      return false;  // terminal states are final
  }
}

bool is_legal_image_transition(ImageStatus from, ImageStatus to) {
  if (from == ImageStatus::running && to == ImageStatus::queued) return true;  // re-queue
  return is_legal_job_transition(from, to);
}

const char* to_string(DeviceHealth h) {
  switch (h) {
    case DeviceHealth::healthy:
      return "healthy";
    case DeviceHealth::unhealthy:
      return "unhealthy";
    case DeviceHealth::probing:
      return "probing";
    case DeviceHealth::disabled:
      return "disabled";
  }
  return "unknown";
}

}  // namespace diffusiond
