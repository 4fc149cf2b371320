// Black-box: limits and malformed requests, concurrency, /metrics, PNG metadata, Accept: image/png.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <future>
#include <set>

#include "blackbox_util.h"
#include "png_check.h"
#include "prometheus_text.h"

using namespace diffusiond::testing;
using nlohmann::json;

TEST_CASE("every limit and malformed request answers 4xx JSON and the daemon keeps serving",
          "[blackbox]") {
  TempDir dir("limits");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  struct Case {
    std::string method, target, body;
    unsigned status;
    std::string field;  // must appear in the message when set
  };
  const std::vector<Case> cases = {
      {"POST", "/generate", "{\"prompt\": \"unterminated", 400, ""},
      {"POST", "/generate", "", 400, ""},
      {"POST", "/generate", "[1,2,3]", 400, ""},
      {"POST", "/generate", R"({"prompt":42})", 400, "prompt"},
      {"POST", "/generate", R"({"prompt":"x","steps":"ten"})", 400, "steps"},
      {"POST", "/generate", R"({"prompt":"x","seed":"abc"})", 400, "seed"},
      {"POST", "/generate", R"({"prompt":"x","width":100})", 400, "width"},
      {"POST", "/generate", R"({"prompt":"x","height":100})", 400, "height"},
      {"POST", "/generate", R"({"prompt":"x","steps":0})", 400, "steps"},
      {"POST", "/generate", R"({"prompt":"x","steps":151})", 400, "steps"},
      {"POST", "/generate", R"({"prompt":"x","n":99})", 400, "n"},
      {"POST", "/generate", R"({"prompt":"x","guidance_scale":-1})", 400, "guidance_scale"},
      {"POST", "/generate", R"({"prompt":"x","scheduler":"warp_drive"})", 400, "scheduler"},
      {"POST", "/generate", R"({"prompt":"x","cfg_scale":7})", 400, "cfg_scale"},
      {"POST", "/generate", R"({"prompt":")" + std::string(5000, 'a') + "\"}", 400, "prompt"},
      {"POST", "/generate", R"({"prompt":")" + std::string(1 << 20, 'a') + "\"}", 413, ""},
      {"POST", "/generate", R"({"prompt":"x","width":4096,"height":4096})", 400, "width"},
      {"GET", "/jobs/0123456789abcdef", "", 404, ""},
      {"GET", "/jobs?limit=-1", "", 400, "limit"},
      {"GET", "/no/such/route", "", 404, ""},
      {"PUT", "/generate", "{}", 405, ""},
  };
  for (const Case& c : cases) {
    INFO(c.method << " " << c.target << " " << c.body.substr(0, 80));
    HttpReply r = http_request(d.port(), c.method, c.target, c.body);
    CHECK(r.status == c.status);
    CHECK(r.header("content-type") == "application/json");
    json j = r.json();
    REQUIRE(j.contains("error"));
    CHECK(j["error"]["code"].is_string());
    const std::string message = j["error"]["message"];
    if (!c.field.empty()) CHECK(message.find(c.field) != std::string::npos);
  }
  CHECK(http_request(d.port(), "GET", "/healthz").status == 200);
  const std::string id =
      submit(d.port(), R"({"prompt":"still here","steps":2,"width":64,"height":64})");
  CHECK(wait_finished(d.port(), id)["status"] == "done");
}

TEST_CASE("100 concurrent submissions all complete", "[blackbox]") {
  TempDir dir("concurrent");
  DaemonProcess d(dir.path, {"--devices", "cpu*2"});
  const int kClients = 100;
  std::promise<void> go;
  std::shared_future<void> start = go.get_future().share();
  std::vector<std::future<HttpReply>> replies;
  for (int i = 0; i < kClients; ++i) {
    replies.push_back(std::async(std::launch::async, [&, i] {
      start.wait();
      return http_request(
          d.port(), "POST", "/generate?wait=1",
          R"({"prompt":"crowd )" + std::to_string(i) + R"(","steps":1,"width":64,"height":64})");
    }));
  }
  go.set_value();
  std::set<std::string> ids;
  for (auto& f : replies) {
    HttpReply r = f.get();
    INFO(r.body);
    REQUIRE(r.status == 200);
    json j = r.json();
    CHECK(j["status"] == "done");
    CHECK(j["images"][0]["url"].is_string());
    ids.insert(j["id"].get<std::string>());
  }
  CHECK(ids.size() == kClients);
  json done = get_json(d.port(), "/jobs?status=done&limit=500");
  CHECK(done["jobs"].size() == kClients);
}

TEST_CASE("Accept: image/png answers a valid PNG with metadata, /metrics is Prometheus text",
          "[blackbox]") {
  TempDir dir("png");
  DaemonProcess d(dir.path, {"--devices", "cpu*2"});
  HttpReply r = http_request(
      d.port(), "POST", "/generate",
      R"({"prompt":"a dog","negative_prompt":"blurry","steps":3,"width":64,"height":64,"seed":77})",
      {{"Accept", "image/png"}});
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "image/png");
  DecodedImage img = decode_png(r.body);
  CHECK(img.width == 64);
  CHECK(img.height == 64);

  PngChunks chunks = read_png_chunks(r.body);
  CHECK(chunks.types.front() == "IHDR");
  REQUIRE(chunks.text.count("parameters"));
  const std::string params = chunks.text["parameters"];
  CHECK(params.find("a dog") != std::string::npos);
  CHECK(params.find("Negative prompt: blurry") != std::string::npos);
  CHECK(params.find("Seed: 77") != std::string::npos);
  CHECK(params.find("Steps: 3") != std::string::npos);
  REQUIRE(chunks.text.count("diffusiond"));
  json meta = json::parse(chunks.text["diffusiond"]);
  CHECK(meta.dump().find("a dog") != std::string::npos);

  // The same bytes are served from the job's image URL, cacheable.
  json jobs = get_json(d.port(), "/jobs?limit=1");
  const std::string url = jobs["jobs"][0]["images"][0]["url"];
  HttpReply again = http_request(d.port(), "GET", url);
  CHECK(again.body == r.body);
  CHECK(http_request(d.port(), "GET", url, "", {{"If-None-Match", again.header("etag")}}).status ==
        304);

  HttpReply m = http_request(d.port(), "GET", "/metrics");
  REQUIRE(m.status == 200);
  CHECK(m.header("content-type").rfind("text/plain; version=0.0.4", 0) == 0);
  MetricFamilies metrics;
  REQUIRE_NOTHROW(metrics = parse_prometheus_text(m.body));
  CHECK(metrics.types.count("diffusiond_queue_depth"));
  CHECK(metrics.types.count("diffusiond_http_responses_total"));
  CHECK(metrics.value("diffusiond_http_responses_total", {{"code", "2xx"}}) >= 2);
}

TEST_CASE("without --threads the CPU workers share $OMP_NUM_THREADS threads", "[blackbox]") {
  TempDir dir("threads");
  const char* previous = std::getenv("OMP_NUM_THREADS");
  const std::string saved = previous ? previous : "";
  ::setenv("OMP_NUM_THREADS", "10", 1);
  std::string log;
  {
    DaemonProcess d(dir.path, {"--devices", "cpu*2"});
    log = d.log();
  }
  if (previous)
    ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  else
    ::unsetenv("OMP_NUM_THREADS");
  CHECK_THAT(log, Catch::Contains("5 intra-op thread(s) per CPU worker"));  // 10 shared by 2
}

TEST_CASE("the daemon's connection options: idle sockets give way, the rate limit answers 429",
          "[blackbox]") {
  TempDir dir("conn-limits");
  DaemonProcess d(dir.path, {"--devices", "cpu", "--max-connections", "2", "--limit-loopback",
                             "--rate-limit", "0.001", "--rate-burst", "3"});
  // Two sockets that never send a byte take both slots; new clients still get in.
  RawConnection idle1(d.port(), 60), idle2(d.port(), 60);
  CHECK(http_request(d.port(), "GET", "/jobs").status == 200);
  CHECK(http_request(d.port(), "GET", "/model").status == 200);
  CHECK(http_request(d.port(), "GET", "/devices").status == 200);
  CHECK(idle1.read_to_close().empty());  // the longest idle was closed for them
  // Three requests were the burst; no token comes back during the test.
  const HttpReply r = http_request(d.port(), "GET", "/jobs");
  CHECK(r.status == 429);
  CHECK(r.json()["error"]["code"] == "rate_limited");
  CHECK(std::atoi(r.header("retry-after").c_str()) >= 1);
  CHECK(http_request(d.port(), "GET", "/healthz").status == 200);  // probes are exempt
  CHECK(http_request(d.port(), "GET", "/readyz").status == 200);
}
