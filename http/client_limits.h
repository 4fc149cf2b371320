// Per-client request-rate limit (a token bucket per client address) and the rule of which
// clients the per-client limits apply to.
// Owner: HttpServerImpl (one RateLimiter per server), referenced by ServerContext.
// Thread-safety: RateLimiter is thread-safe (a mutex, nothing slow under it); client_of is pure.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>

namespace diffusiond {
struct HttpOptions;
}

namespace diffusiond::http_api {

// Whom a per-client limit counts: the peer's IP address (an IPv4-mapped IPv6 address as IPv4;
// IPv6 by the whole address). `limited` is false for a loopback peer unless
// HttpOptions::limit_loopback: on loopback the peer is a local process or a reverse proxy that
// speaks for every user at once, so limiting it would limit everyone together.
struct Client {
  std::string address;
  bool limited = true;
};
Client client_of(const boost::asio::ip::address& peer, const HttpOptions& options);

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  // rate_per_s <= 0: no limit. burst: the bucket's size (at least 1 token).
  RateLimiter(double rate_per_s, double burst);

  // Takes one token from `client`'s bucket. 0: allowed; otherwise refused, and the whole
  // seconds (at least 1) until a token is there again (for Retry-After).
  int take(const std::string& client, Clock::time_point now);

  std::size_t clients_tracked() const;

 private:
  struct Bucket {
    double tokens;
    Clock::time_point at;
  };
  double refilled(const Bucket& b, Clock::time_point now) const;
  void sweep(Clock::time_point now);  // forgets full buckets (a new one starts full anyway)

  const double rate_;
  const double burst_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Bucket> buckets_;
  std::size_t sweep_at_ = 1024;
};

}  // namespace diffusiond::http_api
