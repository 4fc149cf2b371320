// The HTTP layer's own counters, appended to the core's /metrics text.
// Owner: HttpServer (one per server). Thread-safe: atomics, any I/O thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace diffusiond::http_api {

class HttpStats {
 public:
  void connection_opened() {
    ++connections_total_;
    ++connections_open_;
  }
  void connection_closed() { --connections_open_; }
  void connection_rejected() { ++connections_rejected_; }
  void connection_evicted() { ++connections_evicted_; }
  void request_rate_limited() { ++requests_rate_limited_; }
  void request_answered(unsigned status);
  void event_stream_opened() { ++streams_open_; }
  void event_stream_closed() { --streams_open_; }

  int connections_open() const { return connections_open_.load(); }

  // Prometheus text exposition (HELP/TYPE lines included), names prefixed diffusiond_http_.
  std::string prometheus_text() const;

 private:
  std::atomic<std::int64_t> connections_total_{0};
  std::atomic<int> connections_open_{0};
  std::atomic<std::int64_t> connections_rejected_{0};
  std::atomic<std::int64_t> connections_evicted_{0};
  std::atomic<std::int64_t> requests_rate_limited_{0};
  std::atomic<int> streams_open_{0};
  std::array<std::atomic<std::int64_t>, 6> responses_by_class_{};  // index = status / 100
};

}  // namespace diffusiond::http_api
