// Real HTTP: Server-Sent Events, API keys, timeouts, shutdown. (Connection limits:
// test_server_limits.cpp.)
#include <catch2/catch.hpp>
#include <thread>

#include "http/auth.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::testing;
using nlohmann::json;

namespace {

std::string events_request(const std::string& id, const std::string& extra = "") {
  return "GET /jobs/" + id +
         "/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n" + extra + "\r\n";
}

std::string body_of(const std::string& raw) {
  return raw.substr(raw.find("\r\n\r\n") + 4);
}

std::vector<std::string> names(const std::vector<SseMessage>& ms) {
  std::vector<std::string> out;
  for (const auto& m : ms) out.push_back(m.event);
  return out;
}

bool eventually(const std::function<bool()>& cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TEST_CASE("SSE: queued, started, progress for every step, image, done, in order, then close",
          "[http][sse-server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"x","n":2,"steps":3})").json()["id"];
  RawConnection raw(f.port);
  raw.send(events_request(id));
  raw.read_until("event: queued");
  const std::string head = raw.received().substr(0, raw.received().find("\r\n\r\n"));
  CHECK(head.rfind("HTTP/1.1 200 OK", 0) == 0);
  CHECK(head.find("Content-Type: text/event-stream") != std::string::npos);
  CHECK(head.find("Cache-Control: no-store") != std::string::npos);
  REQUIRE(f.service.wait_for_subscribers(id, 1));

  f.service.run_image(id, 0, "cpu:0");
  f.service.run_image(id, 1, "cpu:1");
  auto events = parse_event_stream(body_of(raw.read_to_close()));
  CHECK(names(events) == std::vector<std::string>{"queued", "started", "progress", "progress",
                                                  "progress", "image", "started", "progress",
                                                  "progress", "progress", "image", "done"});
  json started = json::parse(events[6].data);
  CHECK(started["image"] == 1);
  CHECK(started["device"] == "cpu:1");
  json progress = json::parse(events[3].data);
  CHECK(progress["step"] == 2);
  CHECK(progress["steps"] == 3);
  CHECK(json::parse(events[10].data)["url"] == "/jobs/" + id + "/images/1.png");
  CHECK(json::parse(events[11].data)["status"] == "done");
  // ids increase
  for (std::size_t i = 1; i < events.size(); ++i) {
    CHECK(std::stoi(events[i].id) == std::stoi(events[i - 1].id) + 1);
  }
  CHECK(eventually([&] { return f.service.subscribers(id) == 0; }));
}

TEST_CASE("SSE: a late subscriber gets the catch-up, then live events without duplicates",
          "[http][sse-server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"x","steps":3})").json()["id"];
  f.service.start_image(id, 0, "cpu:1");
  f.service.progress_image(id, 0, 1);
  f.service.progress_image(id, 0, 2);
  RawConnection raw(f.port);
  raw.send(events_request(id));
  raw.read_until("\"step\":2");
  REQUIRE(f.service.wait_for_subscribers(id, 1));
  f.service.progress_image(id, 0, 3);
  // The image event and done of a finished image:
  f.service.run_image(id, 0, "cpu:1");  // replays started + progress 1..3 (duplicates) + image
  auto events = parse_event_stream(body_of(raw.read_to_close()));
  CHECK(names(events) == std::vector<std::string>{"queued", "started", "progress", "progress",
                                                  "progress", "image", "done"});
  for (int s = 1; s <= 3; ++s) CHECK(json::parse(events[1 + s].data)["step"] == s);
}

TEST_CASE("SSE: a finished job replays and closes, a reconnect after the end gets 204",
          "[http][sse-server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"x","steps":2})").json()["id"];
  f.service.run_all(id);
  RawConnection raw(f.port);
  raw.send(events_request(id));
  auto events = parse_event_stream(body_of(raw.read_to_close()));
  CHECK(names(events) ==
        std::vector<std::string>{"queued", "started", "progress", "progress", "image", "done"});

  RawConnection again(f.port);
  again.send(events_request(id, "Last-Event-ID: 6\r\n"));
  CHECK(again.read_until("\r\n\r\n").rfind("HTTP/1.1 204", 0) == 0);

  auto missing = f.get("/jobs/nosuchjob/events");
  CHECK(missing.status == 404);
  CHECK(missing.json()["error"]["code"] == "job_not_found");
}

TEST_CASE("SSE: cancel ends the stream with 'cancelled'", "[http][sse-server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  RawConnection raw(f.port);
  raw.send(events_request(id));
  raw.read_until("event: queued");
  REQUIRE(f.service.wait_for_subscribers(id, 1));
  CHECK(http_request(f.port, "DELETE", "/jobs/" + id).status == 200);
  auto events = parse_event_stream(body_of(raw.read_to_close()));
  CHECK(names(events) == std::vector<std::string>{"queued", "cancelled"});
}

TEST_CASE("SSE: idle streams get keep-alive comments, a client leaving unsubscribes",
          "[http][sse-server]") {
  HttpOptions o;
  o.sse_keepalive = std::chrono::seconds(1);
  ServerFixture f(o);
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  {
    RawConnection raw(f.port);
    raw.send(events_request(id));
    raw.read_until(": keep-alive\n\n");
    int comments = 0;
    auto events = parse_event_stream(body_of(raw.received()), &comments);
    CHECK(names(events) == std::vector<std::string>{"queued"});
    CHECK(comments >= 1);
    CHECK(f.service.subscribers(id) == 1);
  }  // the client closes its socket
  CHECK(eventually([&] { return f.service.subscribers(id) == 0; }));
}

TEST_CASE("API keys: required everywhere but /healthz and the UI", "[http][auth-server]") {
  HttpOptions o;
  o.api_keys = {"s3cret", "other-key"};
  ServerFixture f(o);
  CHECK(f.get("/healthz").status == 200);
  CHECK(f.get("/").status == 200);

  for (const char* target : {"/jobs", "/metrics", "/devices", "/readyz", "/model", "/schedulers"}) {
    INFO(target);
    auto r = f.get(target);
    CHECK(r.status == 401);
    CHECK(r.header("www-authenticate").rfind("Bearer", 0) == 0);
    CHECK(r.json()["error"]["code"] == "unauthorized");
  }
  CHECK(f.get("/jobs", {{"Authorization", "Bearer wrong"}}).status == 401);
  CHECK(f.get("/jobs", {{"Authorization", "Basic czNjcmV0"}}).status == 401);
  CHECK(f.get("/jobs", {{"Authorization", "Bearer s3cret"}}).status == 200);
  CHECK(f.get("/jobs", {{"Authorization", "bearer other-key"}}).status == 200);
  CHECK(f.post("/generate", R"({"prompt":"x"})").status == 401);
  CHECK(f.service.submitted().empty());
  auto ok = f.post("/generate", R"({"prompt":"x"})", {{"Authorization", "Bearer s3cret"}});
  REQUIRE(ok.status == 202);
  // GETs may carry the key as a query parameter (for <img src> and EventSource); POSTs not.
  CHECK(f.get("/jobs?api_key=s3cret").status == 200);
  CHECK(f.get("/jobs?api_key=nope").status == 401);
  CHECK(f.post("/generate?api_key=s3cret", R"({"prompt":"x"})").status == 401);
  // Unknown routes stay 404 (nothing to protect); wrong methods on protected routes need a key.
  CHECK(f.get("/nope").status == 404);
}

TEST_CASE("the caller's identity, priority right and idempotency key reach the core",
          "[http][auth-server]") {
  HttpOptions o;
  o.api_keys = {"s3cret", "boss"};
  o.priority_api_keys = {"boss"};
  ServerFixture f(o);
  const std::string body = R"({"prompt":"x"})";
  REQUIRE(f.post("/generate", body, {{"Authorization", "Bearer s3cret"}}).status == 202);
  SubmitContext plain = f.service.last_context();
  CHECK(plain.client == http_api::key_identity("s3cret"));
  CHECK(plain.client.rfind("key-", 0) == 0);
  CHECK(plain.client.find("s3cret") == std::string::npos);  // never the key itself
  CHECK_FALSE(plain.may_prioritise);
  CHECK(plain.idempotency_key.empty());
  REQUIRE(f.post("/generate", body,
                 {{"Authorization", "Bearer boss"}, {"Idempotency-Key", "\"abc-1\""}})
              .status == 202);
  SubmitContext boss = f.service.last_context();
  CHECK(boss.client == http_api::key_identity("boss"));
  CHECK(boss.client != plain.client);
  CHECK(boss.may_prioritise);
  CHECK(boss.idempotency_key == "abc-1");
  CHECK(boss.fingerprint == http_api::sha256_hex(body));
  // SHA-256 itself, against a published test vector (FIPS 180-2, "abc").
  CHECK(http_api::sha256_hex("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto bad = f.post("/generate", body,
                    {{"Authorization", "Bearer s3cret"}, {"Idempotency-Key", "tab\there"}});
  CHECK(bad.status == 400);
  CHECK(bad.json()["error"]["code"] == "invalid_idempotency_key");
}

TEST_CASE("slow or broken clients are cut off", "[http][limits]") {
  HttpOptions o;
  o.header_timeout = std::chrono::seconds(1);
  o.body_timeout = std::chrono::seconds(1);
  ServerFixture f(o);
  {
    // Slowloris: a header that never ends is closed by the server.
    RawConnection raw(f.port);
    raw.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    CHECK(raw.read_to_close().empty());
  }
  {
    // A body that never arrives.
    RawConnection raw(f.port);
    raw.send(
        "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"prompt\"");
    raw.read_to_close();
  }
  {
    RawConnection raw(f.port);
    raw.send("THIS IS NOT HTTP\r\n\r\n");
    CHECK(raw.read_to_close().rfind("HTTP/1.1 400", 0) == 0);
  }
  {
    RawConnection raw(f.port);
    raw.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + std::string(20000, 'a') +
             "\r\n\r\n");
    const std::string reply = raw.read_to_close();
    CHECK(reply.rfind("HTTP/1.1 431", 0) == 0);
    CHECK(reply.find("headers_too_large") != std::string::npos);
  }
  CHECK(f.get("/healthz").status == 200);
  CHECK(f.service.submitted().empty());
}

TEST_CASE("stop() closes open event streams and waiting requests", "[http][server]") {
  ServerFixture f;
  const std::string id = f.post("/generate", R"({"prompt":"x"})").json()["id"];
  RawConnection stream(f.port);
  stream.send(events_request(id));
  stream.read_until("event: queued");
  RawConnection waiting(f.port);
  waiting.send(
      "POST /generate?wait=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 14\r\n\r\n"
      "{\"prompt\":\"y\"}");
  REQUIRE(eventually([&] { return f.service.submitted().size() == 2; }));
  REQUIRE(f.service.wait_for_subscribers(f.service.last_job_id(), 1));
  f.server->stop();
  stream.read_to_close();
  CHECK(waiting.read_to_close().empty());
  CHECK(f.service.subscribers(id) == 0);
  CHECK(f.service.subscribers(f.service.last_job_id()) == 0);
}
