// Histogram bucketing and the Prometheus text writer.
#include <catch2/catch.hpp>

#include "daemon/metrics.h"

using namespace diffusiond;

TEST_CASE("histogram buckets are cumulative with le semantics", "[metrics]") {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 1.0, 20.0}) h.observe(v);
  const auto s = h.snapshot();
  CHECK(s.cumulative == std::vector<std::uint64_t>{2, 4, 4, 5});
  CHECK(s.count == 5);
  CHECK(s.sum == Approx(21.65));
  CHECK_THROWS(Histogram({1, 0.5}));
}

TEST_CASE("the writer renders HELP/TYPE, labels and histogram series", "[metrics]") {
  Histogram h({0.5});
  h.observe(0.25);
  h.observe(2);
  PrometheusWriter w;
  w.header("x_seconds", "histogram", "Some time");
  w.histogram("x_seconds", {{"device", "cuda:0"}}, h.snapshot());
  w.sample("y", {{"a", "q\"uo\\te\nx"}}, 1.5);
  CHECK(w.text() ==
        "# HELP x_seconds Some time\n"
        "# TYPE x_seconds histogram\n"
        "x_seconds_bucket{device=\"cuda:0\",le=\"0.5\"} 1\n"
        "x_seconds_bucket{device=\"cuda:0\",le=\"+Inf\"} 2\n"
        "x_seconds_sum{device=\"cuda:0\"} 2.25\n"
        "x_seconds_count{device=\"cuda:0\"} 2\n"
        "y{a=\"q\\\"uo\\\\te\\nx\"} 1.5\n");
}

TEST_CASE("values print in their shortest exact form", "[metrics]") {
  CHECK(format_prometheus_value(3) == "3");
  CHECK(format_prometheus_value(0.1) == "0.1");
  CHECK(format_prometheus_value(1.0 / 3) == "0.3333333333333333");
  CHECK(format_prometheus_value(1e300 * 1e300) == "+Inf");
}
