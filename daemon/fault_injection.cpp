#include "daemon/fault_injection.h"

#include <charconv>
#include <stdexcept>

namespace diffusiond {

namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    const auto end = s.find(sep, begin);
    parts.push_back(s.substr(begin, end - begin));
    if (end == std::string::npos) return parts;
    begin = end + 1;
  }
}

int count_of(const std::string& text, const std::string& rule) {
  int value = -1;
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0)
    throw std::invalid_argument("--inject-faults: bad number '" + text + "' in '" + rule + "'");
  return value;
}

FaultRule parse_rule(const std::string& rule, const std::vector<std::string>& devices) {
  const auto eq = rule.find('=');
  if (eq == std::string::npos)
    throw std::invalid_argument("--inject-faults: '" + rule +
                                "' is not DEVICE=KIND[:after=N][:times=M]");
  FaultRule out;
  out.device = trim(rule.substr(0, eq));
  bool served = false;
  std::string names;
  for (const auto& d : devices) {
    served = served || d == out.device;
    names += (names.empty() ? "" : ", ") + d;
  }
  if (!served)
    throw std::invalid_argument("--inject-faults: no device '" + out.device +
                                "' is served (devices: " + names + ")");
  const auto fields = split(rule.substr(eq + 1), ':');
  const std::string kind = trim(fields[0]);
  if (kind == "error") {
    out.kind = InjectedFault::error;
  } else if (kind == "oom") {
    out.kind = InjectedFault::out_of_memory;
  } else {
    throw std::invalid_argument("--inject-faults: unknown fault '" + kind + "' in '" + rule +
                                "' (error or oom)");
  }
  for (std::size_t i = 1; i < fields.size(); ++i) {
    const std::string field = trim(fields[i]);
    const auto at = field.find('=');
    const std::string key = field.substr(0, at);
    if (at == std::string::npos || (key != "after" && key != "times"))
      throw std::invalid_argument("--inject-faults: unknown parameter '" + field + "' in '" + rule +
                                  "' (after=N or times=M)");
    (key == "after" ? out.after : out.times) = count_of(field.substr(at + 1), rule);
  }
  return out;
}
}  // namespace

std::vector<FaultRule> parse_fault_rules(const std::string& spec,
                                         const std::vector<std::string>& devices) {
  std::vector<FaultRule> rules;
  for (const auto& part : split(spec, ',')) {
    const std::string rule = trim(part);
    if (rule.empty())
      throw std::invalid_argument("--inject-faults: an empty rule in '" + spec + "'");
    rules.push_back(parse_rule(rule, devices));
    for (std::size_t i = 0; i + 1 < rules.size(); ++i)
      if (rules[i].device == rules.back().device)
        throw std::invalid_argument("--inject-faults: device " + rules.back().device +
                                    " is listed twice");
  }
  return rules;
}

std::string describe(const FaultRule& rule) {
  std::string out =
      rule.device + ": " + (rule.kind == InjectedFault::error ? "error" : "out of memory");
  if (rule.after > 0) out += " after " + std::to_string(rule.after) + " generation(s)";
  out += rule.times < 0 ? ", every generation" : ", " + std::to_string(rule.times) + " time(s)";
  return out;
}

std::optional<InjectedFault> FaultInjector::next(const std::string& device) {
  std::lock_guard lock(mu_);
  for (const auto& rule : rules_) {
    if (rule.device != device) continue;
    const long long n = generations_[device]++;  // 0-based index of this generation
    if (n < rule.after) return std::nullopt;
    if (rule.times >= 0 && n >= static_cast<long long>(rule.after) + rule.times)
      return std::nullopt;
    return rule.kind;
  }
  return std::nullopt;
}

}  // namespace diffusiond
