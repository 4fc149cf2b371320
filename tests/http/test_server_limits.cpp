// Real sockets: connection slots and per-client limits (http/admission.h, http/client_limits.h;
// http/README.md "Connections"). Waits are generous polls and socket timeouts, never measured
// durations.
#include <catch2/catch.hpp>
#include <memory>
#include <thread>

#include "check_error.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::testing;
using namespace std::chrono_literals;

namespace {

bool eventually(const std::function<bool()>& cond) {
  for (int i = 0; i < 3000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// An event stream of `id`, open once its first event arrived: a busy connection (never evicted).
std::unique_ptr<RawConnection> open_stream(ServerFixture& f, const std::string& id) {
  auto raw = std::make_unique<RawConnection>(f.port, 60);
  raw->send("GET /jobs/" + id + "/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  raw->read_until("event: queued");
  return raw;
}

// A raw HTTP answer (read to the close) as an HttpReply: status, lower-case headers, body.
HttpReply parse_raw(const std::string& raw) {
  HttpReply r;
  const auto head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos) return r;
  r.status = static_cast<unsigned>(std::stoi(raw.substr(9, 3)));
  std::size_t pos = raw.find("\r\n") + 2;
  while (pos < head_end) {
    const auto end = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, end - pos);
    const auto colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    pos = end + 2;
  }
  r.body = raw.substr(head_end + 4);
  return r;
}

HttpReply raw_get(std::uint16_t port, const std::string& target) {
  RawConnection raw(port, 60);
  raw.send("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  return parse_raw(raw.read_to_close());
}

long metric(ServerFixture& f, const std::string& name) {
  const std::string text = f.get("/metrics").body;
  const auto at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stol(text.substr(at + name.size() + 2));
}

}  // namespace

TEST_CASE("at the cap, idle connections give way to a new client and to /healthz",
          "[http][limits]") {
  HttpOptions o;
  o.max_connections = 3;
  o.header_timeout = 120s;  // only eviction can free the slots within the test
  o.busy_idle_timeout = 120s;
  ServerFixture f(o);
  // Three sockets that never send a byte hold every slot (accepted in connect order).
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<RawConnection>(f.port, 60));
  // New clients that stay connected (each idle from its answer on, so behind the sockets).
  HttpConnection a(f.port);
  CHECK(a.request("GET", "/jobs").status == 200);
  HttpConnection b(f.port);
  CHECK(b.request("GET", "/healthz").status == 200);
  // The longest idle went first: the first two sockets were closed without an answer.
  CHECK(idle[0]->read_to_close().empty());
  CHECK(idle[1]->read_to_close().empty());
  CHECK(a.request("GET", "/readyz").status == 200);  // a was not idle the longest: kept
  CHECK(metric(f, "diffusiond_http_connections_evicted_total") >= 2);
}

TEST_CASE("a client sending a request now and then cannot keep its slot at the cap",
          "[http][limits]") {
  HttpOptions o;
  o.max_connections = 1;
  o.header_timeout = 120s;
  o.busy_idle_timeout = 120s;
  ServerFixture f(o);
  HttpConnection drip(f.port);
  for (int i = 0; i < 3; ++i) {  // keeps its connection alive with a request every while
    CHECK(drip.request("GET", "/healthz").status == 200);
    std::this_thread::sleep_for(200ms);
  }
  // Between two of its requests a new client arrives: it gets the slot, the drip loses its.
  CHECK(f.get("/jobs").status == 200);
  CHECK_THROWS(drip.request("GET", "/healthz"));
}

TEST_CASE("every slot busy: health probes are answered, other requests get 503", "[http][limits]") {
  HttpOptions o;
  o.max_connections = 2;
  ServerFixture f(o);
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  auto a = open_stream(f, id);
  auto b = open_stream(f, id);
  REQUIRE(f.service.wait_for_subscribers(id, 2));
  CHECK(f.get("/healthz").status == 200);
  CHECK(f.get("/readyz").status == 200);
  CHECK(http_request(f.port, "HEAD", "/healthz").status == 200);
  const HttpReply r = f.get("/jobs");
  check_error(r, 503, "too_many_connections");
  CHECK(r.header("retry-after") == "1");
  // The streams are untouched and go on.
  f.service.run_all(id);
  CHECK(a->read_to_close().find("event: done") != std::string::npos);
  CHECK(b->read_to_close().find("event: done") != std::string::npos);
  CHECK(eventually([&] { return f.get("/jobs").status == 200; }));
}

TEST_CASE("beyond the cap and its 64 reserve slots a connection still gets a 503 JSON answer",
          "[http][limits]") {
  HttpOptions o;
  o.max_connections = 1;
  o.busy_idle_timeout = 120s;  // the reserve stays taken during the test
  o.header_timeout = 120s;
  ServerFixture f(o);
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  auto stream = open_stream(f, id);  // the one ordinary slot, busy
  // 64 sockets that send nothing take the reserve (accepted in connect order).
  std::vector<std::unique_ptr<RawConnection>> reserve;
  for (int i = 0; i < 64; ++i) reserve.push_back(std::make_unique<RawConnection>(f.port, 120));
  for (const char* target : {"/jobs", "/healthz"}) {
    INFO(target);
    const HttpReply r = raw_get(f.port, target);
    check_error(r, 503, "too_many_connections");
    CHECK(r.header("retry-after") == "1");
    CHECK(r.header("connection") == "close");
  }
  reserve.clear();  // the reserve frees up: probes are answered again
  CHECK(eventually([&] { return raw_get(f.port, "/healthz").status == 200; }));
}

TEST_CASE("per-client connection cap: 429, and the client's own idle connection makes room",
          "[http][limits]") {
  HttpOptions o;
  o.max_connections_per_client = 2;
  o.limit_loopback = true;  // the test's clients are all 127.0.0.1
  ServerFixture f(o);
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  auto a = open_stream(f, id);
  {
    HttpConnection idle(f.port);
    CHECK(idle.request("GET", "/healthz").status == 200);
    // At its cap with one idle connection: that one is closed for the new one.
    CHECK(f.get("/jobs").status == 200);
    CHECK_THROWS(idle.request("GET", "/healthz"));
  }
  auto b = open_stream(f, id);
  REQUIRE(f.service.wait_for_subscribers(id, 2));
  // Two busy connections: a third is refused at once.
  const HttpReply r = raw_get(f.port, "/jobs");
  check_error(r, 429, "too_many_client_connections");
  CHECK(r.header("retry-after") == "1");
  a.reset();  // one stream ends: room again
  CHECK(eventually([&] { return raw_get(f.port, "/jobs").status == 200; }));
}

TEST_CASE("loopback clients are not limited per client by default", "[http][limits]") {
  HttpOptions o;
  o.max_connections_per_client = 1;
  o.rate_limit = 0.001;
  o.rate_burst = 1;
  ServerFixture f(o);
  HttpConnection a(f.port), b(f.port);
  for (int i = 0; i < 3; ++i) {
    CHECK(a.request("GET", "/jobs").status == 200);
    CHECK(b.request("GET", "/jobs").status == 200);
  }
}

TEST_CASE("rate limit: 429 with Retry-After, health probes exempt", "[http][limits]") {
  HttpOptions o;
  o.rate_limit = 0.001;  // no token comes back during the test
  o.rate_burst = 2;
  o.limit_loopback = true;
  ServerFixture f(o);
  HttpConnection c(f.port);
  CHECK(c.request("GET", "/jobs").status == 200);
  CHECK(c.request("GET", "/model").status == 200);
  const HttpReply r = c.request("GET", "/jobs");
  check_error(r, 429, "rate_limited");
  CHECK(std::stoi(r.header("retry-after")) >= 1);
  CHECK(f.post("/generate", R"({"prompt":"x"})").status == 429);  // per client, not per socket
  CHECK(f.service.submitted().empty());
  for (int i = 0; i < 5; ++i) {
    CHECK(c.request("GET", "/healthz").status == 200);  // the same connection stays usable
    CHECK(c.request("GET", "/readyz").status == 200);
  }
  CHECK(c.request("GET", "/jobs").status == 429);
}

TEST_CASE("rate limit: the client recovers once tokens come back", "[http][limits]") {
  HttpOptions o;
  o.rate_limit = 2;
  o.rate_burst = 1;
  o.limit_loopback = true;
  ServerFixture f(o);
  HttpConnection c(f.port);
  HttpReply limited;
  for (int i = 0; i < 1000 && limited.status != 429; ++i) limited = c.request("GET", "/jobs");
  REQUIRE(limited.status == 429);
  CHECK(limited.header("retry-after") == "1");
  CHECK(eventually([&] {
    std::this_thread::sleep_for(100ms);
    return c.request("GET", "/jobs").status == 200;
  }));
}

TEST_CASE("under pressure an idle connection is closed sooner than the header timeout",
          "[http][limits]") {
  HttpOptions o;
  o.max_connections = 4;
  o.header_timeout = 120s;
  o.busy_idle_timeout = 1s;
  ServerFixture f(o);
  RawConnection first(f.port, 60), second(f.port, 60);
  // The third connection takes 3 of 4 slots: pressure; it gets the short idle timeout. (The
  // read times out after 60 s and fails the test; the header timeout is 120 s.)
  RawConnection third(f.port, 60);
  CHECK(third.read_to_close().empty());
}
