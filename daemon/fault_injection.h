// A test facility: chosen devices fail chosen generations, to show device fault isolation on the
// real daemon (the hidden `serve --inject-faults SPEC`, read by the torch backend) and in the
// core's unit tests (the fake backend). Never set in production.
//
// SPEC: RULE[,RULE...]; RULE: DEVICE=KIND[:after=N][:times=M]
//   DEVICE  a served device's name (cpu, cpu:1, cuda:0)
//   KIND    error (the generation throws) or oom (it runs out of device memory)
//   after   the first N generations on the device succeed (default 0)
//   times   then M generations fail (default: every one after), then they succeed again
// e.g. "cpu:1=error", "cpu:1=oom:after=2", "cuda:0=error:times=3,cuda:1=oom".
// Owner: the backend that reads it. Thread-safety: next() from any thread.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace diffusiond {

enum class InjectedFault { error, out_of_memory };

struct FaultRule {
  std::string device;
  InjectedFault kind = InjectedFault::error;
  int after = 0;   // generations that succeed first
  int times = -1;  // generations that fail then; -1 = every one
};

// Throws std::invalid_argument naming the rule at fault (and the served devices when DEVICE is
// not one of them).
std::vector<FaultRule> parse_fault_rules(const std::string& spec,
                                         const std::vector<std::string>& devices);
std::string describe(const FaultRule& rule);  // "cpu:1: error after 2 generations, 3 times"

class FaultInjector {
 public:
  explicit FaultInjector(std::vector<FaultRule> rules) : rules_(std::move(rules)) {}
  // Counts one generation on the device; the fault it must fail with, if any.
  std::optional<InjectedFault> next(const std::string& device);

 private:
  std::mutex mu_;
  const std::vector<FaultRule> rules_;
  std::map<std::string, long long> generations_;  // per device
};

}  // namespace diffusiond
