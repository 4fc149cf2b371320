// Black-box: batches across requests (issue 11) on the real daemon. `serve --devices cpu*2
// --max-batch 4 --batch-wait-ms` with 12 concurrent mixed requests (prompts, seeds, guidance,
// with and without a negative prompt, two sizes that cannot share a batch): every image equals
// its `diffusiond generate` twin within 1/255, each image has its own progress, batch_size says
// how many shared its batch, /devices shows a running batch, and one image cancelled in the
// middle of its batch stops while its partners finish unchanged.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "blackbox_util.h"
#include "png_check.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {

constexpr int kSteps = 30;

struct Request {
  std::string prompt;
  std::optional<std::string> negative;
  std::uint64_t seed;
  double guidance;
  int width, height;
};

json body_of(const Request& r) {
  json body = {{"prompt", r.prompt},     {"seed", r.seed},   {"guidance_scale", r.guidance},
               {"steps", kSteps},        {"width", r.width}, {"height", r.height},
               {"scheduler", "dpmpp_2m"}};
  if (r.negative) body["negative_prompt"] = *r.negative;
  return body;
}

// The same image from `diffusiond generate` (one image alone, no daemon).
DecodedImage twin(const Request& r, const std::filesystem::path& dir, int k) {
  const auto out = dir / ("twin-" + std::to_string(k) + ".png");
  std::string command = daemon_binary().string() + " generate --model " + tiny_model().string() +
                        " --prompt '" + r.prompt + "' --seed " + std::to_string(r.seed) +
                        " --guidance " + std::to_string(r.guidance) + " --steps " +
                        std::to_string(kSteps) + " --width " + std::to_string(r.width) +
                        " --height " + std::to_string(r.height) + " --scheduler dpmpp_2m -o " +
                        out.string();
  if (r.negative) command += " --negative-prompt '" + *r.negative + "'";
  command += " > " + (dir / "twin.log").string() + " 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  return decode_png(read_file(out.string()));
}

std::string events_request(const std::string& id) {
  return "GET /jobs/" + id +
         "/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
}

}  // namespace

TEST_CASE("batched daemon: 12 concurrent mixed requests equal their generate twins",
          "[blackbox][batching]") {
  TempDir dir("batching");
  DaemonProcess d(dir.path / "data",
                  {"--devices", "cpu*2", "--threads", "2", "--max-batch", "4", "--batch-wait-ms",
                   "3000"});  // slow submissions under load still meet
  std::vector<Request> requests;
  const char* subjects[] = {"a red cube",   "a blue sphere", "a green cone", "a yellow torus",
                            "a lighthouse", "a castle",      "a fox",        "a teapot",
                            "a bicycle",    "a mountain",    "a river",      "a violin"};
  for (int k = 0; k < 12; ++k) {
    Request r;
    r.prompt = subjects[k];
    if (k % 3 == 1) r.negative = "blurry, low quality";
    if (k % 3 == 2) r.negative = "";
    r.seed = 100 + static_cast<std::uint64_t>(k) * 7;
    r.guidance = k % 4 == 3 ? 1.0 : 4.0 + 0.5 * k;  // some without CFG: another batch key
    r.width = 64;
    r.height = k % 5 == 4 ? 96 : 64;  // another size: never in a 64x64 batch
    requests.push_back(r);
  }

  std::vector<std::string> ids(requests.size());
  std::vector<std::thread> clients;
  for (std::size_t k = 0; k < requests.size(); ++k)
    clients.emplace_back([&, k] { ids[k] = submit(d.port(), body_of(requests[k]).dump()); });
  for (auto& t : clients) t.join();

  // The victim: an image of the first running batch of two or more that /devices shows (which
  // images share a batch depends on the order the concurrent submissions arrived in; a request
  // chosen beforehand may be a batch's leftover and run alone), cancelled once it made a step.
  int victim = -1;
  {
    std::string victim_id;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (victim_id.empty() && std::chrono::steady_clock::now() < deadline) {
      const json devices = get_json(d.port(), "/devices");
      for (const auto& device : devices["devices"])
        if (victim_id.empty() && device["current_batch"].size() >= 2)
          victim_id = device["current_batch"][0]["job_id"].get<std::string>();
      if (victim_id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE_FALSE(victim_id.empty());
    for (std::size_t k = 0; k < ids.size(); ++k)
      if (ids[k] == victim_id) victim = static_cast<int>(k);
    REQUIRE(victim >= 0);
    RawConnection c(d.port(), 120);
    c.send(events_request(victim_id));
    c.read_until("event: progress");
    const json devices = get_json(d.port(), "/devices");
    bool seen = false;
    for (const auto& device : devices["devices"])
      for (const auto& image : device["current_batch"])
        if (image["job_id"] == victim_id) {
          seen = true;
          CHECK(device["batch_size"] == device["current_batch"].size());
          CHECK(device["batch_size"].get<int>() >= 2);
        }
    CHECK(seen);
    HttpReply r = http_request(d.port(), "DELETE", "/jobs/" + victim_id);
    INFO(r.body);
    REQUIRE(r.status == 200);
  }

  int batched = 0;
  for (std::size_t k = 0; k < requests.size(); ++k) {
    INFO("request " << k << ": " << body_of(requests[k]).dump());
    const json job = wait_finished(d.port(), ids[k]);
    const json& image = job["images"][0];
    if (static_cast<int>(k) == victim) {
      CHECK(job["status"] == "cancelled");
      CHECK(image["step"].get<int>() < kSteps);
      CHECK(image["url"].is_null());
      continue;
    }
    REQUIRE(job["status"] == "done");
    CHECK(image["step"] == kSteps);
    REQUIRE(image["batch_size"].is_number());
    const int size = image["batch_size"];
    CHECK(size >= 1);
    CHECK(size <= 4);
    if (size > 1) ++batched;
    HttpReply png = http_request(d.port(), "GET", image["url"].get<std::string>());
    REQUIRE(png.status == 200);
    const DecodedImage served = decode_png(png.body);
    CHECK(served.width == requests[k].width);
    CHECK(served.height == requests[k].height);
    CHECK(max_abs_diff(served, twin(requests[k], dir.path, static_cast<int>(k))) <= 1);
  }
  CHECK(batched >= 4);  // batch-wait-ms gathers the concurrent requests into batches

  // Progress stays per image: a batched job's events count its own steps 1..N.
  const std::string sse_id = submit(d.port(), body_of(requests[1]).dump());
  RawConnection c(d.port(), 120);
  c.send(events_request(sse_id));
  const std::string raw = c.read_to_close();
  int expected = 1;
  for (const auto& e : parse_event_stream(raw.substr(raw.find("\r\n\r\n") + 4)))
    if (e.event == "progress") CHECK(json::parse(e.data)["step"] == expected++);
  CHECK(expected == kSteps + 1);
}
