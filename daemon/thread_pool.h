// A small fixed pool of CPU threads running posted jobs in FIFO order (PNG encoding and file
// writes, never on a device thread). A job that throws is caught and logged; nothing escapes.
// Owner: CoreService. Thread-safety: post/wait_idle/shutdown from any thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace diffusiond {

class ThreadPool {
 public:
  ThreadPool(int threads, std::string name);
  ~ThreadPool();  // shutdown()
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Returns false (and drops the job) after shutdown().
  bool post(std::function<void()> job);
  void wait_idle();  // until every posted job has finished
  void shutdown();   // runs the jobs already posted, then joins the threads; idempotent
  std::size_t pending() const;

 private:
  void run();

  std::string name_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> jobs_;
  std::size_t active_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace diffusiond
