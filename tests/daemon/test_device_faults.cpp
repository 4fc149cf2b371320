// Device fault isolation through CoreService with the fake backend and the fault-injection
// switch (daemon/fault_injection.h, as `serve --inject-faults`): a failure retries that image on
// another device, K failures in a row make a device unhealthy (its queue moves, /metrics and
// ready() say so), a probe brings it back, out-of-memory is named and, at a size the device
// never made, not held against it.
#include <catch2/catch.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <set>

#include "daemon/fault_injection.h"
#include "daemon/serve_options.h"
#include "service_harness.h"

using namespace diffusiond;
using namespace diffusiond::test;
using namespace std::chrono_literals;

namespace {
std::shared_ptr<FaultInjector> faults(const std::string& spec, const std::string& devices) {
  std::vector<std::string> names;
  for (const auto& d : parse_devices(devices, 0)) names.push_back(d.name);
  return std::make_shared<FaultInjector>(parse_fault_rules(spec, names));
}

int calls_on(const FakeBackend& backend, const std::string& device) {
  int n = 0;
  for (const auto& call : backend.calls()) n += call.device == device ? 1 : 0;
  return n;
}

// Waits until the unhealthy device's probe is due (a deadline guards against a hang only).
void wait_probe_due(CoreService& service, int device) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    const auto view = service.devices()[static_cast<std::size_t>(device)];
    REQUIRE(view.health != DeviceHealth::healthy);
    if (view.health == DeviceHealth::probing || view.next_probe_ms <= unix_ms_now()) return;
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(5ms);
  }
}
}  // namespace

TEST_CASE("fault rules parse, bad ones are named", "[faults]") {
  const std::vector<std::string> devices{"cpu:0", "cpu:1", "cuda:0"};
  const auto rules = parse_fault_rules("cpu:1=error, cuda:0=oom:after=2:times=3", devices);
  REQUIRE(rules.size() == 2);
  CHECK(rules[0].device == "cpu:1");
  CHECK(rules[0].kind == InjectedFault::error);
  CHECK(rules[0].after == 0);
  CHECK(rules[0].times == -1);
  CHECK(rules[1].device == "cuda:0");
  CHECK(rules[1].kind == InjectedFault::out_of_memory);
  CHECK(rules[1].after == 2);
  CHECK(rules[1].times == 3);
  CHECK(describe(rules[1]) == "cuda:0: out of memory after 2 generation(s), 3 time(s)");
  CHECK_THROWS_WITH(parse_fault_rules("cpu:2=error", devices),
                    Catch::Contains("no device 'cpu:2' is served (devices: cpu:0, cpu:1, cuda:0)"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1", devices), Catch::Contains("DEVICE=KIND"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=crash", devices),
                    Catch::Contains("unknown fault 'crash'"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=oom:every=2", devices),
                    Catch::Contains("unknown parameter 'every=2'"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=oom:after=-1", devices),
                    Catch::Contains("bad number '-1'"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=oom:times=x", devices),
                    Catch::Contains("bad number 'x'"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=error,cpu:1=oom", devices),
                    Catch::Contains("listed twice"));
  CHECK_THROWS_WITH(parse_fault_rules("cpu:1=error,", devices), Catch::Contains("empty rule"));
}

TEST_CASE("an injector lets `after` generations pass, fails `times`, then passes", "[faults]") {
  FaultInjector injector(parse_fault_rules("a=oom:after=2:times=3,b=error", {"a", "b", "c"}));
  std::string a, b;
  for (int i = 0; i < 7; ++i) {
    a += injector.next("a") ? "x" : ".";
    b += injector.next("b") ? "x" : ".";
    CHECK_FALSE(injector.next("c"));
  }
  CHECK(a == "..xxx..");
  CHECK(b == "xxxxxxx");
  FaultInjector oom(parse_fault_rules("a=oom", {"a"}));
  CHECK(oom.next("a") == InjectedFault::out_of_memory);
}

TEST_CASE("an image failing on one device runs again on another, the others are unaffected",
          "[faults]") {
  Harness h;
  h.backend.faults = faults("cpu:1=error", "cpu*2");
  h.start("cpu*2");
  const auto job = h.service->submit(request({"a", "b", "c", "d"}));  // 0,2 -> cpu:0; 1,3 -> cpu:1
  const auto done = h.wait_finished(job.id);
  REQUIRE(done.status == JobStatus::done);
  const auto record = h.store->load(job.id);
  for (const auto& image : done.images) {
    CHECK(image.device == "cpu:0");
    CHECK(image.error.empty());
    CHECK(record->attempts[static_cast<std::size_t>(image.index)] == (image.index % 2 ? 2 : 1));
    const auto png = decode_png(read_file(*h.service->image_path(job.id, image.index)));
    CHECK(png.pixels == expected_fake_image(image.prompt, image.seed, 8, 4).pixels);
  }
  CHECK(calls_on(h.backend, "cpu:1") == 2);
  const auto devices = h.service->devices();
  CHECK(devices[1].healthy);  // 2 failures, the threshold is 3
  CHECK(devices[1].consecutive_failures == 2);
  CHECK(devices[1].images_failed == 2);
  CHECK_THAT(devices[1].last_error, Catch::Contains("injected failure on cpu:1"));
  CHECK(devices[1].last_error_ms > 0);
  CHECK(devices[0].images_failed == 0);
  CHECK(devices[0].images_done == 4);
}

TEST_CASE("K failures in a row make a device unhealthy: its queue moves, metrics and status say so",
          "[faults]") {
  Harness h;
  h.backend.faults = faults("cpu:1=error", "cpu*2");
  h.options.unhealthy_after = 2;
  h.start("cpu*2");
  // cpu:1's share is images 1, 3 and 5: the first two fail, then 5 moves to cpu:0 unrun.
  const auto job = h.service->submit(request({"p"}, 6));
  const auto done = h.wait_finished(job.id);
  REQUIRE(done.status == JobStatus::done);
  for (const auto& image : done.images) CHECK(image.device == "cpu:0");
  CHECK(calls_on(h.backend, "cpu:1") == 2);
  const auto devices = h.service->devices();
  CHECK_FALSE(devices[1].healthy);
  CHECK(devices[1].health == DeviceHealth::unhealthy);
  CHECK(devices[1].consecutive_failures == 2);
  CHECK(devices[1].next_probe_ms > unix_ms_now());  // the default interval is 60 s
  CHECK(devices[0].healthy);
  CHECK(h.service->ready());  // cpu:0 is left
  CHECK(h.service->workers_alive());
  const auto metrics = h.service->metrics_text();
  CHECK_THAT(metrics, Catch::Contains("diffusiond_device_healthy{device=\"cpu:1\"} 0"));
  CHECK_THAT(metrics, Catch::Contains("diffusiond_device_healthy{device=\"cpu:0\"} 1"));
  CHECK_THAT(metrics, Catch::Contains("diffusiond_device_failures_total{device=\"cpu:1\"} 2"));
  CHECK_THAT(metrics,
             Catch::Contains("diffusiond_device_consecutive_failures{device=\"cpu:1\"} 2"));
  CHECK_THAT(metrics, Catch::Contains("diffusiond_ready 1"));
  CHECK_THAT(h.service->status_line(), Catch::Contains("devices=1/2 unhealthy=cpu:1"));
  // New work goes to cpu:0 only.
  const auto next = h.service->submit(request({"q"}, 3));
  for (const auto& image : h.wait_finished(next.id).images) CHECK(image.device == "cpu:0");
  CHECK(calls_on(h.backend, "cpu:1") == 2);
}

TEST_CASE("a probe that succeeds makes the device healthy again", "[faults]") {
  Harness h;
  h.backend.faults = faults("cpu:1=error:times=2", "cpu*2");
  h.options.unhealthy_after = 2;
  h.options.probe_interval = 50ms;
  h.start("cpu*2");
  const auto first = h.service->submit(request({"p"}, 4));  // cpu:1 fails images 1 and 3
  REQUIRE(h.wait_finished(first.id).status == JobStatus::done);
  REQUIRE_FALSE(h.service->devices()[1].healthy);
  wait_probe_due(*h.service, 1);
  const auto probe = h.service->submit(request({"probe"}));  // the next task is the probe
  const auto probed = h.wait_finished(probe.id);
  CHECK(probed.status == JobStatus::done);
  CHECK(probed.images[0].device == "cpu:1");
  const auto devices = h.service->devices();
  CHECK(devices[1].healthy);
  CHECK(devices[1].health == DeviceHealth::healthy);
  CHECK(devices[1].consecutive_failures == 0);
  CHECK(devices[1].next_probe_ms == 0);
  CHECK(devices[1].images_failed == 2);  // the history stays
  // Back in the rotation.
  const auto after = h.service->submit(request({"x", "y"}));
  std::set<std::string> used;
  for (const auto& image : h.wait_finished(after.id).images) used.insert(image.device);
  CHECK(used == std::set<std::string>{"cpu:0", "cpu:1"});
}

TEST_CASE("with no healthy device left: not ready, jobs are kept and run after the probe",
          "[faults]") {
  Harness h;
  h.backend.faults = faults("cpu=error:times=1", "cpu");
  h.options.unhealthy_after = 1;
  h.options.probe_interval = 50ms;
  h.start("cpu");
  CHECK(h.service->ready());
  const auto failed = h.wait_finished(h.service->submit(request({"first"})).id);
  CHECK(failed.status == JobStatus::failed);  // unhealthy at once: nowhere to retry it
  CHECK_THAT(failed.images[0].error, Catch::Contains("injected failure on cpu (on cpu)"));
  CHECK(h.store->load(failed.id)->attempts[0] == 1);
  CHECK_FALSE(h.service->ready());  // no healthy device: /readyz is 503
  CHECK_THAT(h.service->metrics_text(), Catch::Contains("diffusiond_ready 0"));
  CHECK_FALSE(h.service->workers_alive());  // the systemd watchdog may restart the daemon
  // A job is still accepted; it waits for the probe, which succeeds.
  const auto kept = h.service->submit(request({"second"}, 2));
  const auto done = h.wait_finished(kept.id);
  CHECK(done.status == JobStatus::done);
  for (const auto& image : done.images) CHECK(image.device == "cpu");
  CHECK(h.service->ready());
  CHECK(h.service->devices()[0].healthy);
}

TEST_CASE("out of memory is named, and not held against a device at a size it never made",
          "[faults]") {
  Harness h;
  h.options.unhealthy_after = 1;
  h.start("cpu*2");
  const auto job = h.service->submit(request({"OOM please"}));
  const auto ended = h.wait_finished(job.id);
  CHECK(ended.status == JobStatus::failed);
  CHECK_THAT(ended.images[0].error, Catch::StartsWith("device_out_of_memory: fake out of memory"));
  CHECK(h.store->load(job.id)->attempts[0] == 2);  // tried on both devices
  for (const auto& device : h.service->devices()) {
    CHECK(device.healthy);  // threshold 1, yet neither counts it
    CHECK(device.images_out_of_memory == 1);
    CHECK(device.consecutive_failures == 0);
  }
  CHECK_THAT(h.service->metrics_text(),
             Catch::Contains("diffusiond_device_out_of_memory_total{device=\"cpu:0\"} 1"));
  CHECK(h.wait_finished(h.service->submit(request({"fine"}, 2)).id).status == JobStatus::done);
}

TEST_CASE("out of memory at a size the device has made counts, its image moves elsewhere",
          "[faults]") {
  Harness h;
  h.backend.faults = faults("cpu:1=oom:after=1", "cpu*2");
  h.options.unhealthy_after = 1;
  h.start("cpu*2");
  CHECK(h.wait_finished(h.service->submit(request({"a", "b"})).id).status == JobStatus::done);
  const auto second = h.wait_finished(h.service->submit(request({"c", "d"})).id);
  CHECK(second.status == JobStatus::done);
  for (const auto& image : second.images) CHECK(image.device == "cpu:0");
  const auto devices = h.service->devices();
  CHECK_FALSE(devices[1].healthy);
  CHECK(devices[1].images_out_of_memory == 1);
  CHECK_THAT(devices[1].last_error,
             Catch::StartsWith("device_out_of_memory: injected out of memory on cpu:1"));
}

TEST_CASE("retries count as attempts: an image failing everywhere runs max_attempts times",
          "[faults]") {
  Harness h;
  h.options.max_attempts = 2;
  h.start("cpu*3");
  const auto ended = h.wait_finished(h.service->submit(request({"FAIL always"})).id);
  CHECK(ended.status == JobStatus::failed);
  CHECK(h.backend.calls().size() == 2);  // not on the third device
  CHECK(h.store->load(ended.id)->attempts[0] == 2);
  CHECK_THAT(ended.images[0].error, Catch::Contains("fake failure"));
}

TEST_CASE("serve: the health options, their defaults, a fault switch hidden from the help",
          "[faults]") {
  auto parse = [](std::vector<std::string> args) {
    CLI::App app;
    auto* serve = app.add_subcommand("serve");
    auto options = std::make_shared<ServeOptions>();
    add_serve_options(*serve, *options);
    args.insert(args.begin(), "serve");
    std::reverse(args.begin(), args.end());
    app.parse(args);
    return std::make_pair(*options, serve->help());
  };
  const auto [defaults, help] = parse({});
  CHECK(defaults.device_failure_threshold == 3);
  CHECK(defaults.device_probe_interval_s == 60);
  CHECK(defaults.inject_faults.empty());
  CHECK_THAT(help, Catch::Contains("--device-failure-threshold"));
  CHECK_THAT(help, Catch::Contains("--device-probe-interval"));
  CHECK_THAT(help, !Catch::Contains("inject-faults"));
  const auto set = parse({"--device-failure-threshold", "5", "--device-probe-interval", "7",
                          "--inject-faults", "cpu=oom"})
                       .first;
  CHECK(set.device_failure_threshold == 5);
  CHECK(set.device_probe_interval_s == 7);
  CHECK(set.inject_faults == "cpu=oom");
  CHECK_THROWS(parse({"--device-failure-threshold", "0"}));
  CHECK_THROWS(parse({"--device-probe-interval", "0"}));
}
