#include "http/client_limits.h"

#include <algorithm>
#include <cmath>

#include "http/server.h"

namespace diffusiond::http_api {

Client client_of(const boost::asio::ip::address& peer, const HttpOptions& options) {
  boost::asio::ip::address a = peer;
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
  }
  return Client{a.to_string(), options.limit_loopback || !a.is_loopback()};
}

RateLimiter::RateLimiter(double rate_per_s, double burst)
    : rate_(rate_per_s), burst_(std::max(1.0, burst)) {}

double RateLimiter::refilled(const Bucket& b, Clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - b.at).count();
  return std::min(burst_, b.tokens + std::max(0.0, elapsed) * rate_);
}

int RateLimiter::take(const std::string& client, Clock::time_point now) {
  if (rate_ <= 0) return 0;
  std::lock_guard lock(mutex_);
  auto [it, fresh] = buckets_.try_emplace(client, Bucket{burst_, now});
  Bucket& b = it->second;
  b.tokens = refilled(b, now);
  b.at = now;
  int wait_s = 0;
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
  } else {
    wait_s = std::max(1, static_cast<int>(std::ceil((1.0 - b.tokens) / rate_)));
  }
  if (fresh && buckets_.size() >= sweep_at_) sweep(now);
  return wait_s;
}

void RateLimiter::sweep(Clock::time_point now) {
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    it = refilled(it->second, now) >= burst_ ? buckets_.erase(it) : std::next(it);
  }
  sweep_at_ = std::max<std::size_t>(1024, 2 * buckets_.size());
}

std::size_t RateLimiter::clients_tracked() const {
  std::lock_guard lock(mutex_);
  return buckets_.size();
}

}  // namespace diffusiond::http_api
