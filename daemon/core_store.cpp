// CoreService's side of the job store: listings that merge memory with the store, and what
// the store writer reports back (commits retire finished jobs; a failure fails the unfinished
// ones). See core_service.h for the rules.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "daemon/core_service.h"

namespace diffusiond {

ServiceError CoreService::store_failure(const std::exception& e) {
  return ServiceError(ErrorCode::internal, e.what(), "store_error");
}

std::vector<JobView> CoreService::jobs(std::optional<JobStatus> status, int limit,
                                       const std::string& before_id) const {
  limit = std::max(1, limit);
  std::int64_t before = 0;  // seq of the cursor's job; 0 = from the newest
  if (!before_id.empty()) {
    {
      std::lock_guard lock(mu_);
      if (auto it = active_.find(before_id); it != active_.end()) before = it->second.record.seq;
    }
    if (before == 0) {
      std::optional<JobRecord> cursor;
      try {
        if (is_valid_job_id(before_id)) cursor = store_.load(before_id);
      } catch (const std::exception& e) {
        throw store_failure(e);
      }
      if (!cursor)
        throw ServiceError(ErrorCode::invalid_request,
                           "query parameter 'before' names no job: give the 'next' of a listing",
                           "invalid_field", "before");
      before = cursor->seq;
    }
  }
  // Memory first, then the store: a job that leaves memory in between had its last write
  // committed before it left, so the store read that follows sees it. Memory is newer than the
  // store for every job it holds: it wins, and its jobs are listed even when their last change
  // is not committed yet.
  std::vector<JobRecord> merged;
  std::set<std::string> in_memory;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, job] : active_) {
      in_memory.insert(id);
      if ((!status || job.record.view.status == *status) &&
          (before == 0 || job.record.seq < before))
        merged.push_back(job.record);
    }
  }
  std::vector<JobRecord> records;
  try {
    records = store_.list(status, limit, before);  // the read connection: never waits on a write
  } catch (const std::exception& e) {
    throw store_failure(e);
  }
  for (auto& record : records)
    if (!in_memory.count(record.view.id)) merged.push_back(std::move(record));
  std::sort(merged.begin(), merged.end(),
            [](const JobRecord& a, const JobRecord& b) { return a.seq > b.seq; });
  if (merged.size() > static_cast<std::size_t>(limit))
    merged.resize(static_cast<std::size_t>(limit));
  std::vector<JobView> views;
  views.reserve(merged.size());
  for (auto& record : merged) views.push_back(std::move(record.view));
  return views;
}

void CoreService::writes_committed(StoreWriter::Ticket last) {
  std::lock_guard lock(mu_);
  for (auto it = active_.begin(); it != active_.end();) {
    if (it->second.retiring && it->second.last_write <= last) {
      const JobRecord& record = it->second.record;
      if (!record.idempotency_key.empty())  // from now on found in the store
        idempotency_.erase({record.client, record.idempotency_key});
      it = active_.erase(it);
    } else
      ++it;
  }
}

void CoreService::writes_failed(const std::vector<std::string>& job_ids, const std::string& error) {
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    if (!store_failed_) {
      store_error_ = error;
      store_failed_ = true;
    }
    std::vector<std::string> ids;
    for (const auto& [id, job] : active_) ids.push_back(id);
    for (const auto& id : ids)
      if (ActiveJob* job = find_locked(id)) fail_for_store_locked(*job, error, to_flush);
    // A finished job whose last write failed stays in memory: it is the only record of it.
    for (const auto& id : job_ids)
      if (ActiveJob* job = find_locked(id)) job->retiring = false;
  }
  flush(to_flush);
}

void CoreService::writes_stalled(const std::string& error) {
  storage_->report_full("the job store: " + error);  // the writer retries; nothing fails
}

void CoreService::fail_for_store_locked(ActiveJob& job, const std::string& error,
                                        std::vector<std::string>& flush) {
  const std::string why = "the job store cannot be written: " + error;
  bool queued_left = false;
  for (const auto& image : job.record.view.images)
    queued_left = queued_left || image.status == ImageStatus::queued;
  if (queued_left) dispatcher_.cancel_job(job.record.view.id);
  for (auto& image : job.record.view.images) {
    if (is_terminal(image.status)) continue;
    // A running image fails now and its device stops at the next step.
    if (image.status == ImageStatus::queued)
      fail_unstarted_locked(job, image.index, why, flush);
    else
      fail_image_locked(job, image.index, why, flush);
  }
}

}  // namespace diffusiond
