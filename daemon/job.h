// The job model: a request becomes a job of K image tasks, and both follow a checked state
// machine. Torch-free, no I/O.
//
// Image states:  queued -> running -> done | failed | cancelled;  queued -> cancelled;
//                running -> queued (re-queued: retry on another device, drain, restart).
// Job states:    queued -> running -> done | failed | cancelled;  queued -> cancelled.
// A job's status follows its images (next_job_status): it becomes running when its first image
// starts and stays running (even when an image is re-queued) until every image is terminal; then
// it is failed if any image failed (after its retry), else cancelled if any image was cancelled,
// else done. Other images of a job keep running when one fails (their PNGs stay useful).
// cancel() makes the job cancelled at once; images still running stop at their next step.
//
// Thread-safety: value types and pure functions; callers serialise access to a JobRecord.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/api/job_id.h"
#include "daemon/api/service.h"

namespace diffusiond {

class IllegalTransition : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// The legal transitions are daemon/api/status.h's. Throw IllegalTransition naming both states and
// `what` (a job id or "job/k").
void check_job_transition(JobStatus from, JobStatus to, const std::string& what);
void check_image_transition(ImageStatus from, ImageStatus to, const std::string& what);

// The status the job should have now, given its current status and its images' statuses.
JobStatus next_job_status(JobStatus current, const std::vector<ImageView>& images);

// The daemon's full record of a job: what the API shows plus bookkeeping.
struct JobRecord {
  JobView view;
  std::int64_t seq = 0;           // submission order (FIFO within a priority), from the store
  std::vector<int> attempts;      // per image: how many times it started
  bool cancel_requested = false;  // in memory only: running images stop at their next step
  std::string client;             // who submitted it (SubmitContext::client)
  std::string idempotency_key;    // "" = none; unique per client
  std::string fingerprint;        // of the submitted request, for the idempotency check
  bool previews = false;          // in memory only: SubmitContext::previews
};

// A new job in state queued: images prompt-major, image k = prompts[k / n] with seed + k.
JobRecord make_job(const JobRequest& request, const std::string& id, std::int64_t created_ms,
                   const std::string& model);

// Applies a checked transition to image k (throws IllegalTransition) and keeps the job's status
// in step via next_job_status (also checked). Returns true when the job's status changed.
bool set_image_status(JobRecord& job, int k, ImageStatus to);
// Cancels the job: every queued image becomes cancelled, the job becomes cancelled (checked).
// Returns the indices of the images that were queued.
std::vector<int> cancel_job(JobRecord& job);

std::int64_t unix_ms_now();

}  // namespace diffusiond
