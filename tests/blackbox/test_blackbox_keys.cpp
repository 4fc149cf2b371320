// Black-box: who may do what on the real `diffusiond serve`. Idempotency-Key on POST /generate
// (same key + same body = the same job, across threads and a kill -9; another body is a 409;
// scoped per API key) and priorities above 0 only for keys allowed to.
#include <atomic>
#include <catch2/catch.hpp>
#include <mutex>
#include <set>
#include <thread>

#include "blackbox_util.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {
const std::string kBody =
    R"({"prompt":"idempotent lighthouse","n":2,"steps":3,"width":64,"height":64,"seed":7})";

HttpReply post(std::uint16_t port, const std::string& body, Headers headers) {
  headers.push_back({"Content-Type", "application/json"});
  return http_request(port, "POST", "/generate", body, headers);
}

std::size_t listed_jobs(std::uint16_t port, const Headers& auth = {}) {
  return http_request(port, "GET", "/jobs?limit=500", "", auth).json()["jobs"].size();
}
}  // namespace

TEST_CASE("the same Idempotency-Key and body give the same job, never a second one",
          "[blackbox][idempotency]") {
  TempDir dir("idempotency");
  auto d = std::make_unique<DaemonProcess>(dir.path, std::vector<std::string>{"--devices", "cpu"});
  const Headers key = {{"Idempotency-Key", "order-42"}};

  HttpReply first = post(d->port(), kBody, key);
  REQUIRE(first.status == 202);
  CHECK(first.header("idempotent-replayed").empty());
  const std::string id = first.json()["id"];

  HttpReply again = post(d->port(), kBody, key);
  REQUIRE(again.status == 202);
  CHECK(again.json()["id"] == id);
  CHECK(again.header("idempotent-replayed") == "true");
  // Quoted (a structured-field string) is the same key.
  CHECK(post(d->port(), kBody, {{"Idempotency-Key", "\"order-42\""}}).json()["id"] == id);

  HttpReply other = post(d->port(), R"({"prompt":"another request"})", key);
  CHECK(other.status == 409);
  CHECK(other.json()["error"]["code"] == "idempotency_key_reused");
  CHECK(other.json()["error"]["field"] == "Idempotency-Key");
  CHECK(post(d->port(), kBody, {{"Idempotency-Key", ""}}).status == 400);
  CHECK(post(d->port(), kBody, {{"Idempotency-Key", std::string(256, 'k')}}).status == 400);
  // Without a key, the same body is a new job each time.
  CHECK(post(d->port(), kBody, {}).json()["id"] != id);
  CHECK(listed_jobs(d->port()) == 2);

  // Finished, and after a kill -9: the key still names the same job (it lives in the store).
  CHECK(wait_finished(d->port(), id)["status"] == "done");
  d->kill_hard();
  d = std::make_unique<DaemonProcess>(dir.path, std::vector<std::string>{"--devices", "cpu"});
  HttpReply after = post(d->port(), kBody, key);
  REQUIRE(after.status == 202);
  CHECK(after.json()["id"] == id);
  CHECK(after.json()["status"] == "done");
  CHECK(after.header("idempotent-replayed") == "true");
  CHECK(listed_jobs(d->port()) == 2);
}

TEST_CASE("concurrent retries with one Idempotency-Key make exactly one job",
          "[blackbox][idempotency]") {
  TempDir dir("idempotency-race");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  std::mutex mu;
  std::set<std::string> ids;
  std::atomic<int> in_flight{0}, other{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t)
    clients.emplace_back([&] {
      for (int attempt = 0; attempt < 50; ++attempt) {
        HttpReply r = post(d.port(), kBody, {{"Idempotency-Key", "race"}});
        if (r.status == 202) {
          std::lock_guard lock(mu);
          ids.insert(r.json()["id"].get<std::string>());
          return;
        }
        if (r.status == 409 && r.json()["error"]["code"] == "idempotency_key_in_flight") {
          ++in_flight;  // told to retry: the first one's insert was not committed yet
          CHECK_FALSE(r.header("retry-after").empty());
          continue;
        }
        ++other;
        return;
      }
    });
  for (auto& c : clients) c.join();
  CHECK(other == 0);
  CHECK(ids.size() == 1);
  CHECK(listed_jobs(d.port()) == 1);
}

TEST_CASE("idempotency keys are scoped per API key, and priority > 0 needs a priority key",
          "[blackbox][idempotency][priority]") {
  TempDir dir("keys");
  DaemonProcess d(dir.path,
                  {"--devices", "cpu", "--api-key", "alice-key", "--priority-api-key", "boss-key"});
  const Headers alice = {{"Authorization", "Bearer alice-key"}};
  const Headers boss = {{"Authorization", "Bearer boss-key"}};
  auto with_key = [](Headers h, const std::string& k) {
    h.push_back({"Idempotency-Key", k});
    return h;
  };
  HttpReply a = post(d.port(), kBody, with_key(alice, "shared"));
  HttpReply b = post(d.port(), kBody, with_key(boss, "shared"));
  REQUIRE(a.status == 202);
  REQUIRE(b.status == 202);
  CHECK(a.json()["id"] != b.json()["id"]);  // two callers, two jobs
  CHECK(listed_jobs(d.port(), alice) == 2);

  const std::string urgent = R"({"prompt":"urgent","steps":2,"width":64,"height":64,"priority":5})";
  HttpReply refused = post(d.port(), urgent, alice);
  CHECK(refused.status == 403);
  CHECK(refused.json()["error"]["code"] == "priority_not_allowed");
  CHECK(refused.json()["error"]["field"] == "priority");
  HttpReply allowed = post(d.port(), urgent, boss);
  REQUIRE(allowed.status == 202);
  CHECK(allowed.json()["request"]["priority"] == 5);
  // Lowering one's own priority is open to everyone.
  CHECK(
      post(d.port(), R"({"prompt":"later","steps":2,"width":64,"height":64,"priority":-3})", alice)
          .status == 202);
}

TEST_CASE("without any API key nobody may use a priority above 0", "[blackbox][priority]") {
  TempDir dir("no-keys-priority");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  HttpReply r = post(d.port(), R"({"prompt":"x","priority":1})", {});
  CHECK(r.status == 403);
  CHECK(r.json()["error"]["code"] == "priority_not_allowed");
  CHECK(post(d.port(), R"({"prompt":"x","priority":0,"steps":2,"width":64,"height":64})", {})
            .status == 202);
}
