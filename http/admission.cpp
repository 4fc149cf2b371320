#include "http/admission.h"

#include <algorithm>

#include "http/client_limits.h"
#include "http/server.h"

namespace diffusiond::http_api {

Admission::Admission(const HttpOptions& options)
    : options_(options),
      cap_(std::max(1, options.max_connections)),
      per_client_cap_(std::max(1, options.max_connections_per_client)),
      reserve_(std::max(0, options.over_cap_slots)) {}

void Admission::count_locked(const Slot& s, int delta) {
  (s.probe ? probes_ : admitted_) += delta;
  if (s.limited) {
    auto it = per_client_.try_emplace(s.client, 0).first;
    it->second += delta;
    if (it->second <= 0) per_client_.erase(it);
  }
}

std::shared_ptr<Session> Admission::evict_locked(
    std::unordered_map<std::uint64_t, Slot>::iterator it) {
  Slot& s = it->second;
  idle_.erase(s.idle_at);
  s.is_idle = false;
  s.evicted = true;
  count_locked(s, -1);
  return s.session.lock();
}

Admission::Decision Admission::admit(const boost::asio::ip::address& peer) {
  const Client client = client_of(peer, options_);
  Decision d;
  std::lock_guard lock(mutex_);
  if (client.limited) {
    const auto mine = per_client_.find(client.address);
    if (mine != per_client_.end() && mine->second >= per_client_cap_) {
      // The client's own longest-idle connection makes room, else it is refused.
      const auto own = std::find_if(idle_.begin(), idle_.end(), [&](std::uint64_t id) {
        return slots_.at(id).client == client.address;
      });
      if (own == idle_.end()) {
        d.verdict = Verdict::refuse_client;
        return d;
      }
      d.victim = evict_locked(slots_.find(*own));
      d.evicted = true;
    }
  }
  bool probe = false;
  if (admitted_ >= cap_) {
    if (!idle_.empty()) {
      d.victim = evict_locked(slots_.find(idle_.front()));
      d.evicted = true;
    } else if (probes_ < reserve_) {
      probe = true;
    } else {
      d.verdict = Verdict::refuse_full;
      return d;
    }
  }
  d.verdict = probe ? Verdict::probe : Verdict::admit;
  d.slot = next_slot_++;
  Slot& s = slots_[d.slot];
  s.client = client.address;
  s.limited = client.limited;
  s.probe = probe;
  count_locked(s, +1);
  if (!probe) mark_idle_locked(d.slot, s);  // no byte yet: idle from the start
  return d;
}

Admission::Idle Admission::idle(std::uint64_t slot, std::weak_ptr<Session> session) {
  std::lock_guard lock(mutex_);
  const auto it = slots_.find(slot);
  if (it == slots_.end() || it->second.evicted) return Idle::evicted;
  Slot& s = it->second;
  s.session = std::move(session);
  if (s.probe) return Idle::pressure;  // a probe's header is always due soon
  mark_idle_locked(slot, s);
  return admitted_ * 4 >= cap_ * 3 ? Idle::pressure : Idle::calm;
}

void Admission::mark_idle_locked(std::uint64_t id, Slot& s) {
  if (s.is_idle) return;
  s.idle_at = idle_.insert(idle_.end(), id);
  s.is_idle = true;
}

bool Admission::busy(std::uint64_t slot) {
  std::lock_guard lock(mutex_);
  const auto it = slots_.find(slot);
  if (it == slots_.end() || it->second.evicted) return false;
  Slot& s = it->second;
  if (s.is_idle) {
    idle_.erase(s.idle_at);
    s.is_idle = false;
  }
  return true;
}

void Admission::release(std::uint64_t slot) {
  std::lock_guard lock(mutex_);
  const auto it = slots_.find(slot);
  if (it == slots_.end()) return;
  Slot& s = it->second;
  if (s.is_idle) idle_.erase(s.idle_at);
  if (!s.evicted) count_locked(s, -1);
  slots_.erase(it);
}

int Admission::admitted() const {
  std::lock_guard lock(mutex_);
  return admitted_;
}

}  // namespace diffusiond::http_api
