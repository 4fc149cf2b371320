// The dispatcher: round-robin order, least-loaded, priorities, cancellation, retries elsewhere,
// unhealthy devices, probes (with a clock the test moves), stop. Single-threaded where possible
// (try_take) so the order is exact.
#include <catch2/catch.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "daemon/dispatcher.h"

using namespace diffusiond;

namespace {
TaskRef task(const std::string& job, int image, int priority = 0, std::int64_t seq = 0) {
  return TaskRef{job, image, priority, seq, -1};
}

std::vector<std::string> drain(Dispatcher& d, int device) {
  std::vector<std::string> out;
  while (auto t = d.try_take(device)) out.push_back(t->job_id + "/" + std::to_string(t->image));
  return out;
}
}  // namespace

TEST_CASE("round-robin: images alternate over the devices, across jobs too", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::round_robin);
  for (int k = 0; k < 4; ++k) d.enqueue(task("a", k, 0, 1));
  d.enqueue(task("b", 0, 0, 2));
  CHECK(d.queued() == 5);
  CHECK(d.queued_for(0) == 3);
  CHECK(d.queued_for(1) == 2);
  CHECK(drain(d, 0) == std::vector<std::string>{"a/0", "a/2", "b/0"});
  CHECK(drain(d, 1) == std::vector<std::string>{"a/1", "a/3"});
  d.enqueue(task("c", 0, 0, 3));  // the rotation continues: device 1 is next
  CHECK(drain(d, 0).empty());
  CHECK(drain(d, 1) == std::vector<std::string>{"c/0"});
}

TEST_CASE("round-robin is not work-conserving: an idle device does not steal", "[dispatcher]") {
  Dispatcher d(3, DispatchPolicy::round_robin);
  d.enqueue(task("a", 0));
  CHECK(drain(d, 1).empty());
  CHECK(drain(d, 2).empty());
  CHECK(drain(d, 0) == std::vector<std::string>{"a/0"});
}

TEST_CASE("least-loaded: whichever device asks first takes the next task", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::least_loaded);
  for (int k = 0; k < 3; ++k) d.enqueue(task("a", k, 0, 1));
  CHECK(d.try_take(1)->image == 0);
  CHECK(d.try_take(1)->image == 1);
  CHECK(d.try_take(0)->image == 2);
  CHECK_FALSE(d.try_take(0));
}

TEST_CASE("priorities: higher first, FIFO by submission within a priority", "[dispatcher]") {
  for (auto policy : {DispatchPolicy::least_loaded, DispatchPolicy::round_robin}) {
    Dispatcher d(1, policy);
    d.enqueue(task("low", 0, -1, 1));
    d.enqueue(task("first", 0, 0, 2));
    d.enqueue(task("first", 1, 0, 2));
    d.enqueue(task("second", 0, 0, 3));
    d.enqueue(task("urgent", 0, 5, 4));
    CHECK(drain(d, 0) ==
          std::vector<std::string>{"urgent/0", "first/0", "first/1", "second/0", "low/0"});
  }
}

TEST_CASE("priorities apply inside each round-robin device queue", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::round_robin);
  d.enqueue(task("a", 0, 0, 1));   // -> 0
  d.enqueue(task("a", 1, 0, 1));   // -> 1
  d.enqueue(task("b", 0, 0, 2));   // -> 0
  d.enqueue(task("hi", 0, 9, 3));  // -> 1
  d.enqueue(task("hi", 1, 9, 3));  // -> 0
  CHECK(drain(d, 0) == std::vector<std::string>{"hi/1", "a/0", "b/0"});
  CHECK(drain(d, 1) == std::vector<std::string>{"hi/0", "a/1"});
}

TEST_CASE("cancel_job removes only that job's queued tasks", "[dispatcher]") {
  for (auto policy : {DispatchPolicy::least_loaded, DispatchPolicy::round_robin}) {
    Dispatcher d(2, policy);
    for (int k = 0; k < 3; ++k) d.enqueue(task("a", k, 0, 1));
    d.enqueue(task("b", 0, 0, 2));
    const auto removed = d.cancel_job("a");
    REQUIRE(removed.size() == 3);
    CHECK(removed[0].image == 0);
    CHECK(removed[2].image == 2);
    CHECK(d.queued() == 1);
    CHECK(d.cancel_job("a").empty());
    auto left = drain(d, 0);
    auto more = drain(d, 1);
    left.insert(left.end(), more.begin(), more.end());
    CHECK(left == std::vector<std::string>{"b/0"});
  }
}

TEST_CASE("a retried task goes to another device", "[dispatcher]") {
  SECTION("round-robin") {
    Dispatcher d(3, DispatchPolicy::round_robin);
    d.enqueue(task("x", 0));  // rotation -> device 0; next is 1
    auto t = d.try_take(0);
    REQUIRE(t);
    d.enqueue(task("y", 0));  // -> 1; next is 2
    d.enqueue(task("z", 0));  // -> 2; next is 0
    d.requeue(*t, 0);         // 0 is avoided -> 1
    CHECK(drain(d, 0).empty());
    CHECK(drain(d, 1) == std::vector<std::string>{"x/0", "y/0"});
  }
  SECTION("least-loaded: the failed device skips it while another healthy device exists") {
    Dispatcher d(2, DispatchPolicy::least_loaded);
    d.requeue(task("x", 0), 0);
    d.enqueue(task("y", 0, 0, 5));
    CHECK(d.try_take(0)->job_id == "y");
    CHECK_FALSE(d.try_take(0));
    CHECK(d.try_take(1)->job_id == "x");
  }
  SECTION("a single device retries on itself") {
    Dispatcher d(1, DispatchPolicy::round_robin);
    d.requeue(task("x", 0), 0);
    CHECK(d.try_take(0)->job_id == "x");
  }
}

TEST_CASE("a device failing repeatedly becomes unhealthy and its queue moves", "[dispatcher]") {
  Dispatcher d(3, DispatchPolicy::round_robin, {/*unhealthy_after=*/3});
  for (int k = 0; k < 6; ++k) d.enqueue(task("a", k, 0, 1));  // 0,3 -> dev0; 1,4; 2,5
  CHECK_FALSE(d.report_failure(0));
  CHECK_FALSE(d.report_failure(0));
  CHECK_FALSE(d.report_success(0));  // resets the count (it was healthy: no change of health)
  CHECK_FALSE(d.report_failure(0));
  CHECK_FALSE(d.report_failure(0));
  CHECK(d.health(0).consecutive_failures == 2);
  const auto next_probe = d.report_failure(0);
  REQUIRE(next_probe);
  CHECK(*next_probe == std::chrono::seconds(60));  // the default probe interval
  CHECK_FALSE(d.healthy(0));
  CHECK(d.health(0).health == DeviceHealth::unhealthy);
  CHECK(d.healthy_count() == 2);
  CHECK_FALSE(d.try_take(0));
  CHECK(d.queued_for(0) == 0);
  CHECK(d.queued() == 6);
  auto on1 = drain(d, 1);
  auto on2 = drain(d, 2);
  CHECK(on1.size() + on2.size() == 6);
  CHECK(on1.size() == 3);  // image 0 and 3 were spread over devices 1 and 2
  // New work never goes to the unhealthy device.
  for (int k = 0; k < 4; ++k) d.enqueue(task("b", k, 0, 2));
  CHECK(d.queued_for(0) == 0);
  CHECK(drain(d, 1).size() == 2);
  CHECK(drain(d, 2).size() == 2);
}

namespace {
// A clock the test moves by hand.
struct TestClock {
  std::shared_ptr<std::chrono::steady_clock::time_point> t =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  void advance(std::chrono::milliseconds d) { *t += d; }
  std::function<std::chrono::steady_clock::time_point()> fn() const {
    auto p = t;
    return [p] { return *p; };
  }
};

DeviceHealthOptions health_options(int unhealthy_after, std::chrono::milliseconds interval,
                                   const TestClock& clock, int backoff_max = 16) {
  DeviceHealthOptions o;
  o.unhealthy_after = unhealthy_after;
  o.probe_interval = interval;
  o.probe_backoff_max = backoff_max;
  o.clock = clock.fn();
  return o;
}
}  // namespace

TEST_CASE("an unhealthy device is probed with one task after the interval, healthy on success",
          "[dispatcher]") {
  TestClock clock;
  Dispatcher d(2, DispatchPolicy::round_robin, health_options(1, std::chrono::seconds(60), clock));
  CHECK(d.report_failure(1) == std::chrono::milliseconds(std::chrono::seconds(60)));
  d.enqueue(task("a", 0, 0, 1));
  d.enqueue(task("b", 0, 0, 2));
  CHECK(d.queued_for(0) == 2);  // nothing for the unhealthy device
  clock.advance(std::chrono::seconds(59));
  CHECK(d.health(1).probe_in == std::chrono::seconds(1));
  CHECK_FALSE(d.try_take(1));
  clock.advance(std::chrono::seconds(1));  // the probe is due: the next task placed is its probe
  d.enqueue(task("c", 0, 0, 3));
  d.enqueue(task("d", 0, 0, 4));  // one task at a time: this one goes to the healthy device
  CHECK(d.health(1).health == DeviceHealth::probing);
  CHECK(d.queued_for(1) == 1);
  REQUIRE(d.try_take(1)->job_id == "c");
  d.enqueue(task("e", 0, 0, 5));  // its probe runs: nothing more for it
  CHECK(d.queued_for(1) == 0);
  CHECK(d.queued_for(0) == 4);
  CHECK_FALSE(d.healthy(1));
  CHECK(d.report_success(1));  // the probe succeeded
  CHECK(d.healthy(1));
  CHECK(d.health(1).consecutive_failures == 0);
  d.enqueue(task("f", 0, 0, 6));
  d.enqueue(task("g", 0, 0, 7));
  CHECK(d.queued_for(1) == 1);  // back in the rotation
  CHECK(d.queued_for(0) == 5);
}

TEST_CASE("a probe with nothing new placed takes the first task queued elsewhere", "[dispatcher]") {
  TestClock clock;
  Dispatcher d(2, DispatchPolicy::round_robin, health_options(1, std::chrono::seconds(5), clock));
  d.report_failure(1);
  d.enqueue(task("low", 0, 0, 1));
  d.enqueue(task("high", 0, 5, 2));
  CHECK(d.queued_for(0) == 2);
  clock.advance(std::chrono::seconds(5));
  CHECK(d.try_take(1)->job_id == "high");  // the first in run order
  CHECK(d.queued_for(0) == 1);
}

TEST_CASE("a failed probe doubles the interval up to the cap, a success resets it",
          "[dispatcher]") {
  TestClock clock;
  Dispatcher d(1, DispatchPolicy::round_robin,
               health_options(2, std::chrono::seconds(10), clock, /*backoff_max=*/4));
  CHECK_FALSE(d.report_failure(0));
  CHECK(d.report_failure(0) == std::chrono::milliseconds(10000));
  std::vector<long> intervals;
  for (int probe = 0; probe < 4; ++probe) {
    clock.advance(d.health(0).probe_in);
    d.enqueue(task("p", probe, 0, 1));
    REQUIRE(d.try_take(0));
    const auto next = d.report_failure(0);
    REQUIRE(next);
    intervals.push_back(static_cast<long>(next->count()));
  }
  CHECK(intervals == std::vector<long>{20000, 40000, 40000, 40000});
  CHECK(d.health(0).consecutive_failures == 6);
  clock.advance(std::chrono::seconds(40));
  d.enqueue(task("ok", 0, 0, 2));
  REQUIRE(d.try_take(0));
  CHECK(d.report_success(0));
  CHECK(d.healthy(0));
  CHECK_FALSE(d.report_failure(0));                                // the count starts again at 0
  CHECK(d.report_failure(0) == std::chrono::milliseconds(10000));  // and the interval too
}

TEST_CASE("while no device is healthy, tasks wait for a probe and run in order", "[dispatcher]") {
  for (auto policy : {DispatchPolicy::least_loaded, DispatchPolicy::round_robin}) {
    TestClock clock;
    Dispatcher d(1, policy, health_options(1, std::chrono::seconds(1), clock));
    d.enqueue(task("a", 0, 0, 1));
    d.enqueue(task("a", 1, 0, 1));
    CHECK(d.report_failure(0));
    CHECK(d.healthy_count() == 0);
    CHECK(d.queued() == 2);                // kept, not dropped
    CHECK(d.enqueue(task("b", 0, 0, 2)));  // still accepted: a probe will come
    CHECK(d.queued() == 3);
    CHECK_FALSE(d.try_take(0));
    clock.advance(std::chrono::seconds(1));
    CHECK(drain(d, 0) == std::vector<std::string>{"a/0", "a/1", "b/0"});
    CHECK(d.report_success(0));
    CHECK(d.healthy_count() == 1);
  }
}

TEST_CASE("when every device is disabled, enqueue refuses and the queue is returned",
          "[dispatcher]") {
  for (auto policy : {DispatchPolicy::least_loaded, DispatchPolicy::round_robin}) {
    TestClock clock;
    Dispatcher d(2, policy, health_options(1, std::chrono::seconds(1), clock));
    d.enqueue(task("a", 0));
    d.enqueue(task("a", 1));
    CHECK(d.mark_disabled(0).empty());  // its share moves to device 1
    CHECK(d.queued() == 2);
    CHECK(d.any_enabled());
    clock.advance(std::chrono::hours(1));
    CHECK_FALSE(d.try_take(0));  // never probed
    CHECK(d.health(0).health == DeviceHealth::disabled);
    CHECK(d.mark_disabled(1).size() == 2);
    CHECK(d.queued() == 0);
    CHECK_FALSE(d.any_enabled());
    CHECK_FALSE(d.enqueue(task("b", 0)));
  }
}

TEST_CASE("take() of an unhealthy device blocks until its probe is due", "[dispatcher]") {
  DeviceHealthOptions o;
  o.unhealthy_after = 1;
  o.probe_interval = std::chrono::milliseconds(20);
  Dispatcher d(1, DispatchPolicy::round_robin, o);
  d.enqueue(task("a", 3));
  CHECK(d.report_failure(0));
  std::atomic<int> got{-1};
  std::thread worker([&] {
    auto t = d.take(0);  // returns once the probe is due
    got = t ? t->image : -2;
  });
  worker.join();
  CHECK(got == 3);
  CHECK(d.health(0).health == DeviceHealth::probing);
}

TEST_CASE("take() blocks until work arrives and returns nullopt after stop()", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::least_loaded);
  std::atomic<int> got{-1};
  std::thread worker([&] {
    auto t = d.take(1);
    got = t ? t->image : -2;
    auto none = d.take(1);
    if (none) got = -3;
  });
  d.enqueue(task("a", 7));
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  d.stop();
  worker.join();
  CHECK(got == 7);
  CHECK_FALSE(d.take(0));  // stopped: no blocking
}

TEST_CASE("a worker of a disabled device is woken with nullopt", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::round_robin);
  std::atomic<bool> returned{false};
  std::thread worker([&] {
    auto t = d.take(0);
    returned = !t.has_value();
  });
  d.mark_disabled(0);
  worker.join();
  CHECK(returned);
}

TEST_CASE("policies parse from their CLI names", "[dispatcher]") {
  CHECK(parse_dispatch_policy("round-robin") == DispatchPolicy::round_robin);
  CHECK(parse_dispatch_policy("least-loaded") == DispatchPolicy::least_loaded);
  CHECK_FALSE(parse_dispatch_policy("random"));
  CHECK_THROWS(Dispatcher(0, DispatchPolicy::round_robin));
  Dispatcher d(1, DispatchPolicy::round_robin);
  CHECK_THROWS_AS(d.try_take(1), std::out_of_range);
}
