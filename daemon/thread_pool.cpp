#include "daemon/thread_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

namespace diffusiond {

ThreadPool::ThreadPool(int threads, std::string name) : name_(std::move(name)) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { run(); });
}

ThreadPool::~ThreadPool() {
  shutdown();
}

bool ThreadPool::post(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void ThreadPool::wait_idle() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return jobs_.empty() && active_ == 0; });
}

void ThreadPool::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  std::lock_guard lock(mu_);
  threads_.clear();
}

std::size_t ThreadPool::pending() const {
  std::lock_guard lock(mu_);
  return jobs_.size() + active_;
}

void ThreadPool::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
      ++active_;
    }
    try {
      job();
    } catch (const std::exception& e) {
      spdlog::error("{}: a job failed: {}", name_, e.what());
    } catch (...) {
      spdlog::error("{}: a job failed with a non-standard exception", name_);
    }
    {
      std::lock_guard lock(mu_);
      --active_;
      if (jobs_.empty() && active_ == 0) idle_cv_.notify_all();
    }
  }
}

}  // namespace diffusiond
