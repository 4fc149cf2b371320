// Connection admission (http/admission.h) and the per-client rate limit (http/client_limits.h)
// as pure bookkeeping: verdicts, eviction order, per-client counts, token buckets on a given
// clock. The same rules over real sockets: test_server_limits.cpp.
#include <catch2/catch.hpp>

#include "http/admission.h"
#include "http/client_limits.h"
#include "http/server.h"

using namespace diffusiond;
using namespace diffusiond::http_api;
using Verdict = Admission::Verdict;

namespace {
boost::asio::ip::address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}
}  // namespace

TEST_CASE("admission: the cap, eviction of the longest idle, then probes, then refusals",
          "[http][admission]") {
  HttpOptions o;
  o.max_connections = 2;
  o.over_cap_slots = 1;
  Admission a(o);
  const auto s1 = a.admit(ip("10.0.0.1"));
  const auto s2 = a.admit(ip("10.0.0.2"));
  CHECK(s1.verdict == Verdict::admit);
  CHECK(s2.verdict == Verdict::admit);
  CHECK(a.admitted() == 2);
  // A fresh connection is idle until its first byte: a newcomer takes the older one's slot.
  const auto fresh = a.admit(ip("10.0.0.9"));
  CHECK(fresh.verdict == Verdict::admit);
  CHECK_FALSE(a.busy(s1.slot));
  a.release(s1.slot);
  CHECK(a.admitted() == 2);
  CHECK(a.busy(s2.slot));
  CHECK(a.busy(fresh.slot));
  // Every slot busy: one probe, then refusals.
  const auto p = a.admit(ip("10.0.0.3"));
  CHECK(p.verdict == Verdict::probe);
  CHECK(a.admit(ip("10.0.0.4")).verdict == Verdict::refuse_full);
  // Both go idle, s2 first: s2 is the longest idle and is evicted first.
  CHECK(a.idle(s2.slot, {}) == Admission::Idle::pressure);
  CHECK(a.idle(fresh.slot, {}) == Admission::Idle::pressure);
  const auto n1 = a.admit(ip("10.0.0.5"));
  CHECK(n1.verdict == Verdict::admit);
  CHECK(a.idle(s2.slot, {}) == Admission::Idle::evicted);  // its connection must close
  CHECK_FALSE(a.busy(s2.slot));
  CHECK(a.busy(fresh.slot));  // still its own
  CHECK(a.busy(n1.slot));
  CHECK(a.admitted() == 2);
  // Both busy: nothing to evict.
  CHECK(a.admit(ip("10.0.0.6")).verdict == Verdict::refuse_full);
  a.release(s2.slot);  // the evicted connection closes: counted once only
  CHECK(a.admitted() == 2);
  a.release(p.slot);  // the probe leaves: its reserve slot is free again
  CHECK(a.admit(ip("10.0.0.7")).verdict == Verdict::probe);
  a.release(fresh.slot);
  CHECK(a.admitted() == 1);
  CHECK(a.admit(ip("10.0.0.8")).verdict == Verdict::admit);
}

TEST_CASE("admission: a probe slot is never evicted", "[http][admission]") {
  HttpOptions o;
  o.max_connections = 1;
  o.over_cap_slots = 1;
  Admission a(o);
  const auto s = a.admit(ip("10.0.0.1"));
  CHECK(a.busy(s.slot));
  const auto p = a.admit(ip("10.0.0.2"));
  REQUIRE(p.verdict == Verdict::probe);
  CHECK(a.idle(p.slot, {}) == Admission::Idle::pressure);  // always the short timeout
  CHECK(a.admit(ip("10.0.0.3")).verdict == Verdict::refuse_full);
  CHECK(a.busy(p.slot));
  CHECK(a.busy(s.slot));
}

TEST_CASE("admission: per-client cap, the client's own idle connection makes room",
          "[http][admission]") {
  HttpOptions o;
  o.max_connections = 100;
  o.max_connections_per_client = 2;
  Admission a(o);
  const auto c1 = a.admit(ip("192.0.2.7"));
  const auto c2 = a.admit(ip("192.0.2.7"));
  CHECK(c2.verdict == Verdict::admit);
  CHECK(a.busy(c1.slot));
  CHECK(a.busy(c2.slot));
  CHECK(a.admit(ip("192.0.2.7")).verdict == Verdict::refuse_client);
  CHECK(a.admit(ip("::ffff:192.0.2.7")).verdict == Verdict::refuse_client);  // the same client
  const auto other = a.admit(ip("192.0.2.8"));
  CHECK(other.verdict == Verdict::admit);
  a.idle(other.slot, {});  // another client's idle slot is not this client's room
  CHECK(a.admit(ip("192.0.2.7")).verdict == Verdict::refuse_client);
  a.idle(c2.slot, {});
  const auto c3 = a.admit(ip("192.0.2.7"));
  CHECK(c3.verdict == Verdict::admit);
  CHECK_FALSE(a.busy(c2.slot));
  CHECK(a.busy(c3.slot));
  CHECK(a.busy(other.slot));
  a.release(c1.slot);
  CHECK(a.admit(ip("192.0.2.7")).verdict == Verdict::admit);
}

TEST_CASE("admission: loopback is exempt from the per-client cap unless limit_loopback",
          "[http][admission]") {
  HttpOptions o;
  o.max_connections = 100;
  o.max_connections_per_client = 1;
  {
    Admission a(o);
    const auto busy = [&](const char* peer) {
      const auto d = a.admit(ip(peer));
      a.busy(d.slot);
      return d.verdict;
    };
    for (int i = 0; i < 5; ++i) CHECK(busy("127.0.0.1") == Verdict::admit);
    for (int i = 0; i < 5; ++i) CHECK(busy("::1") == Verdict::admit);
    CHECK(busy("10.1.1.1") == Verdict::admit);
    CHECK(busy("10.1.1.1") == Verdict::refuse_client);
  }
  o.limit_loopback = true;
  Admission a(o);
  CHECK(a.busy(a.admit(ip("127.0.0.1")).slot));
  CHECK(a.admit(ip("127.0.0.1")).verdict == Verdict::refuse_client);
  CHECK(a.admit(ip("::ffff:127.0.0.1")).verdict == Verdict::refuse_client);
}

TEST_CASE("admission: pressure from 3/4 of the slots", "[http][admission]") {
  HttpOptions o;
  o.max_connections = 4;
  Admission a(o);
  const auto s1 = a.admit(ip("10.0.0.1"));
  const auto s2 = a.admit(ip("10.0.0.1"));
  CHECK(a.idle(s1.slot, {}) == Admission::Idle::calm);
  CHECK(a.idle(s2.slot, {}) == Admission::Idle::calm);
  const auto s3 = a.admit(ip("10.0.0.1"));
  CHECK(a.idle(s3.slot, {}) == Admission::Idle::pressure);
  CHECK(a.idle(s1.slot, {}) == Admission::Idle::pressure);
}

TEST_CASE("client_of: IPv4-mapped addresses are IPv4, loopback is unlimited by default",
          "[http][admission]") {
  HttpOptions o;
  CHECK(client_of(ip("::ffff:10.2.3.4"), o).address == "10.2.3.4");
  CHECK(client_of(ip("10.2.3.4"), o).limited);
  CHECK_FALSE(client_of(ip("127.0.0.1"), o).limited);
  CHECK_FALSE(client_of(ip("127.8.9.10"), o).limited);
  CHECK_FALSE(client_of(ip("::1"), o).limited);
  CHECK_FALSE(client_of(ip("::ffff:127.0.0.1"), o).limited);
  o.limit_loopback = true;
  CHECK(client_of(ip("127.0.0.1"), o).limited);
}

TEST_CASE("rate limiter: a token bucket per client", "[http][admission]") {
  using namespace std::chrono_literals;
  RateLimiter limiter(/*rate_per_s=*/2.0, /*burst=*/3.0);
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 3; ++i) CHECK(limiter.take("a", t0) == 0);
  CHECK(limiter.take("a", t0) == 1);  // empty: one token in 0.5 s, Retry-After rounds up
  CHECK(limiter.take("b", t0) == 0);  // another client has its own bucket
  CHECK(limiter.take("a", t0 + 500ms) == 0);
  CHECK(limiter.take("a", t0 + 500ms) == 1);
  CHECK(limiter.take("a", t0 + 10s) == 0);  // refilled, up to the burst only
  CHECK(limiter.take("a", t0 + 10s) == 0);
  CHECK(limiter.take("a", t0 + 10s) == 0);
  CHECK(limiter.take("a", t0 + 10s) == 1);

  RateLimiter slow(0.1, 1);
  CHECK(slow.take("c", t0) == 0);
  CHECK(slow.take("c", t0) == 10);  // Retry-After: whole seconds until the next token

  RateLimiter off(0, 1);
  for (int i = 0; i < 100; ++i) CHECK(off.take("d", t0) == 0);
}

TEST_CASE("rate limiter: forgets clients whose bucket is full again", "[http][admission]") {
  using namespace std::chrono_literals;
  RateLimiter limiter(1.0, 1.0);
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 1023; ++i) limiter.take("10.0.0." + std::to_string(i), t0);
  CHECK(limiter.clients_tracked() == 1023);
  limiter.take("late", t0 + 5s);  // the 1024th triggers a sweep; the old buckets are full
  CHECK(limiter.clients_tracked() == 1);
}
