// The dispatcher: round-robin order, least-loaded, priorities, cancellation, retries elsewhere,
// unhealthy devices, stop. Single-threaded where possible (try_take) so the order is exact.
#include <catch2/catch.hpp>

#include <atomic>
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
  Dispatcher d(3, DispatchPolicy::round_robin, /*unhealthy_after=*/3);
  for (int k = 0; k < 6; ++k) d.enqueue(task("a", k, 0, 1));  // 0,3 -> dev0; 1,4; 2,5
  CHECK_FALSE(d.report_failure(0));
  CHECK_FALSE(d.report_failure(0));
  d.report_success(0);  // resets the count
  CHECK_FALSE(d.report_failure(0));
  CHECK_FALSE(d.report_failure(0));
  std::vector<TaskRef> orphans;
  CHECK(d.report_failure(0, &orphans));
  CHECK(orphans.empty());
  CHECK_FALSE(d.healthy(0));
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

TEST_CASE("when the last device becomes unhealthy its tasks are returned", "[dispatcher]") {
  for (auto policy : {DispatchPolicy::least_loaded, DispatchPolicy::round_robin}) {
    Dispatcher d(1, policy, 1);
    d.enqueue(task("a", 0));
    d.enqueue(task("a", 1));
    std::vector<TaskRef> orphans;
    CHECK(d.report_failure(0, &orphans));
    CHECK(orphans.size() == 2);
    CHECK(d.queued() == 0);
    CHECK_FALSE(d.enqueue(task("b", 0)));
  }
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

TEST_CASE("a worker of an unhealthy device is woken with nullopt", "[dispatcher]") {
  Dispatcher d(2, DispatchPolicy::round_robin);
  std::atomic<bool> returned{false};
  std::thread worker([&] {
    auto t = d.take(0);
    returned = !t.has_value();
  });
  d.mark_unhealthy(0);
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
