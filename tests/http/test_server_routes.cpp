// Real HTTP against HttpServer + FakeImageService: routes, status codes, jobs, images, limits.
#include <catch2/catch.hpp>
#include <future>

#include "check_error.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::testing;
using nlohmann::json;

namespace {}  // namespace

TEST_CASE("health, readiness, metrics, devices, model, schedulers", "[http][server]") {
  ServerFixture f;
  auto h = f.get("/healthz");
  CHECK(h.status == 200);
  CHECK(h.json()["status"] == "ok");

  f.service.set_ready(false);
  check_error(f.get("/readyz"), 503, "not_ready");
  f.service.set_ready(true);
  CHECK(f.get("/readyz").status == 200);

  auto m = f.get("/metrics");
  CHECK(m.status == 200);
  CHECK(m.header("content-type").rfind("text/plain; version=0.0.4", 0) == 0);
  CHECK(m.body.find("\ndiffusiond_queue_depth 0\n") != std::string::npos);  // the core's
  CHECK(m.body.find("diffusiond_http_responses_total{code=\"2xx\"}") != std::string::npos);

  auto d = f.get("/devices").json();
  REQUIRE(d["devices"].size() == 2);
  CHECK(d["devices"][1]["name"] == "cpu:1");
  CHECK(d["model"]["is_test_model"] == true);
  CHECK(d["model"]["notice"] == "fake model for HTTP tests");

  auto model = f.get("/model").json();
  CHECK(model["name"] == "fake-model");
  CHECK(model["defaults"]["steps"] == 3);

  auto s = f.get("/schedulers").json();
  CHECK(s["default"] == "pndm");
  REQUIRE(s["schedulers"].size() == 3);
  CHECK(s["schedulers"][1]["name"] == "euler_a");
  CHECK(s["schedulers"][1]["aliases"][0] == "Euler a");
}

TEST_CASE("the web UI is served at /", "[http][server]") {
  ServerFixture f;
  auto r = f.get("/");
  CHECK(r.status == 200);
  CHECK(r.header("content-type").rfind("text/html", 0) == 0);
  CHECK(r.body.find("<") != std::string::npos);
  CHECK(f.get("/index.html").body == r.body);
}

TEST_CASE("unknown routes 404, wrong methods 405 with Allow", "[http][server]") {
  ServerFixture f;
  check_error(f.get("/nope"), 404, "not_found");
  check_error(f.get("/jobs/abc/nothing"), 404, "not_found");
  check_error(f.get("/jobs/abc/images/x.png"), 404, "not_found");
  check_error(f.get("/jobs/bad%20id"), 404, "not_found");

  auto r = f.get("/generate");
  check_error(r, 405, "method_not_allowed");
  CHECK(r.header("allow") == "POST");
  r = f.post("/jobs", "{}");
  check_error(r, 405, "method_not_allowed");
  CHECK(r.header("allow") == "GET, HEAD");
  r = http_request(f.port, "PUT", "/jobs/abc", "x");
  check_error(r, 405, "method_not_allowed");
  CHECK(r.header("allow") == "GET, HEAD, DELETE");
  r = http_request(f.port, "DELETE", "/healthz");
  CHECK(r.status == 405);
}

TEST_CASE("HEAD answers headers only", "[http][server]") {
  ServerFixture f;
  auto r = http_request(f.port, "HEAD", "/healthz");
  CHECK(r.status == 200);
  CHECK(r.body.empty());
  CHECK(r.header("content-length") == std::to_string(f.get("/healthz").body.size()));
}

TEST_CASE("POST /generate: 202 + job JSON, request normalised", "[http][server]") {
  ServerFixture f;
  auto r = f.post("/generate",
                  R"({"prompts":["a dog","a cat"],"n":2,"seed":100,"scheduler":"Euler a"})");
  INFO(r.body);
  REQUIRE(r.status == 202);
  json j = r.json();
  const std::string id = j["id"];
  CHECK(r.header("location") == "/jobs/" + id);
  CHECK(j["status"] == "queued");
  CHECK(j["links"]["self"] == "/jobs/" + id);
  CHECK(j["links"]["events"] == "/jobs/" + id + "/events");
  REQUIRE(j["images"].size() == 4);
  for (int k = 0; k < 4; ++k) {
    CHECK(j["images"][k]["index"] == k);
    CHECK(j["images"][k]["seed"] == 100 + k);
    CHECK(j["images"][k]["status"] == "queued");
    CHECK(j["images"][k]["url"].is_null());
  }
  CHECK(j["images"][2]["prompt"] == "a cat");
  CHECK(j["request"]["scheduler"] == "euler_a");
  CHECK(j["request"]["width"] == 64);  // the model's default

  auto sent = f.service.submitted();
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].scheduler == "euler_a");
  CHECK(sent[0].steps == 3);
  CHECK(sent[0].seed == 100);
}

TEST_CASE("an absent seed gets a random 32-bit one, reported per image", "[http][server]") {
  ServerFixture f;
  json a = f.post("/generate", R"({"prompt":"x","n":2})").json();
  json b = f.post("/generate", R"({"prompt":"x"})").json();
  const std::uint64_t sa = a["request"]["seed"], sb = b["request"]["seed"];
  CHECK(sa <= 0xFFFFFFFFull);
  CHECK(a["images"][1]["seed"] == sa + 1);
  // Two random 32-bit seeds collide with probability 2^-32.
  CHECK(sa != sb);
}

TEST_CASE("invalid requests answer 400 JSON naming the field, the server keeps serving",
          "[http][server]") {
  ServerFixture f;
  check_error(f.post("/generate", "{not json"), 400, "invalid_json");
  check_error(f.post("/generate", ""), 400, "invalid_json");
  auto r = f.post("/generate", R"({"prompt":"x","width":100})");
  check_error(r, 400, "invalid_field");
  CHECK(r.json()["error"]["message"].get<std::string>().find("width") != std::string::npos);
  CHECK(r.json()["error"]["field"] == "width");
  check_error(f.post("/generate", R"({"prompt":"x","steps":0})"), 400, "invalid_field");
  check_error(f.post("/generate", R"({"prompt":"x","n":99})"), 400, "invalid_field");
  check_error(f.post("/generate", R"({"prompt":"x","steps":"ten"})"), 400, "invalid_field");
  check_error(f.post("/generate", R"({"prompt":"x","scheduler":"nope"})"), 400,
              "unknown_scheduler");
  check_error(f.post("/generate", R"({"prompt":"x","sampler_name":"Euler"})"), 400,
              "unknown_field");
  CHECK(f.service.submitted().empty());
  CHECK(f.post("/generate", R"({"prompt":"x"})").status == 202);
}

TEST_CASE("bodies over the limit answer 413", "[http][server]") {
  ServerFixture f;
  const std::string big = R"({"prompt":")" + std::string(1 << 20, 'a') + "\"}";
  check_error(f.post("/generate", big), 413, "body_too_large");
  // Just over 64 KiB, and a chunked body that grows past it.
  check_error(f.post("/generate", std::string(64 * 1024 + 1, ' ')), 413, "body_too_large");
  RawConnection raw(f.port);
  std::string chunked =
      "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 20; ++i) chunked += "1000\r\n" + std::string(0x1000, ' ') + "\r\n";
  chunked += "0\r\n\r\n";
  raw.send(chunked);
  std::string reply = raw.read_to_close();
  CHECK(reply.rfind("HTTP/1.1 413", 0) == 0);
  CHECK(reply.find("body_too_large") != std::string::npos);
  CHECK(f.get("/healthz").status == 200);
}

TEST_CASE("Expect: 100-continue is honoured", "[http][server]") {
  ServerFixture f;
  RawConnection raw(f.port);
  const std::string body = R"({"prompt":"x"})";
  raw.send(
      "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n");
  raw.read_until("\r\n\r\n");
  CHECK(raw.received().rfind("HTTP/1.1 100 Continue", 0) == 0);
  raw.send(body);
  CHECK(raw.read_to_close().find("HTTP/1.1 202 Accepted") != std::string::npos);
}

TEST_CASE("a full queue answers 429 with Retry-After", "[http][server]") {
  ServerFixture f;
  f.service.set_queue_full(7);
  auto r = f.post("/generate", R"({"prompt":"x"})");
  check_error(r, 429, "queue_full");
  CHECK(r.header("retry-after") == "7");
}

TEST_CASE("jobs: get, list with filters, cancel", "[http][server]") {
  ServerFixture f;
  check_error(f.get("/jobs/doesnotexist"), 404, "job_not_found");
  const std::string a = f.post("/generate", R"({"prompt":"a","n":2})").json()["id"];
  const std::string b = f.post("/generate", R"({"prompt":"b"})").json()["id"];
  f.service.run_image(a, 0, "cpu:0");
  f.service.run_image(a, 1, "cpu:1");

  json ja = f.get("/jobs/" + a).json();
  CHECK(ja["status"] == "done");
  CHECK(ja["images"][0]["device"] == "cpu:0");
  CHECK(ja["images"][1]["device"] == "cpu:1");
  CHECK(ja["devices"] == json::array({"cpu:0", "cpu:1"}));
  CHECK(ja["images"][1]["url"] == "/jobs/" + a + "/images/1.png");
  CHECK(ja["progress"]["step"] == 6);
  CHECK(ja["progress"]["images_done"] == 2);

  json all = f.get("/jobs").json();
  REQUIRE(all["jobs"].size() == 2);
  CHECK(all["jobs"][0]["id"] == b);  // newest first
  json done = f.get("/jobs?status=done&limit=10").json();
  REQUIRE(done["jobs"].size() == 1);
  CHECK(done["jobs"][0]["id"] == a);
  CHECK(f.get("/jobs?limit=1").json()["jobs"].size() == 1);
  check_error(f.get("/jobs?status=sleeping"), 400, "invalid_field");
  check_error(f.get("/jobs?limit=0"), 400, "invalid_field");
  check_error(f.get("/jobs?limit=abc"), 400, "invalid_field");
  check_error(f.get("/jobs?limit=100000"), 400, "invalid_field");

  auto c = http_request(f.port, "DELETE", "/jobs/" + b);
  CHECK(c.status == 200);
  CHECK(c.json()["status"] == "cancelled");
  check_error(http_request(f.port, "DELETE", "/jobs/" + b), 409, "job_finished");
  check_error(http_request(f.port, "DELETE", "/jobs/" + a), 409, "job_finished");
  check_error(http_request(f.port, "DELETE", "/jobs/nosuchjob"), 404, "job_not_found");
}

TEST_CASE("images: PNG bytes, immutable caching, ETag and 304", "[http][server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"a","n":2})").json()["id"];
  check_error(f.get("/jobs/" + id + "/images/0.png"), 404, "image_not_ready");
  f.service.run_all(id);
  auto r = f.get("/jobs/" + id + "/images/1.png");
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "image/png");
  CHECK(r.body == FakeImageService::png_bytes_for(id, 1));
  CHECK(r.header("cache-control") == "public, max-age=31536000, immutable");
  const std::string etag = r.header("etag");
  REQUIRE(etag.size() > 2);
  CHECK(etag.front() == '"');
  CHECK(etag != f.get("/jobs/" + id + "/images/0.png").header("etag"));

  auto again = f.get("/jobs/" + id + "/images/1.png", {{"If-None-Match", etag}});
  CHECK(again.status == 304);
  CHECK(again.body.empty());
  CHECK(again.header("etag") == etag);
  CHECK(f.get("/jobs/" + id + "/images/1.png", {{"If-None-Match", "\"other\""}}).status == 200);
  check_error(f.get("/jobs/" + id + "/images/2.png"), 404, "image_not_found");
  check_error(f.get("/jobs/nosuchjob/images/0.png"), 404, "job_not_found");
}

TEST_CASE("keep-alive: several requests on one connection", "[http][server]") {
  ServerFixture f;
  HttpConnection c(f.port);
  for (int i = 0; i < 5; ++i) {
    auto r = c.request("POST", "/generate", R"({"prompt":"x"})");
    REQUIRE(r.status == 202);
    CHECK(c.request("GET", "/jobs/" + r.json()["id"].get<std::string>()).status == 200);
  }
  // An error answer does not end the connection either.
  CHECK(c.request("GET", "/nope").status == 404);
  CHECK(c.request("GET", "/healthz").status == 200);
  CHECK(f.service.submitted().size() == 5);
}

TEST_CASE("?wait=1 answers when the job is done without holding an I/O thread", "[http][server]") {
  HttpOptions o;
  o.io_threads = 1;  // if waiting blocked the thread, nothing else would be answered
  ServerFixture f(o);
  auto waiting = std::async(std::launch::async,
                            [&] { return f.post("/generate?wait=1", R"({"prompt":"x","n":2})"); });
  // Wait until the server subscribed to the new job.
  std::string id;
  for (int i = 0; i < 1000 && id.empty(); ++i) {
    id = f.service.last_job_id();
    if (id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE_FALSE(id.empty());
  REQUIRE(f.service.wait_for_subscribers(id, 1));
  CHECK(f.get("/healthz").status == 200);
  CHECK(f.get("/jobs/" + id).json()["status"] == "queued");
  f.service.run_image(id, 0, "cpu:0");
  CHECK(waiting.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  f.service.run_image(id, 1, "cpu:1");
  HttpReply r = waiting.get();
  REQUIRE(r.status == 200);
  CHECK(r.json()["status"] == "done");
  CHECK(r.json()["images"][1]["url"] == "/jobs/" + id + "/images/1.png");
  CHECK(f.service.subscribers(id) == 0);  // released after answering
}

TEST_CASE("Accept: image/png with one image answers the PNG itself", "[http][server]") {
  HttpOptions o;
  o.io_threads = 1;
  ServerFixture f(o);
  auto waiting = std::async(std::launch::async, [&] {
    return f.post("/generate", R"({"prompt":"a dog"})", {{"Accept", "image/png"}});
  });
  std::string id;
  for (int i = 0; i < 1000 && id.empty(); ++i) {
    id = f.service.last_job_id();
    if (id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(f.service.wait_for_subscribers(id, 1));
  f.service.run_all(id);
  HttpReply r = waiting.get();
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "image/png");
  CHECK(r.body == FakeImageService::png_bytes_for(id, 0));

  check_error(f.post("/generate", R"({"prompt":"x","n":2})", {{"Accept", "image/png"}}), 406,
              "not_acceptable");

  // A cancelled job answers 409 instead of an image.
  auto cancelled = std::async(std::launch::async, [&] {
    return f.post("/generate", R"({"prompt":"b"})", {{"Accept", "image/png"}});
  });
  std::string id2 = id;
  for (int i = 0; i < 1000 && id2 == id; ++i) {
    id2 = f.service.last_job_id();
    if (id2 == id) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(f.service.wait_for_subscribers(id2, 1));
  CHECK(f.service.cancel(id2) == CancelResult::cancelled);
  check_error(cancelled.get(), 409, "job_cancelled");
}

TEST_CASE("a failed image shows in the job JSON", "[http][server]") {
  ServerFixture f;
  // The fake finishes jobs only when told; a failed image makes a failed job.
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  f.service.fail_image(id, 0, "device fell over");
  json j = f.get("/jobs/" + id).json();
  CHECK(j["status"] == "failed");
  CHECK(j["error"] == "device fell over");
  CHECK(j["images"][0]["error"] == "device fell over");
}
