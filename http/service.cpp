#include "http/service.h"

namespace diffusiond {

const char* to_string(JobStatus s) {
  switch (s) {
    case JobStatus::queued: return "queued";
    case JobStatus::running: return "running";
    case JobStatus::done: return "done";
    case JobStatus::failed: return "failed";
    case JobStatus::cancelled: return "cancelled";
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

const char* to_string(JobEvent::Kind k) {
  switch (k) {
    case JobEvent::Kind::queued: return "queued";
    case JobEvent::Kind::started: return "started";
    case JobEvent::Kind::progress: return "progress";
    case JobEvent::Kind::image: return "image";
    case JobEvent::Kind::done: return "done";
    case JobEvent::Kind::failed: return "failed";
    case JobEvent::Kind::cancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace diffusiond
