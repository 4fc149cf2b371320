#include "http/http_stats.h"

namespace diffusiond::http_api {

void HttpStats::request_answered(unsigned status) {
  const unsigned cls = status / 100;
  if (cls >= 1 && cls <= 5) ++responses_by_class_[cls];
}

std::string HttpStats::prometheus_text() const {
  std::string out;
  out += "# HELP diffusiond_http_responses_total HTTP responses sent, by status class.\n";
  out += "# TYPE diffusiond_http_responses_total counter\n";
  for (unsigned cls = 1; cls <= 5; ++cls) {
    out += "diffusiond_http_responses_total{code=\"" + std::to_string(cls) + "xx\"} " +
           std::to_string(responses_by_class_[cls].load()) + "\n";
  }
  out += "# HELP diffusiond_http_connections_total TCP connections accepted.\n";
  out += "# TYPE diffusiond_http_connections_total counter\n";
  out += "diffusiond_http_connections_total " + std::to_string(connections_total_.load()) + "\n";
  out +=
      "# HELP diffusiond_http_connections_rejected_total Connections refused (over the cap or a "
      "client's cap).\n";
  out += "# TYPE diffusiond_http_connections_rejected_total counter\n";
  out += "diffusiond_http_connections_rejected_total " +
         std::to_string(connections_rejected_.load()) + "\n";
  out +=
      "# HELP diffusiond_http_connections_evicted_total Idle connections closed to make room "
      "for a new one.\n";
  out += "# TYPE diffusiond_http_connections_evicted_total counter\n";
  out += "diffusiond_http_connections_evicted_total " +
         std::to_string(connections_evicted_.load()) + "\n";
  out += "# HELP diffusiond_http_requests_rate_limited_total Requests answered 429 rate_limited.\n";
  out += "# TYPE diffusiond_http_requests_rate_limited_total counter\n";
  out += "diffusiond_http_requests_rate_limited_total " +
         std::to_string(requests_rate_limited_.load()) + "\n";
  out += "# HELP diffusiond_http_connections_open Connections open now.\n";
  out += "# TYPE diffusiond_http_connections_open gauge\n";
  out += "diffusiond_http_connections_open " + std::to_string(connections_open_.load()) + "\n";
  out += "# HELP diffusiond_http_event_streams_open Server-Sent Event streams open now.\n";
  out += "# TYPE diffusiond_http_event_streams_open gauge\n";
  out += "diffusiond_http_event_streams_open " + std::to_string(streams_open_.load()) + "\n";
  return out;
}

}  // namespace diffusiond::http_api
