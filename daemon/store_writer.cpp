#include "daemon/store_writer.h"

#include <spdlog/spdlog.h>

#include <pthread.h>
#include <algorithm>

namespace diffusiond {

StoreWriter::StoreWriter(JobStore& store, Listener& listener, std::chrono::milliseconds retry_every)
    : store_(store), listener_(listener), retry_every_(retry_every), thread_([this] { run(); }) {}

StoreWriter::~StoreWriter() {
  stop();
}

StoreWriter::Ticket StoreWriter::enqueue(JobStore::Write write) {
  std::lock_guard lock(mu_);
  const Ticket ticket = next_++;
  if (exited_) {  // stopped: fails at once (error_ says why)
    settled_ = ticket;
    return ticket;
  }
  queue_.emplace_back(ticket, std::move(write));
  work_cv_.notify_one();
  return ticket;
}

std::string StoreWriter::wait(Ticket ticket, bool* storage_full) {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return settled_ >= ticket || rejected_.count(ticket); });
  if (storage_full) *storage_full = false;
  if (auto it = rejected_.find(ticket); it != rejected_.end()) {
    std::string error = std::move(it->second);
    rejected_.erase(it);
    if (storage_full) *storage_full = true;
    return error;
  }
  return committed_ >= ticket ? std::string() : error_;
}

std::string StoreWriter::flush() {
  Ticket last = 0;
  {
    std::lock_guard lock(mu_);
    last = next_ - 1;
  }
  return wait(last);
}

bool StoreWriter::failed() const {
  std::lock_guard lock(mu_);
  return !error_.empty();
}

std::string StoreWriter::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

void StoreWriter::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    work_cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void StoreWriter::stall_locked(std::vector<std::pair<Ticket, JobStore::Write>>& batch,
                               const std::string& error) {
  stalled_ = true;
  for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
    if (it->second.insert)
      rejected_[it->first] = error;  // its submitter answers "storage full"; never accepted
    else
      queue_.push_front(std::move(*it));  // retried, in the same order, before newer writes
  }
}

void StoreWriter::run() {
  pthread_setname_np(pthread_self(), "store writer");
  for (;;) {
    std::vector<std::pair<Ticket, JobStore::Write>> batch;
    std::string error;
    bool last_try = false;
    {
      std::unique_lock lock(mu_);
      if (stalled_)  // a full disk: wait before the next attempt (a stop ends the wait)
        work_cv_.wait_for(lock, retry_every_, [&] { return stopping_; });
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, nothing left
      last_try = stopping_;
      for (auto& entry : queue_) batch.push_back(std::move(entry));
      queue_.clear();
      error = error_;  // a failed store stays failed
    }
    const Ticket last = batch.back().first;
    bool full = false;
    if (error.empty()) {
      std::vector<JobStore::Write> writes;  // moved out and, if kept for a retry, back
      writes.reserve(batch.size());
      for (auto& entry : batch) writes.push_back(std::move(entry.second));
      try {
        store_.apply(writes);
      } catch (const StoreError& e) {
        error = e.what();
        full = e.storage_full() && !last_try;
      } catch (const std::exception& e) {
        error = e.what();
      }
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i].second = std::move(writes[i]);
      if (!error.empty() && !full)
        spdlog::critical(
            "job store: {}; jobs in progress fail and the daemon is not ready "
            "until it is restarted with a working --data-dir",
            error);
    }
    std::vector<std::string> ids;
    for (const auto& [ticket, write] : batch) ids.push_back(write.job.view.id);
    {
      std::lock_guard lock(mu_);
      if (full) {
        stall_locked(batch, error);
      } else {
        stalled_ = false;
        if (error.empty())
          committed_ = last;
        else if (error_.empty())
          error_ = error;
        settled_ = last;
      }
    }
    done_cv_.notify_all();
    try {
      if (full) {
        listener_.writes_stalled(error);
      } else if (error.empty()) {
        listener_.writes_committed(last);
      } else {
        std::sort(ids.begin(), ids.end());
        ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
        listener_.writes_failed(ids, error);
      }
    } catch (const std::exception& e) {
      spdlog::error("job store writer: listener failed: {}", e.what());
    }
  }
  // Stopped: whatever is enqueued from now on fails at once.
  std::lock_guard lock(mu_);
  if (error_.empty()) error_ = "the job store is closed";
  exited_ = true;
}

}  // namespace diffusiond
