#include "daemon/event_hub.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace diffusiond {

class EventHub::Handle : public Subscription {
 public:
  Handle(EventHub& hub, std::string job_id, std::shared_ptr<Subscriber> subscriber)
      : hub_(hub), job_id_(std::move(job_id)), subscriber_(std::move(subscriber)) {}
  ~Handle() override { hub_.unsubscribe(job_id_, subscriber_); }

 private:
  EventHub& hub_;
  std::string job_id_;
  std::shared_ptr<Subscriber> subscriber_;
};

std::unique_ptr<Subscription> EventHub::subscribe(const std::string& job_id, Callback callback) {
  auto subscriber = std::make_shared<Subscriber>();
  subscriber->callback = std::move(callback);
  {
    std::lock_guard lock(mu_);
    topics_[job_id].subscribers.push_back(subscriber);
  }
  return std::make_unique<Handle>(*this, job_id, subscriber);
}

void EventHub::unsubscribe(const std::string& job_id,
                           const std::shared_ptr<Subscriber>& subscriber) {
  {
    // Waits for a callback running on another thread; re-entrant on the delivering thread.
    std::lock_guard call(subscriber->call_mu);
    subscriber->alive = false;
  }
  std::lock_guard lock(mu_);
  auto it = topics_.find(job_id);
  if (it == topics_.end()) return;
  auto& subs = it->second.subscribers;
  subs.erase(std::remove(subs.begin(), subs.end(), subscriber), subs.end());
  if (subs.empty() && !it->second.delivering) topics_.erase(it);
}

void EventHub::enqueue(const JobEvent& event) {
  std::lock_guard lock(mu_);
  auto it = topics_.find(event.job_id);
  if (it == topics_.end()) return;
  it->second.pending.push_back(event);
}

void EventHub::flush(const std::string& job_id) {
  std::unique_lock lock(mu_);
  auto it = topics_.find(job_id);
  if (it == topics_.end() || it->second.delivering) return;  // the deliverer will drain it
  it->second.delivering = true;
  for (;;) {
    it = topics_.find(job_id);  // the map may have changed while unlocked
    auto& topic = it->second;
    if (topic.pending.empty()) {
      topic.delivering = false;
      if (topic.subscribers.empty()) topics_.erase(it);
      return;
    }
    JobEvent event = std::move(topic.pending.front());
    topic.pending.pop_front();
    auto subscribers = topic.subscribers;
    lock.unlock();
    for (const auto& subscriber : subscribers) {
      std::lock_guard call(subscriber->call_mu);
      if (!subscriber->alive) continue;
      try {
        subscriber->callback(event);
      } catch (const std::exception& e) {
        spdlog::warn("event subscriber of job {} threw: {}", job_id, e.what());
      } catch (...) {
        spdlog::warn("event subscriber of job {} threw", job_id);
      }
    }
    lock.lock();
  }
}

std::size_t EventHub::subscriber_count(const std::string& job_id) const {
  std::lock_guard lock(mu_);
  auto it = topics_.find(job_id);
  return it == topics_.end() ? 0 : it->second.subscribers.size();
}

}  // namespace diffusiond
