// Hostile inputs at the HTTP edge, over real HTTP against HttpServer: web pages (DNS rebinding,
// cross-site requests, text/plain bodies), numbers beyond a double, request smuggling through an
// unsupported Transfer-Encoding, bad chunk framing, keyed images in shared caches, log flooding.
#include <spdlog/sinks/ostream_sink.h>
#include <catch2/catch.hpp>
#include <sstream>

#include "check_error.h"
#include "http/browser_guard.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::http_api;
using namespace diffusiond::testing;
using nlohmann::json;

namespace {

const std::string kJob = R"({"prompt":"x"})";

}  // namespace

TEST_CASE("Host: loopback names, IP literals, the listen address and --allowed-hosts",
          "[http][guard]") {
  HttpOptions options;
  options.host = "127.0.0.1";
  for (const char* ok : {"127.0.0.1", "127.0.0.1:7860", "localhost", "LOCALHOST:80", "[::1]:7860",
                         "app.localhost:1234", "192.168.1.20:7860", "[fe80::1]", ""}) {
    INFO(ok);
    CHECK(host_allowed(ok, options));
  }
  for (const char* bad : {"evil.example", "evil.example:7860", "localhost.evil.example",
                          "127.0.0.1.nip.io", "workstation.local"}) {
    INFO(bad);
    CHECK_FALSE(host_allowed(bad, options));
  }
  options.allowed_hosts = {"Workstation.Local"};
  CHECK(host_allowed("workstation.local:7860", options));
  options.host = "gpu-box";  // listening on a name
  CHECK(host_allowed("gpu-box:7860", options));
  options.allowed_hosts = {"*"};
  CHECK(host_allowed("anything.example", options));
}

TEST_CASE("a page rebound to 127.0.0.1 (foreign Host) reads nothing", "[http][guard]") {
  ServerFixture f;
  const std::string id = f.post("/generate", kJob).json()["id"];
  const std::vector<std::string> targets = {"/jobs", "/jobs/" + id, "/healthz", "/", "/metrics"};
  for (const auto& target : targets) {
    INFO(target);
    check_error(f.get(target, {{"Host", "evil.example:" + std::to_string(f.port)}}), 403,
                "host_not_allowed");
  }
  CHECK(f.get("/jobs", {{"Host", "localhost:" + std::to_string(f.port)}}).status == 200);
}

TEST_CASE("a cross-site page cannot start, cancel or submit work", "[http][guard]") {
  ServerFixture f;
  const std::string host = "127.0.0.1:" + std::to_string(f.port);  // as a browser sends it
  const std::string own = "http://" + host;
  // The "simple requests" a page can send without a CORS preflight.
  check_error(f.post("/generate", kJob,
                     {{"Origin", "http://evil.example"}, {"Content-Type", "text/plain"}}),
              403, "origin_not_allowed");
  check_error(f.post("/generate", kJob, {{"Origin", "null"}}), 403, "origin_not_allowed");
  const std::string id = f.post("/generate", kJob).json()["id"];  // curl: no Origin
  check_error(
      http_request(f.port, "DELETE", "/jobs/" + id, "", {{"Origin", "http://evil.example"}}), 403,
      "origin_not_allowed");
  CHECK(f.service.submitted().size() == 1);
  // The UI itself (same origin) with JSON is fine; a browser's text/plain body is not.
  CHECK(f.post("/generate", kJob,
               {{"Host", host}, {"Origin", own}, {"Content-Type", "application/json"}})
            .status == 202);
  check_error(
      f.post("/generate", kJob, {{"Host", host}, {"Origin", own}, {"Content-Type", "text/plain"}}),
      415, "unsupported_media_type");
  check_error(f.post("/generate", kJob,
                     {{"Sec-Fetch-Mode", "no-cors"},
                      {"Content-Type", "application/x-www-form-urlencoded"}}),
              415, "unsupported_media_type");
  // curl -d sends application/x-www-form-urlencoded and no Origin: still accepted.
  CHECK(f.post("/generate", kJob, {{"Content-Type", "application/x-www-form-urlencoded"}}).status ==
        202);
  // Reading with a foreign Origin changes nothing and is answered (the browser withholds it).
  CHECK(f.get("/jobs", {{"Origin", "http://evil.example"}}).status == 200);
  CHECK(f.service.submitted().size() == 3);
}

TEST_CASE("a named front end (allowed_origins) may post", "[http][guard]") {
  HttpOptions options;
  options.allowed_origins = {"https://studio.example"};
  ServerFixture f(options);
  CHECK(f.post("/generate", kJob,
               {{"Origin", "https://studio.example"}, {"Content-Type", "application/json"}})
            .status == 202);
  check_error(f.post("/generate", kJob,
                     {{"Origin", "https://other.example"}, {"Content-Type", "application/json"}}),
              403, "origin_not_allowed");
}

TEST_CASE("numbers beyond a double are a 400, and the message stays short", "[http][guard]") {
  ServerFixture f;
  for (const std::string number : {std::string("1e400"), std::string(3000, '9') + ".5"}) {
    HttpReply r = f.post("/generate", R"({"prompt":"x","steps":)" + number + "}");
    check_error(r, 400, "invalid_json");
    CHECK(r.json()["error"]["message"].get<std::string>().size() < 400);
  }
  CHECK(f.get("/healthz").status == 200);
}

TEST_CASE("an unsupported Transfer-Encoding is a 400 and its body is never a second request",
          "[http][guard]") {
  ServerFixture f;
  const std::string smuggled = "GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  for (const std::string te :
       std::vector<std::string>{"gzip", "xchunked", "chunked, identity", "identity"}) {
    INFO(te);
    RawConnection raw(f.port);
    raw.send("POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: " + te + "\r\n\r\n" +
             smuggled);
    const std::string reply = raw.read_to_close();
    CHECK(reply.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(reply.find("HTTP/1.1 200") == std::string::npos);  // no answer to the smuggled GET
  }
  RawConnection both(f.port);
  both.send(
      "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 14\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" +
      smuggled);
  const std::string reply = both.read_to_close();
  CHECK(reply.rfind("HTTP/1.1 400", 0) == 0);
  CHECK(reply.find("HTTP/1.1 200") == std::string::npos);
  CHECK(f.service.submitted().empty());
}

TEST_CASE("bad chunk framing is answered 400, not just closed", "[http][guard]") {
  ServerFixture f;
  for (const std::string chunks :
       {std::string("zz\r\n{}\r\n0\r\n\r\n"), std::string("-5\r\nhello\r\n0\r\n\r\n"),
        std::string("1ffffffffffffffff\r\nx\r\n0\r\n\r\n"), std::string("2\r\n{}0\r\n\r\n")}) {
    INFO(chunks);
    RawConnection raw(f.port);
    raw.send("POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
             chunks);
    const std::string reply = raw.read_to_close();
    CHECK(reply.rfind("HTTP/1.1 400", 0) == 0);
  }
  CHECK(f.service.submitted().empty());
  CHECK(f.get("/healthz").status == 200);
}

TEST_CASE("images under an API key are private to the client's cache", "[http][guard]") {
  HttpOptions options;
  options.api_keys = {"sekrit"};
  ServerFixture keyed(options);
  const Headers auth = {{"Authorization", "Bearer sekrit"}};
  const std::string id = keyed.post("/generate", kJob, auth).json()["id"];
  keyed.service.run_all(id);
  HttpReply r = keyed.get("/jobs/" + id + "/images/0.png", auth);
  REQUIRE(r.status == 200);
  CHECK(r.header("cache-control") == "private, max-age=31536000, immutable");

  ServerFixture open;
  const std::string open_id = open.post("/generate", kJob).json()["id"];
  open.service.run_all(open_id);
  CHECK(open.get("/jobs/" + open_id + "/images/0.png").header("cache-control") ==
        "public, max-age=31536000, immutable");
}

TEST_CASE("a long request path is logged shortened, its query never", "[http][guard]") {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  {
    ServerFixture f;
    spdlog::set_level(spdlog::level::info);
    CHECK(f.get("/" + std::string(10000, 'a') + "?api_key=sekrit").status == 404);
  }
  spdlog::set_default_logger(previous);
  const std::string text = log.str();
  INFO(text.substr(0, 400));
  CHECK(text.find("404") != std::string::npos);
  CHECK(text.size() < 2000);
  CHECK(text.find("sekrit") == std::string::npos);
}

TEST_CASE("job listings are bounded in bytes and paged with a cursor", "[http][guard]") {
  HttpOptions options;
  options.max_list_bytes = 16 * 1024;
  ServerFixture f(options);
  std::vector<std::string> ids;  // newest first
  const std::string big_prompt(1500, 'p');
  for (int i = 0; i < 30; ++i)
    ids.insert(ids.begin(), f.post("/generate", R"({"prompts":[")" + big_prompt + R"(",")" +
                                                    big_prompt + R"("],"n":2})")
                                .json()["id"]);
  std::vector<std::string> seen;
  std::string target = "/jobs?limit=500";
  int pages = 0;
  for (;;) {
    HttpReply r = f.get(target);
    REQUIRE(r.status == 200);
    CHECK(r.body.size() < options.max_list_bytes + 16 * 1024);  // the bound plus one job at most
    const json j = r.json();
    for (const auto& job : j["jobs"]) seen.push_back(job["id"]);
    ++pages;
    if (j["next"].is_null()) break;
    REQUIRE(pages < 40);
    target = "/jobs?limit=500&before=" + j["next"].get<std::string>();
  }
  CHECK(pages > 1);
  CHECK(seen == ids);  // every job once, newest first
  check_error(f.get("/jobs?before=0123456789abcdef"), 400, "invalid_field");
  const json one = f.get("/jobs?limit=1").json();
  CHECK(one["jobs"].size() == 1);
  CHECK(one["next"] == ids[0]);
}
