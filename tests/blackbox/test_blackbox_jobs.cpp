// Black-box: the real `diffusiond serve` on the tiny model, over real HTTP. Devices, SSE,
// cancellation, restart survival.
#include <catch2/catch.hpp>
#include <set>

#include "blackbox_util.h"
#include "pipeline/media/posix_fs.h"
#include "png_check.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {

const char* kFourPrompts =
    R"({"prompts":["a red cube","a blue sphere","a green cone","a yellow torus"],
        "steps":4,"width":64,"height":64,"seed":1234,"scheduler":"pndm"})";

std::vector<DecodedImage> fetch_images(std::uint16_t port, const json& job) {
  std::vector<DecodedImage> out;
  for (const auto& img : job["images"]) {
    HttpReply r = http_request(port, "GET", img["url"].get<std::string>());
    REQUIRE(r.status == 200);
    out.push_back(decode_png(r.body));
  }
  return out;
}

std::string events_request(const std::string& id) {
  return "GET /jobs/" + id +
         "/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
}

std::vector<SseMessage> read_events(RawConnection& c) {
  const std::string raw = c.read_to_close();
  return parse_event_stream(raw.substr(raw.find("\r\n\r\n") + 4));
}

}  // namespace

TEST_CASE("a 4-prompt job runs on both devices, round-robin, with the same images as one device",
          "[blackbox]") {
  TempDir two("cpu2"), one("cpu1");
  json job2, job1;
  std::vector<DecodedImage> images2, images1;
  {
    DaemonProcess d(two.path, {"--devices", "cpu*2"});
    HttpReply r = http_request(d.port(), "POST", "/generate?wait=1", kFourPrompts);
    INFO(r.body);
    REQUIRE(r.status == 200);
    job2 = r.json();
    REQUIRE(job2["status"] == "done");
    images2 = fetch_images(d.port(), job2);
    // Round-robin: 4 prompts over 2 devices alternate cpu:0 / cpu:1.
    std::set<std::string> used;
    for (int k = 0; k < 4; ++k) {
      used.insert(job2["images"][k]["device"].get<std::string>());
      CHECK(job2["images"][k]["seed"] == 1234 + k);
      if (k > 0) CHECK(job2["images"][k]["device"] != job2["images"][k - 1]["device"]);
    }
    CHECK(used == std::set<std::string>{"cpu:0", "cpu:1"});
    CHECK(job2["devices"].size() == 2);
  }
  {
    DaemonProcess d(one.path, {"--devices", "cpu"});
    HttpReply r = http_request(d.port(), "POST", "/generate?wait=1", kFourPrompts);
    REQUIRE(r.status == 200);
    job1 = r.json();
    REQUIRE(job1["status"] == "done");
    images1 = fetch_images(d.port(), job1);
    for (const auto& img : job1["images"]) CHECK(img["device"] == "cpu");
  }
  REQUIRE(images1.size() == 4);
  REQUIRE(images2.size() == 4);
  for (int k = 0; k < 4; ++k) {
    INFO("image " << k);
    CHECK(images1[k].width == 64);
    CHECK(images1[k].height == 64);
    CHECK(max_abs_diff(images1[k], images2[k]) <= 1);
  }
  // Different prompts/seeds make different images (the comparison above is not vacuous).
  CHECK(max_abs_diff(images1[0], images1[1]) > 1);
}

TEST_CASE("SSE: queued, started, progress for every step, image, done, in order", "[blackbox]") {
  TempDir dir("sse");
  DaemonProcess d(dir.path, {"--devices", "cpu*2"});
  // DDIM evaluates the model once per step (PNDM adds one), so there are exactly 5 progress
  // events per image.
  const std::string id = submit(
      d.port(),
      R"({"prompt":"a lighthouse","n":2,"steps":5,"width":64,"height":64,"scheduler":"ddim"})");
  RawConnection c(d.port(), 120);
  c.send(events_request(id));
  const auto events = read_events(c);
  REQUIRE(events.size() >= 2);
  CHECK(events.front().event == "queued");
  CHECK(events.back().event == "done");
  // Per image: started, progress 1..5, image; each image's events in that order.
  for (int k = 0; k < 2; ++k) {
    INFO("image " << k);
    std::vector<std::string> seq;
    int expected_step = 1;
    for (const auto& e : events) {
      json data = json::parse(e.data);
      CHECK(data["job"] == id);
      if (!data.contains("image") || data["image"] != k) continue;
      seq.push_back(e.event);
      if (e.event == "started") CHECK(data["device"].get<std::string>().rfind("cpu:", 0) == 0);
      if (e.event == "progress") {
        CHECK(data["step"] == expected_step++);
        CHECK(data["steps"] == 5);
      }
      if (e.event == "image") {
        CHECK(data["url"] == "/jobs/" + id + "/images/" + std::to_string(k) + ".png");
      }
    }
    CHECK(seq == std::vector<std::string>{"started", "progress", "progress", "progress", "progress",
                                          "progress", "image"});
  }
  CHECK(events.size() == 1 + 2 * 7 + 1);
}

TEST_CASE("cancel: a queued job never runs, a running one stops within a step", "[blackbox]") {
  TempDir dir("cancel");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  // One device: the long job runs, the second waits behind it.
  const std::string running =
      submit(d.port(), R"({"prompt":"long","steps":150,"width":128,"height":128})");
  const std::string queued =
      submit(d.port(), R"({"prompt":"waits","steps":2,"width":64,"height":64})");
  RawConnection c(d.port(), 120);
  c.send(events_request(running));
  c.read_until("event: progress");  // the long job is now running

  HttpReply q = http_request(d.port(), "DELETE", "/jobs/" + queued);
  REQUIRE(q.status == 200);
  CHECK(q.json()["status"] == "cancelled");

  HttpReply r = http_request(d.port(), "DELETE", "/jobs/" + running);
  INFO(r.body);
  REQUIRE(r.status == 200);
  const int step_at_cancel = r.json()["images"][0]["step"];
  const auto events = read_events(c);
  REQUIRE_FALSE(events.empty());
  CHECK(events.back().event == "cancelled");

  json rj = wait_finished(d.port(), running);
  CHECK(rj["status"] == "cancelled");
  const int final_step = rj["images"][0]["step"];
  CHECK(final_step <= step_at_cancel + 1);  // at most the step in flight completes
  CHECK(final_step < 150);
  CHECK(rj["images"][0]["url"].is_null());

  // The daemon goes on: a new job completes; the cancelled queued job never started.
  const std::string after =
      submit(d.port(), R"({"prompt":"after","steps":2,"width":64,"height":64})");
  CHECK(wait_finished(d.port(), after)["status"] == "done");
  json qj = get_json(d.port(), "/jobs/" + queued);
  CHECK(qj["status"] == "cancelled");
  CHECK(qj["images"][0]["device"].is_null());
  CHECK(qj["images"][0]["started_ms"].is_null());
  CHECK(qj["images"][0]["step"] == 0);
  CHECK(http_request(d.port(), "GET", "/jobs/" + queued + "/images/0.png").status == 404);
  CHECK(http_request(d.port(), "DELETE", "/jobs/" + after).status == 409);
}

TEST_CASE("restart: after kill -9 every queued and running job completes, no PNG truncated",
          "[blackbox]") {
  TempDir dir("restart");
  std::vector<std::string> ids;
  {
    DaemonProcess d(dir.path, {"--devices", "cpu"});
    for (int i = 0; i < 3; ++i) {
      ids.push_back(submit(d.port(), R"({"prompt":"survivor )" + std::to_string(i) +
                                         R"(","n":2,"steps":20,"width":64,"height":64})"));
    }
    RawConnection c(d.port(), 120);
    c.send(events_request(ids[0]));
    c.read_until("event: progress");  // job 0 runs; jobs 1 and 2 are queued
    d.kill_hard();
  }
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  for (const auto& id : ids) {
    INFO("job " << id);
    json j = wait_finished(d.port(), id);
    CHECK(j["status"] == "done");
    for (const auto& img : j["images"]) {
      REQUIRE(img["url"].is_string());
      HttpReply r = http_request(d.port(), "GET", img["url"].get<std::string>());
      REQUIRE(r.status == 200);
      DecodedImage png = decode_png(r.body);
      CHECK(png.width == 64);
    }
  }
  // Every PNG file the daemon left in its data dir decodes completely.
  int files = 0;
  std::error_code ec;
  for (const auto& file : diffusiond::list_files_recursive(dir.path, ec)) {
    if (file.extension() != ".png") continue;
    ++files;
    INFO(file);
    CHECK_NOTHROW(decode_png(read_file(file.string())));
  }
  CHECK_FALSE(ec);
  CHECK(files >= 6);
}
