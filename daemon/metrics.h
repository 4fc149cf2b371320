// Prometheus text exposition (format 0.0.4) helpers and a thread-safe histogram.
// Thread-safety: Histogram may be observed/read from any thread; PrometheusWriter is a local
// value used by one thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace diffusiond {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // ascending, +Inf is implicit
  void observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<std::uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  Snapshot snapshot() const;

  static std::vector<double> step_seconds_buckets();  // 1 ms .. 60 s
  static std::vector<double> wait_seconds_buckets();  // 10 ms .. 1 h

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;  // per bucket (not cumulative), last = +Inf
  double sum_ = 0;
  std::uint64_t count_ = 0;
};

using Labels = std::vector<std::pair<std::string, std::string>>;

class PrometheusWriter {
 public:
  // Writes "# HELP" and "# TYPE" once per metric name.
  void header(const std::string& name, const std::string& type, const std::string& help);
  void sample(const std::string& name, const Labels& labels, double value);
  // name_bucket{...,le=".."}, name_sum, name_count (header written by the caller).
  void histogram(const std::string& name, const Labels& labels, const Histogram::Snapshot& h);
  const std::string& text() const { return out_; }

 private:
  std::string out_;
};

std::string format_prometheus_value(double value);  // "+Inf", "NaN", shortest round-trip
std::string escape_label_value(const std::string& value);

}  // namespace diffusiond
