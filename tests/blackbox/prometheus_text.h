// A strict checker of the Prometheus text exposition format 0.0.4, for /metrics.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace diffusiond::testing {

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct MetricFamilies {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|summary|untyped
  std::vector<MetricSample> samples;
  // Value of the first sample with this name and (a subset of) these labels; NaN if none.
  double value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const;
};

// Throws std::runtime_error naming the line on any syntax error, a TYPE after its samples or
// twice, an unknown type, a counter below 0, or an inconsistent histogram (le not increasing,
// counts not cumulative, no +Inf bucket, +Inf bucket != _count).
MetricFamilies parse_prometheus_text(const std::string& text);

}  // namespace diffusiond::testing
