// Black-box: device fault isolation on the real daemon with the tiny model and the test switch
// `--inject-faults` (the torch backend throws LibTorch's own errors inside the pipeline).
#include <catch2/catch.hpp>

#include "blackbox_util.h"
#include "prometheus_text.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {
json device_named(std::uint16_t port, const std::string& name) {
  const json devices = get_json(port, "/devices");
  for (const auto& d : devices["devices"])
    if (d["name"] == name) return d;
  throw std::runtime_error("no device " + name + " in /devices");
}

const char* kTwoPrompts =
    R"({"prompts":["a red cube","a blue sphere"],"steps":2,"width":64,"height":64,"seed":7})";
}  // namespace

TEST_CASE(
    "a device whose generations fail: every job finishes on the other one, /devices and "
    "/metrics show it unhealthy",
    "[blackbox][faults]") {
  TempDir dir("faults-cpu2");
  DaemonProcess d(dir.path, {"--devices", "cpu*2", "--inject-faults", "cpu:1=error",
                             "--device-failure-threshold", "2"});
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(submit(d.port(), kTwoPrompts));
  for (const auto& id : ids) {
    INFO("job " << id);
    const json job = wait_finished(d.port(), id);
    REQUIRE(job["status"] == "done");
    for (const auto& image : job["images"]) {
      CHECK(image["device"] == "cpu:0");
      CHECK(image["status"] == "done");
    }
  }
  const json bad = device_named(d.port(), "cpu:1");
  INFO(bad.dump());
  CHECK(bad["healthy"] == false);
  CHECK(bad["health"] == "unhealthy");
  CHECK(bad["state"] == "unhealthy");
  CHECK(bad["images_failed"] == 2);  // then it got no more work
  CHECK(bad["consecutive_failures"] == 2);
  CHECK(bad["images_done"] == 0);
  CHECK_THAT(bad["last_error"].get<std::string>(),
             Catch::Contains("generation failed on cpu:1 (injected by --inject-faults)"));
  CHECK_THAT(bad["last_error"].get<std::string>(), !Catch::Contains("Exception raised from"));
  CHECK(bad["next_probe_ms"].is_number());
  const json good = device_named(d.port(), "cpu:0");
  CHECK(good["healthy"] == true);
  CHECK(good["images_done"] == 8);

  HttpReply m = http_request(d.port(), "GET", "/metrics");
  REQUIRE(m.status == 200);
  MetricFamilies metrics;
  REQUIRE_NOTHROW(metrics = parse_prometheus_text(m.body));
  CHECK(metrics.types["diffusiond_device_healthy"] == "gauge");
  CHECK(metrics.types["diffusiond_device_failures_total"] == "counter");
  CHECK(metrics.value("diffusiond_device_healthy", {{"device", "cpu:1"}}) == 0);
  CHECK(metrics.value("diffusiond_device_healthy", {{"device", "cpu:0"}}) == 1);
  CHECK(metrics.value("diffusiond_device_failures_total", {{"device", "cpu:1"}}) == 2);
  CHECK(metrics.value("diffusiond_device_failures_total", {{"device", "cpu:0"}}) == 0);
  CHECK(metrics.value("diffusiond_ready") == 1);
  CHECK(http_request(d.port(), "GET", "/readyz").status == 200);  // cpu:0 is left
}

TEST_CASE("out of memory on the only device: named, /readyz 503 until its probe succeeds",
          "[blackbox][faults]") {
  TempDir dir("faults-oom");
  // Generation 1 succeeds, generation 2 runs out of memory (at a size the device has made, so it
  // counts), generation 3 (the probe, a second later) succeeds.
  DaemonProcess d(dir.path, {"--devices", "cpu", "--inject-faults", "cpu=oom:after=1:times=1",
                             "--device-failure-threshold", "1", "--device-probe-interval", "1"});
  const char* one = R"({"prompt":"a lamp","steps":2,"width":64,"height":64})";
  REQUIRE(wait_finished(d.port(), submit(d.port(), one))["status"] == "done");
  const json failed = wait_finished(d.port(), submit(d.port(), one));
  CHECK(failed["status"] == "failed");
  const std::string error = failed["images"][0]["error"];
  CHECK_THAT(error, Catch::StartsWith("device_out_of_memory: out of memory on cpu (injected"));
  CHECK_THAT(failed["error"].get<std::string>(), Catch::Contains("device_out_of_memory"));

  HttpReply not_ready = http_request(d.port(), "GET", "/readyz");
  CHECK(not_ready.status == 503);
  CHECK_THAT(not_ready.body, Catch::Contains("no healthy device is left"));
  const json bad = device_named(d.port(), "cpu");
  CHECK(bad["healthy"] == false);
  CHECK(bad["images_out_of_memory"] == 1);
  CHECK(http_request(d.port(), "GET", "/healthz").status == 200);

  // Still accepted: it waits for the probe, runs, and the device is healthy again.
  const json kept = wait_finished(d.port(), submit(d.port(), kTwoPrompts));
  CHECK(kept["status"] == "done");
  CHECK(http_request(d.port(), "GET", "/readyz").status == 200);
  const json healed = device_named(d.port(), "cpu");
  CHECK(healed["healthy"] == true);
  CHECK(healed["consecutive_failures"] == 0);
}

TEST_CASE("a bad --inject-faults is refused at start, naming the device", "[blackbox][faults]") {
  TempDir dir("faults-bad");
  try {
    DaemonProcess d(dir.path, {"--devices", "cpu*2", "--inject-faults", "cpu:7=error"});
    FAIL("the daemon started");
  } catch (const std::exception& e) {
    CHECK_THAT(e.what(), Catch::Contains("no device 'cpu:7' is served"));
  }
}
