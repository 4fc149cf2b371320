// Per-job event fan-out with in-order delivery.
// Producers call enqueue() while holding the lock that orders the job's state changes, then
// flush() after releasing it: events of one job are delivered in enqueue order, one at a time,
// by whichever thread flushes first (never under the caller's lock), so callbacks may call back
// into the service. Destroying a Subscription waits for a callback in progress on another
// thread; after the destructor returns, no callback of it runs.
// Owner: CoreService. Thread-safety: every method from any thread.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond {

class EventHub {
 public:
  using Callback = std::function<void(const JobEvent&)>;

  std::unique_ptr<Subscription> subscribe(const std::string& job_id, Callback callback);
  void enqueue(const JobEvent& event);  // dropped when the job has no subscriber
  void flush(const std::string& job_id);
  std::size_t subscriber_count(const std::string& job_id) const;

 private:
  struct Subscriber {
    std::recursive_mutex call_mu;  // held while the callback runs
    bool alive = true;
    Callback callback;
  };
  struct Topic {
    std::deque<JobEvent> pending;
    bool delivering = false;
    std::vector<std::shared_ptr<Subscriber>> subscribers;
  };
  class Handle;
  void unsubscribe(const std::string& job_id, const std::shared_ptr<Subscriber>& subscriber);

  mutable std::mutex mu_;
  std::map<std::string, Topic> topics_;
};

}  // namespace diffusiond
