#include "daemon/store_writer.h"

#include <spdlog/spdlog.h>

#include <pthread.h>
#include <algorithm>

namespace diffusiond {

StoreWriter::StoreWriter(JobStore& store, Listener& listener)
    : store_(store), listener_(listener), thread_([this] { run(); }) {}

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

std::string StoreWriter::wait(Ticket ticket) {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return settled_ >= ticket; });
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

void StoreWriter::run() {
  pthread_setname_np(pthread_self(), "store writer");
  for (;;) {
    std::vector<JobStore::Write> batch;
    std::vector<std::string> ids;
    Ticket last = 0;
    std::string error;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, nothing left
      last = queue_.back().first;
      for (auto& [ticket, write] : queue_) {
        ids.push_back(write.job.view.id);
        batch.push_back(std::move(write));
      }
      queue_.clear();
      error = error_;  // a failed store stays failed
    }
    if (error.empty()) {
      try {
        store_.apply(batch);
      } catch (const std::exception& e) {
        error = e.what();
        spdlog::critical(
            "job store: {}; jobs in progress fail and the daemon is not ready "
            "until it is restarted with a working --data-dir",
            error);
      }
    }
    {
      std::lock_guard lock(mu_);
      if (error.empty())
        committed_ = last;
      else if (error_.empty())
        error_ = error;
      settled_ = last;
    }
    done_cv_.notify_all();
    try {
      if (error.empty()) {
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
