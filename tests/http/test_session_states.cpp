// The connection state machine (http/session.h): its transition table, and over real HTTP the
// paths that only show with a request waiting on the service: pipelining behind it, the client
// leaving, the Session freed.
#include <catch2/catch.hpp>
#include <thread>

#include "http/session.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::testing;
using nlohmann::json;

namespace {

bool eventually(const std::function<bool()>& cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::string wait_request(const std::string& prompt) {
  const std::string body = R"({"prompt":")" + prompt + R"("})";
  return "POST /generate?wait=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

const std::string healthz_request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

// Connections open now, per /metrics (the /metrics request's own connection included).
int connections_open(ServerFixture& f) {
  const std::string text = f.get("/metrics").body;
  const std::string key = "\ndiffusiond_http_connections_open ";
  const auto at = text.find(key);
  return at == std::string::npos ? -1 : std::stoi(text.substr(at + key.size()));
}

// Splits raw HTTP/1.1 answers (each with Content-Length) into their status lines and bodies.
std::vector<std::pair<std::string, std::string>> split_answers(const std::string& raw) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t pos = 0;
  while (pos < raw.size()) {
    const auto head_end = raw.find("\r\n\r\n", pos);
    if (head_end == std::string::npos) break;
    const std::string head = raw.substr(pos, head_end - pos);
    const auto cl = head.find("Content-Length: ");
    const std::size_t length =
        cl == std::string::npos ? 0 : std::stoul(head.substr(cl + 16, head.find("\r\n", cl)));
    if (head_end + 4 + length > raw.size()) break;
    out.emplace_back(head.substr(0, head.find("\r\n")), raw.substr(head_end + 4, length));
    pos = head_end + 4 + length;
  }
  return out;
}

// Reads until `count` complete answers arrived (or the server closed).
std::vector<std::pair<std::string, std::string>> read_answers(RawConnection& raw,
                                                              std::size_t count) {
  auto answers = split_answers(raw.received());
  while (answers.size() < count && raw.read_some()) answers = split_answers(raw.received());
  return answers;
}

}  // namespace

TEST_CASE("a request pipelined behind a ?wait=1 request is answered after it, in order",
          "[http][session]") {
  ServerFixture f;
  RawConnection raw(f.port);
  bool together = false;
  SECTION("sent while the first waits (the peer watch sees it readable and stops)") {
    raw.send(wait_request("first"));
    REQUIRE(eventually([&] { return f.service.submitted().size() == 1; }));
    REQUIRE(f.service.wait_for_subscribers(f.service.last_job_id(), 1));
    raw.send(healthz_request);
  }
  SECTION("sent together with the first (already buffered when the first is read)") {
    together = true;
    raw.send(wait_request("first") + healthz_request);
    REQUIRE(eventually([&] { return f.service.submitted().size() == 1; }));
    REQUIRE(f.service.wait_for_subscribers(f.service.last_job_id(), 1));
  }
  INFO("together: " << together);
  const std::string id = f.service.last_job_id();
  // The waiting request keeps its connection and subscription while nothing is read.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(f.service.subscribers(id) == 1);
  CHECK(raw.received().empty());

  f.service.run_all(id);
  auto answers = read_answers(raw, 2);
  REQUIRE(answers.size() == 2);
  CHECK(answers[0].first == "HTTP/1.1 200 OK");
  json job = json::parse(answers[0].second);
  CHECK(job["id"] == id);
  CHECK(job["status"] == "done");
  CHECK(answers[1].first == "HTTP/1.1 200 OK");
  CHECK(json::parse(answers[1].second)["status"] == "ok");
  CHECK(eventually([&] { return f.service.subscribers(id) == 0; }));

  // Still keep-alive: a third request on the same connection.
  raw.send(healthz_request);
  answers = read_answers(raw, 3);
  REQUIRE(answers.size() == 3);
  CHECK(answers[2].first == "HTTP/1.1 200 OK");
  CHECK(f.service.submitted().size() == 1);
}

TEST_CASE("a client leaving while its ?wait=1 request is pending drops the wait",
          "[http][session]") {
  ServerFixture f;
  REQUIRE(connections_open(f) == 1);
  {
    RawConnection raw(f.port);
    raw.send(wait_request("gone"));
    REQUIRE(eventually([&] { return f.service.submitted().size() == 1; }));
    REQUIRE(f.service.wait_for_subscribers(f.service.last_job_id(), 1));
    CHECK(connections_open(f) == 2);
  }  // the client closes its socket: EOF on the watched connection
  const std::string id = f.service.last_job_id();
  CHECK(eventually([&] { return f.service.subscribers(id) == 0; }));
  // The Session is gone too (nothing holds it once the wait is dropped).
  CHECK(eventually([&] { return connections_open(f) == 1; }));
  // The job itself goes on; finishing it later touches no connection.
  f.service.run_all(id);
  CHECK(f.get("/jobs/" + id).json()["status"] == "done");
}

TEST_CASE("a waiting connection whose client pipelined and left is freed once answered",
          "[http][session]") {
  ServerFixture f;
  {
    RawConnection raw(f.port);
    raw.send(wait_request("pipelined then gone"));
    REQUIRE(eventually([&] { return f.service.submitted().size() == 1; }));
    REQUIRE(f.service.wait_for_subscribers(f.service.last_job_id(), 1));
    raw.send(healthz_request);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }  // closed with the pipelined request unread: the server cannot see EOF behind it yet
  const std::string id = f.service.last_job_id();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(f.service.subscribers(id) == 1);  // still waiting, still held
  f.service.run_all(id);
  CHECK(eventually([&] { return f.service.subscribers(id) == 0; }));
  CHECK(eventually([&] { return connections_open(f) == 1; }));
  CHECK(f.get("/healthz").status == 200);
}

TEST_CASE("the connection state table allows only the documented transitions", "[http][session]") {
  using S = http_api::Session::State;
  using http_api::Session;
  const S all[] = {S::starting,     S::idle,          S::reading_header, S::writing_continue,
                   S::reading_body, S::handling,      S::waiting,        S::writing_response,
                   S::streaming,    S::stream_ending, S::lingering,      S::closed};
  for (S s : all) {
    INFO(Session::state_name(s));
    CHECK(Session::legal(s, S::closed) == (s != S::closed));
    CHECK_FALSE(Session::legal(S::closed, s));
    CHECK_FALSE(Session::legal(s, S::starting));
    CHECK_FALSE(Session::legal(s, s));
  }
  // Answers only for an open request (or a refused one while reading).
  CHECK(Session::legal(S::handling, S::writing_response));
  CHECK(Session::legal(S::waiting, S::writing_response));
  CHECK(Session::legal(S::reading_header, S::writing_response));
  CHECK(Session::legal(S::reading_body, S::writing_response));
  CHECK_FALSE(Session::legal(S::streaming, S::writing_response));
  CHECK_FALSE(Session::legal(S::writing_response, S::writing_response));
  CHECK_FALSE(Session::legal(S::lingering, S::writing_response));
  // An event stream never goes back to requests: it ends, drains, lingers.
  CHECK(Session::legal(S::streaming, S::stream_ending));
  CHECK(Session::legal(S::stream_ending, S::lingering));
  CHECK_FALSE(Session::legal(S::streaming, S::lingering));
  CHECK_FALSE(Session::legal(S::stream_ending, S::reading_header));
  // A request starts from idle (waiting for its first byte; evictable), or straight after an
  // answer when its bytes are already there (pipelined).
  CHECK(Session::legal(S::starting, S::idle));
  CHECK_FALSE(Session::legal(S::starting, S::reading_header));
  CHECK(Session::legal(S::idle, S::reading_header));
  CHECK_FALSE(Session::legal(S::idle, S::handling));
  CHECK_FALSE(Session::legal(S::idle, S::writing_response));
  CHECK(Session::legal(S::writing_response, S::idle));
  CHECK_FALSE(Session::legal(S::streaming, S::idle));
  CHECK_FALSE(Session::legal(S::lingering, S::idle));
  // Keep-alive goes back to reading only after a written answer.
  CHECK(Session::legal(S::writing_response, S::reading_header));
  CHECK_FALSE(Session::legal(S::waiting, S::reading_header));
  CHECK_FALSE(Session::legal(S::handling, S::reading_header));
  CHECK(Session::legal(S::handling, S::waiting));
  CHECK_FALSE(Session::legal(S::reading_body, S::waiting));
}
