// CoreService end to end with the fake generator: real store (SQLite in a temp dir), real
// dispatcher, worker threads and PNG pool; only the model is fake.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include "daemon/core_service.h"
#include "fake_backend.h"
#include "pipeline/media/png.h"
#include "service_harness.h"
#include "temp_dir.h"

using namespace diffusiond;
using namespace diffusiond::test;
using namespace std::chrono_literals;

TEST_CASE("events of a job arrive in order - images are spread round-robin", "[service]") {
  Harness h;
  h.backend.hold_loads();
  h.start("cpu*2", /*wait=*/false);
  CHECK_FALSE(h.service->ready());
  const auto job = h.service->submit(request({"a red fox", "a blue jay"}, 2, 3));
  CHECK(job.status == JobStatus::queued);
  REQUIRE(job.images.size() == 4);
  Recorder recorder;
  auto subscription = h.service->subscribe(job.id, std::ref(recorder));
  h.backend.release_loads();
  REQUIRE(h.service->wait_loaded(20s));
  CHECK(h.service->ready());
  REQUIRE(recorder.wait_terminal());
  const auto events = recorder.events();
  INFO(kinds(events));
  REQUIRE(!events.empty());
  CHECK(events.back().kind == JobEvent::Kind::done);
  CHECK(events.back().image == -1);
  for (int k = 0; k < 4; ++k) {  // per image: started, progress 1..3, image
    std::vector<std::string> seen;
    for (const auto& e : events)
      if (e.image == k)
        seen.push_back(std::string(to_string(e.kind)) +
                       (e.kind == JobEvent::Kind::progress ? std::to_string(e.step) : ""));
    CHECK(seen ==
          std::vector<std::string>{"started", "progress1", "progress2", "progress3", "image"});
  }
  for (const auto& e : events)
    if (e.kind == JobEvent::Kind::started)
      CHECK(e.device == (e.image % 2 == 0 ? "cpu:0" : "cpu:1"));

  const auto done = h.wait_finished(job.id);
  CHECK(done.status == JobStatus::done);
  CHECK(done.started_ms >= done.created_ms);
  CHECK(done.finished_ms >= done.started_ms);
  for (int k = 0; k < 4; ++k) {
    const auto& image = done.images[static_cast<std::size_t>(k)];
    CHECK(image.status == ImageStatus::done);
    CHECK(image.device == (k % 2 == 0 ? "cpu:0" : "cpu:1"));  // round-robin
    CHECK(image.step == 3);
    CHECK(image.has_file);
    const auto path = h.service->image_path(job.id, k);
    REQUIRE(path);
    const std::string prompt = k < 2 ? "a red fox" : "a blue jay";
    const auto expected = diffusiond::test::expected_fake_image(prompt, 42 + k, 8, 4);
    const std::string bytes = read_file(*path);
    const RgbImage decoded = decode_png(bytes);
    CHECK(decoded.width == 8);
    CHECK(decoded.height == 4);
    CHECK(decoded.pixels == expected.pixels);
    std::map<std::string, std::string> chunks;
    for (const auto& chunk : read_png_text_chunks(bytes)) chunks[chunk.keyword] = chunk.text;
    CHECK_THAT(chunks["parameters"],
               Catch::StartsWith(prompt + "\nSteps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: " +
                                 std::to_string(42 + k) + ", Size: 8x4"));
    CHECK_THAT(chunks["parameters"], Catch::Contains("Model: fake-model"));
    const auto json = nlohmann::json::parse(chunks["diffusiond"]);
    CHECK(json["device"] == image.device);
    CHECK(json["seed"] == 42 + k);
    CHECK(json["scheduler"] == "euler_a");
    CHECK(json["request"]["job_id"] == job.id);
    CHECK(json["request"]["prompts"] == nlohmann::json({"a red fox", "a blue jay"}));
  }
  CHECK_FALSE(h.service->image_path(job.id, 4));
  CHECK_FALSE(h.service->image_path("0000000000000000", 0));
}

TEST_CASE("the same request gives the same images on one device or two", "[service]") {
  auto pixels_of = [](const std::string& devices) {
    Harness h;
    h.start(devices);
    const auto job = h.service->submit(request({"p", "q"}, 2));
    h.wait_finished(job.id);
    std::vector<std::string> out;
    for (int k = 0; k < 4; ++k) {
      const auto bytes = read_file(*h.service->image_path(job.id, k));
      const auto pixels = decode_png(bytes).pixels;
      out.emplace_back(pixels.begin(), pixels.end());
    }
    return out;
  };
  CHECK(pixels_of("cpu") == pixels_of("cpu*2"));
}

TEST_CASE("least-loaded dispatch runs every image", "[service]") {
  Harness h;
  h.options.dispatch = DispatchPolicy::least_loaded;
  h.start("cpu*3");
  const auto job = h.service->submit(request({"x"}, 7));
  const auto done = h.wait_finished(job.id);
  CHECK(done.status == JobStatus::done);
  for (const auto& image : done.images) CHECK(image.has_file);
}

TEST_CASE("a cancelled queued job never runs", "[service]") {
  Harness h;
  h.start("cpu");
  const auto blocker = h.service->submit(request({"BLOCK"}));
  REQUIRE(h.backend.wait_blocked(1));
  const auto victim = h.service->submit(request({"victim"}, 2));
  Recorder recorder;
  auto subscription = h.service->subscribe(victim.id, std::ref(recorder));
  CHECK(h.service->cancel(victim.id) == CancelResult::cancelled);
  const auto now = h.service->job(victim.id);
  CHECK(now->status == JobStatus::cancelled);
  for (const auto& image : now->images) CHECK(image.status == ImageStatus::cancelled);
  CHECK(h.service->cancel(victim.id) == CancelResult::already_finished);
  h.backend.release();
  CHECK(h.wait_finished(blocker.id).status == JobStatus::done);
  for (const auto& call : h.backend.calls()) CHECK(call.prompt != "victim");
  REQUIRE(recorder.wait_terminal());
  CHECK(kinds(recorder.events()) == "cancelled ");
  CHECK(h.service->cancel("ffffffffffffffff") == CancelResult::not_found);
  CHECK(h.service->queue_depth() == 0);
}

TEST_CASE("a cancelled running job stops within one step", "[service]") {
  Harness h;
  h.start("cpu");
  const auto job = h.service->submit(request({"BLOCK"}, 1, 10));
  Recorder recorder;
  auto subscription = h.service->subscribe(job.id, std::ref(recorder));
  REQUIRE(h.backend.wait_blocked(1));  // step 1 done, inside step 2
  CHECK(h.service->cancel(job.id) == CancelResult::cancelled);
  CHECK(h.service->job(job.id)->status == JobStatus::cancelled);
  h.backend.release();
  const auto ended = h.wait_finished(job.id);
  CHECK(ended.status == JobStatus::cancelled);
  CHECK(ended.images[0].status == ImageStatus::cancelled);
  CHECK_FALSE(ended.images[0].has_file);
  CHECK(ended.images[0].step <= 2);
  const auto events = recorder.events();
  INFO(kinds(events));
  CHECK(events.back().kind == JobEvent::Kind::cancelled);
  for (const auto& e : events) CHECK((e.kind != JobEvent::Kind::progress || e.step <= 2));
  // The device is free again.
  const auto next = h.service->submit(request({"after"}));
  CHECK(h.wait_finished(next.id).status == JobStatus::done);
  CHECK(h.service->cancel(next.id) == CancelResult::already_finished);
}

TEST_CASE("a failure on one device is retried once on another", "[service]") {
  Harness h;
  h.backend.failing_devices = {"cpu:0"};
  h.start("cpu*2");
  const auto job = h.service->submit(request({"retry me"}));  // round-robin: cpu:0 first
  const auto done = h.wait_finished(job.id);
  CHECK(done.status == JobStatus::done);
  CHECK(done.images[0].device == "cpu:1");
  const auto calls = h.backend.calls();
  REQUIRE(calls.size() == 2);
  CHECK(calls[0].device == "cpu:0");
  CHECK(calls[1].device == "cpu:1");
  CHECK(h.store->load(job.id)->attempts[0] == 2);
  CHECK(h.service->devices()[0].healthy);  // one failure is not enough
}

TEST_CASE("an image failing everywhere fails the job, the others still finish", "[service]") {
  Harness h;
  h.start("cpu*2");
  Recorder recorder;
  const auto job = h.service->submit(request({"FAIL here", "fine"}, 1));
  auto subscription = h.service->subscribe(job.id, std::ref(recorder));
  const auto ended = h.wait_finished(job.id);
  CHECK(ended.status == JobStatus::failed);
  CHECK(ended.images[0].status == ImageStatus::failed);
  CHECK_THAT(ended.images[0].error, Catch::Contains("fake failure"));
  CHECK(ended.images[1].status == ImageStatus::done);
  CHECK_THAT(ended.error, Catch::StartsWith("image 0: "));
  REQUIRE(recorder.wait_terminal());
  const auto events = recorder.events();
  CHECK(events.back().kind == JobEvent::Kind::failed);
  CHECK(events.back().image == -1);
  CHECK(h.store->load(job.id)->view.status == JobStatus::failed);
}

TEST_CASE("a device that keeps failing is marked unhealthy - work goes elsewhere", "[service]") {
  Harness h;
  h.backend.failing_devices = {"cpu:0"};
  h.options.unhealthy_after = 2;
  h.start("cpu*2");
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(h.service->submit(request({"job"}, 1)).id);
  for (const auto& id : ids) {
    const auto done = h.wait_finished(id);
    CHECK(done.status == JobStatus::done);
    CHECK(done.images[0].device == "cpu:1");
  }
  const auto devices = h.service->devices();
  CHECK_FALSE(devices[0].healthy);
  CHECK(devices[1].healthy);
  CHECK(devices[1].images_done == 6);
  CHECK(h.service->workers_alive());
  CHECK_THAT(h.service->metrics_text(),
             Catch::Contains("diffusiond_device_healthy{device=\"cpu:0\"} 0"));
}

TEST_CASE("a device whose model fails to load gets no work", "[service]") {
  Harness h;
  h.backend.failing_loads = {"cpu:1"};
  h.start("cpu*2");
  CHECK(h.service->ready());
  const auto devices = h.service->devices();
  CHECK_FALSE(devices[1].loaded);
  CHECK_FALSE(devices[1].healthy);
  CHECK_THAT(devices[1].description, Catch::Contains("fake load failure"));
  const auto job = h.service->submit(request({"x"}, 3));
  for (const auto& image : h.wait_finished(job.id).images) CHECK(image.device == "cpu:0");
}

TEST_CASE("a full queue answers 429 with a retry hint", "[service]") {
  Harness h;
  h.options.max_queue = 2;
  h.start("cpu");
  const auto blocker = h.service->submit(request({"BLOCK"}));
  REQUIRE(h.backend.wait_blocked(1));
  const auto queued = h.service->submit(request({"two"}, 2));
  try {
    h.service->submit(request({"three"}));
    FAIL("the queue accepted more than max_queue images");
  } catch (const ServiceError& e) {
    CHECK(e.code() == ErrorCode::queue_full);  // http/ answers it 429
    CHECK(e.reason() == "queue_full");
    CHECK(e.retry_after_s() >= 1);
  }
  h.backend.release();
  h.wait_finished(blocker.id);
  h.wait_finished(queued.id);
  CHECK_NOTHROW(h.service->submit(request({"now it fits"}, 5)));  // an idle queue takes any job
}

TEST_CASE("drain persists interrupted work - a restart finishes every job", "[service]") {
  Harness h;
  h.start("cpu");
  const auto running = h.service->submit(request({"BLOCK"}, 1, 4));
  REQUIRE(h.backend.wait_blocked(1));
  const auto waiting = h.service->submit(request({"waiting"}, 2));
  std::thread drainer([&] { h.service->drain(0ms); });
  while (!h.service->stopping_now()) std::this_thread::sleep_for(1ms);
  h.backend.release();
  drainer.join();
  CHECK_FALSE(h.service->ready());
  try {
    h.service->submit(request({"late"}));
    FAIL("accepted a job while draining");
  } catch (const ServiceError& e) {
    CHECK(e.code() == ErrorCode::unavailable);  // http/ answers it 503
    CHECK(e.reason() == "draining");
  }
  const auto persisted = h.store->load(running.id);
  CHECK(persisted->view.status == JobStatus::running);
  CHECK(persisted->view.images[0].status == ImageStatus::queued);
  CHECK(h.store->load(waiting.id)->view.status == JobStatus::queued);
  CHECK(h.service->queued_images() == 3);  // the interrupted one and the two waiting

  h.restart("cpu*2");
  for (const auto& id : {running.id, waiting.id}) {
    const auto done = h.wait_finished(id);
    CHECK(done.status == JobStatus::done);
    for (const auto& image : done.images) CHECK(h.service->image_path(id, image.index));
  }
}

TEST_CASE("a PNG that cannot be written fails that image", "[service]") {
  Harness h;
  h.start("cpu");
  const auto job = h.service->submit(request({"BADPNG"}));
  const auto ended = h.wait_finished(job.id);
  CHECK(ended.status == JobStatus::failed);
  CHECK_THAT(ended.images[0].error, Catch::Contains("cannot write the PNG: encoder refused"));
}

TEST_CASE("jobs() lists newest first with live state", "[service]") {
  Harness h;
  h.start("cpu");
  const auto a = h.service->submit(request({"a"}));
  h.wait_finished(a.id);
  const auto b = h.service->submit(request({"BLOCK"}));
  REQUIRE(h.backend.wait_blocked(1));
  const auto list = h.service->jobs(std::nullopt, 10);
  REQUIRE(list.size() == 2);
  CHECK(list[0].id == b.id);
  CHECK(list[0].status == JobStatus::running);
  CHECK(list[0].images[0].step == 1);  // live progress, not yet in the store
  CHECK(list[1].id == a.id);
  CHECK(h.service->jobs(JobStatus::done, 10).size() == 1);
  CHECK(h.service->status_line() == "queue=0 running=1 devices=1/1");
  h.backend.release();
  h.wait_finished(b.id);
}

TEST_CASE("metrics are Prometheus text with per-device counters and histograms", "[service]") {
  Harness h;
  h.start("cpu*2");
  const auto job = h.service->submit(request({"m"}, 4, 5));
  h.wait_finished(job.id);
  const std::string text = h.service->metrics_text();
  INFO(text);
  const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInfa]+$)");
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  std::istringstream lines(text);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    INFO(line);
    CHECK((std::regex_match(line, sample) || std::regex_match(line, comment)));
    samples += line[0] != '#';
  }
  CHECK(samples > 20);
  CHECK_THAT(text, Catch::Contains("diffusiond_queue_depth 0\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_jobs{state=\"done\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_device_images_total{device=\"cpu:0\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_device_steps_total{device=\"cpu:1\"} 10\n"));
  CHECK_THAT(text,
             Catch::Contains("diffusiond_step_seconds_bucket{device=\"cpu:0\",le=\"+Inf\"} 10\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_step_seconds_count{device=\"cpu:1\"} 10\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_queue_wait_seconds_count 4\n"));
  CHECK_THAT(text, Catch::Contains("# TYPE diffusiond_queue_wait_seconds histogram\n"));
  CHECK_THAT(text, Catch::Contains("diffusiond_images_written_total 4\n"));
}

TEST_CASE("devices and model info come from the backend", "[service]") {
  Harness h;
  h.start("cpu*2");
  const auto job = h.service->submit(request({"d"}, 2));
  h.wait_finished(job.id);
  const auto devices = h.service->devices();
  REQUIRE(devices.size() == 2);
  CHECK(devices[0].name == "cpu:0");
  CHECK(devices[0].description == "fake cpu:0");
  CHECK(devices[0].memory_total_bytes == 1000);
  CHECK(devices[0].loaded);
  CHECK(devices[0].images_done == 1);
  CHECK(devices[0].steps_done == 3);
  CHECK_FALSE(devices[0].busy);
  CHECK(devices[0].busy_ratio >= 0);
  CHECK(devices[0].busy_ratio <= 1);
  CHECK(h.service->model_info().name == "fake-model");
  CHECK(h.service->canonical_scheduler("Euler a") == std::optional<std::string>("euler_a"));
  CHECK_FALSE(h.service->canonical_scheduler("nope"));
}

TEST_CASE("submit fills model defaults and canonical scheduler names", "[service]") {
  Harness h;
  h.start("cpu");
  GenerateRequest bare;
  bare.prompts = {"defaults"};
  bare.scheduler = "Euler";
  const auto job = h.service->submit(bare);
  CHECK(job.request.steps == 3);
  CHECK(job.request.width == 16);
  CHECK(job.request.height == 8);
  CHECK(job.request.scheduler == "euler");
  bare.scheduler.reset();
  CHECK(h.service->submit(bare).request.scheduler == "euler");  // the model's default
  bare.scheduler = "no such sampler";
  try {
    h.service->submit(bare);
    FAIL("accepted an unknown scheduler");
  } catch (const ServiceError& e) {
    CHECK(e.code() == ErrorCode::invalid_request);  // http/ answers it 400
    CHECK_THAT(e.what(), Catch::Contains("no such sampler"));
  }
  bare.prompts.clear();
  CHECK_THROWS_AS(h.service->submit(bare), ServiceError);
  CHECK(h.wait_finished(job.id).status == JobStatus::done);
}

TEST_CASE("100 concurrent submissions all complete", "[service]") {
  Harness h;
  h.options.max_queue = 1000;
  h.start("cpu*2");
  std::vector<std::string> ids(100);
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (int i = c; i < 100; i += 4)
        ids[static_cast<std::size_t>(i)] =
            h.service->submit(request({"c" + std::to_string(i)}, 1, 2)).id;
    });
  for (auto& t : clients) t.join();
  for (const auto& id : ids) CHECK(h.wait_finished(id).status == JobStatus::done);
  CHECK(h.store->count_by_status().at(JobStatus::done) == 100);
}

TEST_CASE("a store that cannot commit for a while stalls neither the devices nor the reads",
          "[service][store]") {
  Harness h;
  h.start("cpu");
  const auto job = h.service->submit(request({"BLOCK"}, 1, 4));
  REQUIRE(h.backend.wait_blocked(1));
  // Another process takes SQLite's write lock: every commit now waits (busy_timeout 2 s).
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open((h.dir.path() / "diffusiond.db").c_str(), &other) == SQLITE_OK);
  sqlite3_busy_timeout(other, 5000);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  h.backend.release();
  // The image finishes and the job is done in memory while the store is still locked: no
  // device thread and no read waited for a commit. (The deadline stays well inside SQLite's
  // 2 s busy timeout; it guards against a hang, it measures nothing.)
  bool done_while_locked = false;
  const auto until = std::chrono::steady_clock::now() + 1s;
  while (!done_while_locked && std::chrono::steady_clock::now() < until) {
    done_while_locked = h.service->job(job.id)->status == JobStatus::done;
    std::this_thread::sleep_for(2ms);
  }
  const auto stored_while_locked = h.store->load(job.id)->view.status;  // the read connection
  REQUIRE(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(other);
  CHECK(done_while_locked);
  CHECK(stored_while_locked != JobStatus::done);  // the store had not caught up yet
  h.service->wait_store_written();
  CHECK(h.store->load(job.id)->view.status == JobStatus::done);
  CHECK(h.service->ready());  // a slow commit is not a failure
}

TEST_CASE("an image that was running at every crash fails instead of looping", "[service]") {
  Harness h;
  h.store = JobStore::open(h.dir.path());
  // What two crashes while image 0 ran leave in the store: started twice, still running.
  JobRequest r;
  r.prompts = {"poison", "fine"};
  r.steps = 2;
  r.width = 8;
  r.height = 4;
  r.scheduler = "euler";
  JobRecord crashed = make_job(r, make_job_id(), unix_ms_now(), "fake-model");
  h.store->insert(crashed);
  set_image_status(crashed, 0, ImageStatus::running);
  crashed.attempts[0] = h.options.max_attempts;
  h.store->update(crashed, {0});
  h.start("cpu");
  const auto ended = h.wait_finished(crashed.view.id);
  CHECK(ended.images[0].status == ImageStatus::failed);
  CHECK_THAT(ended.images[0].error, Catch::StartsWith("attempts_exhausted"));
  CHECK(ended.images[1].status == ImageStatus::done);  // the other image still runs
  CHECK(ended.status == JobStatus::failed);
  CHECK(h.backend.calls().size() == 1);  // the poison image never ran again
}

TEST_CASE("an image cut short by a drain keeps its attempts", "[service]") {
  Harness h;
  h.start("cpu");
  const auto job = h.service->submit(request({"BLOCK"}, 1, 4));
  REQUIRE(h.backend.wait_blocked(1));
  std::thread drainer([&] { h.service->drain(0ms); });
  while (!h.service->stopping_now()) std::this_thread::sleep_for(1ms);
  h.backend.release();
  drainer.join();
  CHECK(h.store->load(job.id)->attempts[0] == 0);  // so graceful restarts never exhaust it
  h.restart("cpu");
  CHECK(h.wait_finished(job.id).status == JobStatus::done);
}
