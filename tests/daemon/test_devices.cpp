// --devices parsing and the division of intra-op threads.
#include <catch2/catch.hpp>

#include "daemon/device_spec.h"

using namespace diffusiond;

namespace {
std::vector<std::string> names(const std::vector<DeviceSpec>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs) out.push_back(s.name);
  return out;
}
}  // namespace

TEST_CASE("auto takes every CUDA device, else the CPU", "[devices]") {
  CHECK(names(parse_devices("auto", 0)) == std::vector<std::string>{"cpu"});
  CHECK(names(parse_devices("", 0)) == std::vector<std::string>{"cpu"});
  CHECK(names(parse_devices("auto", 3)) == std::vector<std::string>{"cuda:0", "cuda:1", "cuda:2"});
  const auto cuda = parse_devices("auto", 2);
  CHECK(cuda[1].kind == DeviceSpec::Kind::cuda);
  CHECK(cuda[1].index == 1);
}

TEST_CASE("explicit lists, cuda, cpu and cpu*N", "[devices]") {
  CHECK(names(parse_devices("cuda:0, cuda:2", 4)) == std::vector<std::string>{"cuda:0", "cuda:2"});
  CHECK(names(parse_devices("cuda", 2)) == std::vector<std::string>{"cuda:0", "cuda:1"});
  CHECK(names(parse_devices("cpu", 2)) == std::vector<std::string>{"cpu"});
  const auto cpus = parse_devices("cpu*3", 0);
  CHECK(names(cpus) == std::vector<std::string>{"cpu:0", "cpu:1", "cpu:2"});
  CHECK(cpus[2].kind == DeviceSpec::Kind::cpu);
  CHECK(cpus[2].index == 2);
  CHECK(names(parse_devices("cpu*1", 0)) == std::vector<std::string>{"cpu"});
}

TEST_CASE("bad --devices values are named", "[devices]") {
  CHECK_THROWS_WITH(parse_devices("cuda:1", 1), Catch::Contains("cuda:1 does not exist"));
  CHECK_THROWS_WITH(parse_devices("cuda:0,cuda:0", 2), Catch::Contains("listed twice"));
  CHECK_THROWS_WITH(parse_devices("tpu:0", 2), Catch::Contains("unknown device 'tpu:0'"));
  CHECK_THROWS_WITH(parse_devices("cpu*0", 0), Catch::Contains("cpu*N"));
  CHECK_THROWS_WITH(parse_devices("cpu*x", 0), Catch::Contains("bad number"));
  CHECK_THROWS_WITH(parse_devices("cuda:-1", 2), Catch::Contains("bad number"));
  CHECK_THROWS_WITH(parse_devices("cuda", 0), Catch::Contains("no CUDA device"));
  CHECK_THROWS_WITH(parse_devices("cuda:0,", 2), Catch::Contains("unknown device ''"));
}

TEST_CASE("intra-op threads are divided between workers", "[devices]") {
  CHECK(threads_per_worker(8, 2) == 4);
  CHECK(threads_per_worker(7, 2) == 3);
  CHECK(threads_per_worker(2, 4) == 1);
  CHECK(threads_per_worker(0, 1) == 1);
}
