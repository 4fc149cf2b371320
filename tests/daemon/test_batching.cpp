// Batches across requests (issue 11), torch-free: the batch key (what may share a UNet batch),
// the dispatcher's take_compatible (partners from a device's own share only), and the core with
// batching workers over the fake backend (batch_size per image, /devices' current batch, a
// cancel that takes one image out of a running batch).
#include <catch2/catch.hpp>

#include <thread>
#include <tuple>

#include "daemon/api/batch_key.h"
#include "daemon/dispatcher.h"
#include "service_harness.h"

using namespace diffusiond;
using namespace diffusiond::test;
using namespace std::chrono_literals;

namespace {

ImageSpec spec() {
  ImageSpec s;
  s.prompt = "a red fox";
  s.steps = 20;
  s.guidance_scale = 7.5;
  s.seed = 1;
  s.width = 512;
  s.height = 512;
  s.scheduler = "euler_a";
  return s;
}

TaskRef keyed(const std::string& job, int image, const std::string& key, int priority = 0,
              std::int64_t seq = 0) {
  TaskRef t{job, image, priority, seq, -1};
  t.batch_key = key;
  return t;
}

std::vector<std::string> names(const std::vector<TaskRef>& tasks) {
  std::vector<std::string> out;
  for (const auto& t : tasks) out.push_back(t.job_id + "/" + std::to_string(t.image));
  return out;
}

}  // namespace

TEST_CASE("batch key: what differs per image stays out, what a batch shares is in", "[batching]") {
  const std::string base = batch_key(spec());
  CHECK_FALSE(base.empty());
  auto same = [&](auto change) {
    ImageSpec s = spec();
    change(s);
    return batch_key(s) == base;
  };
  CHECK(same([](ImageSpec& s) { s.prompt = "something else entirely"; }));
  CHECK(same([](ImageSpec& s) { s.negative_prompt = "blurry"; }));
  CHECK(same([](ImageSpec& s) { s.negative_prompt = ""; }));
  CHECK(same([](ImageSpec& s) { s.seed = 12345; }));
  CHECK(same([](ImageSpec& s) { s.guidance_scale = 3.0; }));
  CHECK(same([](ImageSpec& s) { s.index = 7; }));
  CHECK(same([](ImageSpec& s) { s.original_size = std::array<int, 2>{1024, 1024}; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.width = 768; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.height = 768; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.steps = 21; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.scheduler = "ddim"; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.guidance_scale = 1.0; }));  // CFG off
  // One model, one LoRA set (names, weights and merge order) and one prompt syntax per batch;
  // previews are per image.
  CHECK(same([](ImageSpec& s) { s.previews = true; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.model = "other-model"; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.loras = {{"style", 1.0}}; }));
  CHECK_FALSE(same([](ImageSpec& s) { s.prompt_syntax = PromptSyntax::a1111; }));
  ImageSpec one = spec(), other = spec();
  one.loras = {{"style", 0.8}, {"ink", 0.5}};
  other.loras = {{"style", 0.8}, {"ink", 0.5}};
  CHECK(batch_key(one) == batch_key(other));
  other.loras = {{"ink", 0.5}, {"style", 0.8}};  // another merge order rounds differently
  CHECK(batch_key(one) != batch_key(other));
  other.loras = {{"style", 0.8}, {"ink", 0.5000001}};
  CHECK(batch_key(one) != batch_key(other));
  other.loras = {{"style:0.8,ink", 0.5}};  // names cannot fake another list
  one.loras = {{"style", 0.8}, {"ink", 0.5}};
  CHECK(batch_key(one) != batch_key(other));
  // CFG off at any scale <= 1 is one key.
  ImageSpec a = spec(), b = spec();
  a.guidance_scale = 0.0;
  b.guidance_scale = 1.0;
  CHECK(batch_key(a) == batch_key(b));
}

TEST_CASE("take_compatible: same key and priority from the device's own queue, in order",
          "[batching][dispatcher]") {
  Dispatcher d(1, DispatchPolicy::round_robin);
  d.enqueue(keyed("a", 0, "K", 0, 1));
  d.enqueue(keyed("b", 0, "L", 0, 2));  // incompatible: left for later, in its place
  d.enqueue(keyed("c", 0, "K", 0, 3));
  d.enqueue(keyed("d", 0, "K", 0, 4));
  d.enqueue(keyed("e", 0, "K", 0, 5));
  d.enqueue(keyed("f", 0, "K", -1, 6));  // lower priority: not in this batch
  const auto first = d.try_take(0);
  REQUIRE(first);
  CHECK(first->job_id == "a");
  CHECK(names(d.take_compatible(0, *first, 2)) == std::vector<std::string>{"c/0", "d/0"});
  CHECK(names(d.take_compatible(0, *first, 8)) == std::vector<std::string>{"e/0"});
  CHECK(d.take_compatible(0, *first, 8).empty());
  CHECK(d.try_take(0)->job_id == "b");
  CHECK(d.try_take(0)->job_id == "f");
  // A higher priority waiting: no partners (a bigger batch would delay it).
  d.enqueue(keyed("x", 0, "K", 0, 9));
  d.enqueue(keyed("urgent", 0, "L", 5, 10));
  CHECK(d.take_compatible(0, *first, 4).empty());
  CHECK(d.try_take(0)->job_id == "urgent");
  CHECK(names(d.take_compatible(0, *first, 4)) == std::vector<std::string>{"x/0"});
  // An empty key never batches.
  d.enqueue(keyed("g", 0, "", 0, 7));
  d.enqueue(keyed("h", 0, "", 0, 8));
  const auto g = d.try_take(0);
  CHECK(d.take_compatible(0, *g, 4).empty());
}

TEST_CASE("take_compatible: round-robin stays inside the device's share",
          "[batching][dispatcher]") {
  Dispatcher d(2, DispatchPolicy::round_robin);
  for (int k = 0; k < 6; ++k) d.enqueue(keyed("a", k, "K", 0, 1));  // 0,2,4 -> dev 0; 1,3,5 -> 1
  const auto first = d.try_take(0);
  REQUIRE(first);
  CHECK(names(d.take_compatible(0, *first, 8)) == std::vector<std::string>{"a/2", "a/4"});
  CHECK(d.queued_for(1) == 3);  // the other device's queue is untouched
}

TEST_CASE("take_compatible: a retry that avoids this device, a probing device, a pause",
          "[batching][dispatcher]") {
  DeviceHealthOptions health;
  health.unhealthy_after = 1;
  health.probe_interval = 1ms;
  Dispatcher d(2, DispatchPolicy::least_loaded, health);
  d.enqueue(keyed("a", 0, "K", 0, 1));
  auto retried = keyed("b", 0, "K", 0, 2);
  d.requeue(retried, 0);  // failed on device 0: device 1 is healthy, so 0 must not batch it
  const auto first = d.try_take(0);
  REQUIRE(first);
  CHECK(d.take_compatible(0, *first, 4).empty());
  CHECK(d.try_take(1)->job_id == "b");

  d.enqueue(keyed("c", 0, "K", 0, 3));
  d.set_paused(true);
  CHECK(d.take_compatible(0, *first, 4).empty());
  d.set_paused(false);

  d.report_failure(1);  // unhealthy, then probing after 1 ms: one task at a time
  std::this_thread::sleep_for(5ms);
  d.enqueue(keyed("e", 0, "K", 0, 5));
  const auto probe = d.try_take(1);
  REQUIRE(probe);
  CHECK(d.health(1).health == DeviceHealth::probing);
  CHECK(d.take_compatible(1, *probe, 4).empty());
  CHECK(names(d.take_compatible(0, *probe, 4)).size() == 1);  // the healthy device may
}

TEST_CASE("take_compatible waits for a partner only when asked to", "[batching][dispatcher]") {
  Dispatcher d(1, DispatchPolicy::round_robin);
  d.enqueue(keyed("a", 0, "K", 0, 1));
  const auto first = d.try_take(0);
  REQUIRE(first);
  CHECK(d.take_compatible(0, *first, 4).empty());  // no wait by default
  std::thread later([&] {
    std::this_thread::sleep_for(50ms);
    d.enqueue(keyed("b", 0, "L", 0, 2));  // incompatible: does not end the wait
    d.enqueue(keyed("c", 0, "K", 0, 3));
  });
  const auto found = d.take_compatible(0, *first, 4, std::chrono::steady_clock::now() + 30s);
  later.join();
  CHECK(names(found) == std::vector<std::string>{"c/0"});
  d.stop();  // a stopped dispatcher ends a wait at once
  CHECK(d.take_compatible(0, *first, 4, std::chrono::steady_clock::now() + 30s).empty());
}

TEST_CASE("the core batches compatible images of different jobs, per image to the end",
          "[batching][service]") {
  Harness h;
  h.options.max_batch = 4;
  h.backend.hold_loads();
  h.start("cpu", /*wait=*/false);
  // Queued before the replica loads, so the worker finds them together.
  auto blocking = request({"BLOCK"});
  const auto a = h.service->submit(blocking);
  const auto b = h.service->submit(request({"b prompt"}));
  auto other_size = request({"other size"});
  other_size.width = 12;
  const auto c = h.service->submit(other_size);
  auto d_request = request({"d prompt"});
  d_request.guidance_scale = 3.0;  // differs per image: same batch
  d_request.seed = 7;
  const auto d = h.service->submit(d_request);
  Recorder b_events;
  auto subscription = h.service->subscribe(b.id, std::ref(b_events));
  h.backend.release_loads();
  REQUIRE(h.service->wait_loaded(20s));
  REQUIRE(h.backend.wait_blocked(1));

  // Running: one batch of a, b, d; /devices shows it.
  const auto devices = h.service->devices();
  REQUIRE(devices.size() == 1);
  std::vector<std::string> batch;
  for (const auto& image : devices[0].current_batch)
    batch.push_back(image.job_id + "/" + std::to_string(image.image));
  CHECK(batch == std::vector<std::string>{a.id + "/0", b.id + "/0", d.id + "/0"});
  CHECK(h.service->job(b.id)->images[0].status == ImageStatus::running);
  CHECK(h.service->job(b.id)->images[0].batch_size == 3);

  // b is cancelled mid-batch: it leaves at the next step, a and d finish.
  CHECK(h.service->cancel(b.id) == CancelResult::cancelled);
  h.backend.release();
  const auto a_done = h.wait_finished(a.id);
  const auto b_done = h.wait_finished(b.id);
  const auto c_done = h.wait_finished(c.id);
  const auto d_done = h.wait_finished(d.id);
  CHECK(a_done.status == JobStatus::done);
  CHECK(b_done.status == JobStatus::cancelled);
  CHECK(c_done.status == JobStatus::done);
  CHECK(d_done.status == JobStatus::done);
  CHECK(a_done.images[0].batch_size == 3);
  CHECK(d_done.images[0].batch_size == 3);
  CHECK(c_done.images[0].batch_size == 1);
  CHECK(decode_png(read_file(*h.service->image_path(d.id, 0))).pixels ==
        expected_fake_image("d prompt", 7, 8, 4).pixels);
  CHECK(decode_png(read_file(*h.service->image_path(c.id, 0))).pixels ==
        expected_fake_image("other size", 42, 12, 4).pixels);
  // b made step 1 with the batch, then left it.
  REQUIRE(b_events.wait_terminal());
  int b_progress = 0;
  for (const auto& e : b_events.events())
    if (e.kind == JobEvent::Kind::progress) ++b_progress;
  CHECK(b_progress == 1);
  // The calls: one batch of three, then c alone.
  std::vector<std::pair<std::string, int>> calls;
  for (const auto& call : h.backend.calls()) calls.emplace_back(call.prompt, call.batch_size);
  CHECK(calls == std::vector<std::pair<std::string, int>>{
                     {"BLOCK", 3}, {"b prompt", 3}, {"d prompt", 3}, {"other size", 1}});
  // The store keeps batch_size (read back after the jobs left memory).
  subscription.reset();  // before its service goes
  h.restart("cpu");
  CHECK(h.service->job(a.id)->images[0].batch_size == 3);
  CHECK(h.service->job(c.id)->images[0].batch_size == 1);
}

TEST_CASE("a failing batch runs its images alone: only the culprit fails", "[batching][service]") {
  Harness h;
  h.options.max_batch = 4;
  h.options.max_attempts = 1;
  h.backend.hold_loads();
  h.start("cpu", /*wait=*/false);
  const auto bad = h.service->submit(request({"FAIL here"}));
  const auto good = h.service->submit(request({"innocent bystander"}));
  h.backend.release_loads();
  REQUIRE(h.service->wait_loaded(20s));
  CHECK(h.wait_finished(bad.id).status == JobStatus::failed);
  CHECK(h.wait_finished(good.id).status == JobStatus::done);
  CHECK(h.service->devices()[0].images_failed == 1);         // the culprit's run alone
  CHECK(h.service->devices()[0].consecutive_failures == 0);  // the bystander's success reset it
  std::vector<std::pair<std::string, int>> calls;
  for (const auto& call : h.backend.calls()) calls.emplace_back(call.prompt, call.batch_size);
  CHECK(calls == std::vector<std::pair<std::string, int>>{{"FAIL here", 2},
                                                          {"innocent bystander", 2},
                                                          {"FAIL here", 1},
                                                          {"innocent bystander", 1}});
}

TEST_CASE("a batch is of one model: images of another model wait for their own batch",
          "[batching][service][models]") {
  Harness h;
  h.options.max_batch = 4;
  h.options.max_loaded_models = 2;
  auto alpha = FakeBackend::fake_model_info();
  alpha.name = "alpha";
  alpha.is_default = true;
  auto beta = FakeBackend::fake_model_info();
  beta.name = "beta";
  beta.is_default = false;
  h.backend.model_list = {alpha, beta};
  h.backend.hold_loads();
  h.start("cpu", /*wait=*/false);
  auto with_model = [](const std::string& prompt, const std::string& model) {
    auto r = request({prompt});
    r.model = model;
    return r;
  };
  const auto a = h.service->submit(with_model("a alpha", "alpha"));
  const auto b = h.service->submit(with_model("b beta", "beta"));
  const auto c = h.service->submit(with_model("c alpha", "alpha"));
  const auto d = h.service->submit(with_model("d beta", "beta"));
  h.backend.release_loads();
  REQUIRE(h.service->wait_loaded(20s));
  for (const auto& id : {a.id, b.id, c.id, d.id})
    CHECK(h.wait_finished(id).status == JobStatus::done);
  std::vector<std::tuple<std::string, std::string, int>> calls;
  for (const auto& call : h.backend.calls())
    calls.emplace_back(call.prompt, call.model, call.batch_size);
  CHECK(calls == std::vector<std::tuple<std::string, std::string, int>>{{"a alpha", "alpha", 2},
                                                                        {"c alpha", "alpha", 2},
                                                                        {"b beta", "beta", 2},
                                                                        {"d beta", "beta", 2}});
  CHECK(h.service->job(b.id)->images[0].batch_size == 2);
}
