#include "daemon/job.h"

#include <algorithm>
#include <chrono>

namespace diffusiond {

namespace {
std::string transition_message(const char* kind, JobStatus from, JobStatus to,
                               const std::string& what) {
  return std::string("illegal ") + kind + " transition for " + what + ": " + to_string(from) +
         " -> " + to_string(to);
}
}  // namespace

void check_job_transition(JobStatus from, JobStatus to, const std::string& what) {
  if (!is_legal_job_transition(from, to))
    throw IllegalTransition(transition_message("job", from, to, what));
}

void check_image_transition(ImageStatus from, ImageStatus to, const std::string& what) {
  if (!is_legal_image_transition(from, to))
    throw IllegalTransition(transition_message("image", from, to, what));
}

JobStatus next_job_status(JobStatus current, const std::vector<ImageView>& images) {
  if (is_terminal(current)) return current;
  bool all_terminal = !images.empty();
  bool any_failed = false, any_cancelled = false, any_started = false;
  for (const auto& image : images) {
    if (!is_terminal(image.status)) all_terminal = false;
    if (image.status == ImageStatus::failed) any_failed = true;
    if (image.status == ImageStatus::cancelled) any_cancelled = true;
    if (image.status != ImageStatus::queued) any_started = true;
  }
  if (all_terminal) {
    if (any_failed) return JobStatus::failed;
    if (any_cancelled) return JobStatus::cancelled;
    return JobStatus::done;
  }
  if (current == JobStatus::queued && any_started) return JobStatus::running;
  return current;
}

JobRecord make_job(const JobRequest& request, const std::string& id, std::int64_t created_ms,
                   const std::string& model) {
  if (request.prompts.empty()) throw std::invalid_argument("request has no prompt");
  if (request.n < 1) throw std::invalid_argument("n must be at least 1");
  JobRecord job;
  job.view.id = id;
  job.view.status = JobStatus::queued;
  job.view.request = request;
  job.view.created_ms = created_ms;
  job.view.model = model;
  const int count = image_count(request);
  for (int k = 0; k < count; ++k) {
    const ImageSpec spec = image_spec(request, k);
    ImageView image;
    image.index = k;
    image.prompt = spec.prompt;
    image.seed = spec.seed;
    image.steps = spec.steps;
    job.view.images.push_back(std::move(image));
  }
  job.attempts.assign(static_cast<std::size_t>(count), 0);
  return job;
}

bool set_image_status(JobRecord& job, int k, ImageStatus to) {
  if (k < 0 || k >= static_cast<int>(job.view.images.size()))
    throw std::out_of_range("job " + job.view.id + " has no image " + std::to_string(k));
  auto& image = job.view.images[static_cast<std::size_t>(k)];
  check_image_transition(image.status, to, job.view.id + "/" + std::to_string(k));
  image.status = to;
  const JobStatus next = next_job_status(job.view.status, job.view.images);
  if (next == job.view.status) return false;
  check_job_transition(job.view.status, next, job.view.id);
  job.view.status = next;
  return true;
}

std::vector<int> cancel_job(JobRecord& job) {
  check_job_transition(job.view.status, JobStatus::cancelled, job.view.id);
  std::vector<int> was_queued;
  for (auto& image : job.view.images) {
    if (image.status == ImageStatus::queued) {
      image.status = ImageStatus::cancelled;
      was_queued.push_back(image.index);
    }
  }
  job.view.status = JobStatus::cancelled;
  job.cancel_requested = true;
  return was_queued;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace diffusiond
