// Event-stream framing and catch-up/live merging; bearer-key parsing and comparison.
#include <catch2/catch.hpp>

#include "http/auth.h"
#include "http/sse.h"
#include "tests/support/http_client.h"

using namespace diffusiond;
using namespace diffusiond::http_api;

namespace {

JobView job_with_images(int count, int steps) {
  JobView j;
  j.id = "j1";
  j.request.steps = steps;
  for (int k = 0; k < count; ++k) {
    ImageView img;
    img.index = k;
    img.steps = steps;
    j.images.push_back(img);
  }
  return j;
}

std::vector<std::string> names(const std::vector<SseEvent>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.name);
  return out;
}

JobEvent event(JobEvent::Kind kind, int image = -1, int step = 0) {
  JobEvent e;
  e.kind = kind;
  e.job_id = "j1";
  e.image = image;
  e.step = step;
  e.steps = 3;
  e.device = "cpu:0";
  return e;
}

auto no_view = [] { return std::optional<JobView>{}; };

}  // namespace

TEST_CASE("SSE framing parses back with a spec-following parser", "[http][sse]") {
  SseEvent e{"progress", {{"job", "j1"}, {"text", "line1\nline2"}}};
  const std::string wire =
      format_sse(e, 7) + sse_comment("keep-alive") + format_sse({"done", {{"job", "j1"}}}, 8);
  int comments = 0;
  auto parsed = testing::parse_event_stream(wire, &comments);
  REQUIRE(parsed.size() == 2);
  CHECK(comments == 1);
  CHECK(parsed[0].event == "progress");
  CHECK(parsed[0].id == "7");
  CHECK(nlohmann::json::parse(parsed[0].data)["text"] == "line1\nline2");
  CHECK(parsed[1].event == "done");
}

TEST_CASE("catch-up of a queued job is just 'queued'", "[http][sse]") {
  EventStreamState s(job_with_images(2, 3));
  CHECK(names(s.catch_up()) == std::vector<std::string>{"queued"});
  CHECK_FALSE(s.finished());
}

TEST_CASE("catch-up replays what happened, then live events skip the duplicates", "[http][sse]") {
  JobView j = job_with_images(2, 3);
  j.status = JobStatus::running;
  j.images[0].status = ImageStatus::done;
  j.images[0].device = "cpu:0";
  j.images[0].step = 3;
  j.images[0].has_file = true;
  j.images[1].status = ImageStatus::running;
  j.images[1].device = "cpu:1";
  j.images[1].step = 1;
  EventStreamState s(j);
  CHECK(names(s.catch_up()) == std::vector<std::string>{"queued", "started", "progress", "progress",
                                                        "progress", "image", "started",
                                                        "progress"});
  CHECK(s.catch_up()[6].data["device"] == "cpu:1");
  CHECK(s.catch_up()[5].data["url"] == "/jobs/j1/images/0.png");

  // Events already in the snapshot (delivered late) produce nothing.
  CHECK(s.on_live(event(JobEvent::Kind::queued), no_view).empty());
  CHECK(s.on_live(event(JobEvent::Kind::started, 1), no_view).empty());
  CHECK(s.on_live(event(JobEvent::Kind::progress, 1, 1), no_view).empty());
  CHECK(s.on_live(event(JobEvent::Kind::image, 0), no_view).empty());
  // New ones pass.
  CHECK(names(s.on_live(event(JobEvent::Kind::progress, 1, 2), no_view)) ==
        std::vector<std::string>{"progress"});
  CHECK(names(s.on_live(event(JobEvent::Kind::progress, 1, 3), no_view)) ==
        std::vector<std::string>{"progress"});
  CHECK(names(s.on_live(event(JobEvent::Kind::image, 1), no_view)) ==
        std::vector<std::string>{"image"});
  CHECK_FALSE(s.finished());
  CHECK(names(s.on_live(event(JobEvent::Kind::done), no_view)) == std::vector<std::string>{"done"});
  CHECK(s.finished());
  CHECK(s.on_live(event(JobEvent::Kind::done), no_view).empty());
}

TEST_CASE("a finished job's catch-up ends with its terminal event", "[http][sse]") {
  JobView j = job_with_images(1, 2);
  j.status = JobStatus::failed;
  j.error = "out of memory";
  j.images[0].status = ImageStatus::failed;
  j.images[0].error = "out of memory";
  j.images[0].device = "cuda:0";
  j.images[0].step = 1;
  EventStreamState s(j);
  CHECK(names(s.catch_up()) ==
        std::vector<std::string>{"queued", "started", "progress", "image", "failed"});
  CHECK(s.catch_up()[3].data["status"] == "failed");
  CHECK(s.catch_up().back().data["error"] == "out of memory");
  CHECK(s.finished());
}

TEST_CASE("an image failure ends the stream only when the job ended", "[http][sse]") {
  EventStreamState s(job_with_images(2, 3));
  JobEvent f = event(JobEvent::Kind::failed, 0);
  f.error = "boom";
  JobView still_running = job_with_images(2, 3);
  still_running.status = JobStatus::running;
  auto out = s.on_live(f, [&] { return std::optional<JobView>(still_running); });
  CHECK(names(out) == std::vector<std::string>{"image"});
  CHECK(out[0].data["error"] == "boom");
  CHECK_FALSE(s.finished());

  JobView ended = still_running;
  ended.status = JobStatus::failed;
  ended.error = "boom";
  ended.images[0].status = ImageStatus::failed;
  ended.images[1].status = ImageStatus::done;
  ended.images[1].has_file = true;
  JobEvent f1 = event(JobEvent::Kind::failed, 1);
  out = s.on_live(f1, [&] { return std::optional<JobView>(ended); });
  CHECK(names(out) == std::vector<std::string>{"image", "failed"});
  CHECK(s.finished());
}

TEST_CASE("cancelled ends the stream", "[http][sse]") {
  EventStreamState s(job_with_images(1, 3));
  CHECK(names(s.on_live(event(JobEvent::Kind::cancelled), no_view)) ==
        std::vector<std::string>{"cancelled"});
  CHECK(s.finished());
}

TEST_CASE("bearer tokens and constant-time comparison", "[http][auth]") {
  CHECK(bearer_token("Bearer abc") == "abc");
  CHECK(bearer_token("bearer   abc  ") == "abc");
  CHECK(bearer_token("BEARER abc") == "abc");
  CHECK(bearer_token("Basic abc").empty());
  CHECK(bearer_token("Bearer").empty());
  CHECK(bearer_token("Bearerabc").empty());
  CHECK(bearer_token("").empty());

  CHECK(constant_time_equal("secret", "secret"));
  CHECK_FALSE(constant_time_equal("secret", "secreT"));
  CHECK_FALSE(constant_time_equal("secret", "secret2"));
  CHECK_FALSE(constant_time_equal("", "x"));
  CHECK(constant_time_equal("", ""));

  const std::vector<std::string> keys = {"k1", "key-two"};
  CHECK(key_matches("k1", keys));
  CHECK(key_matches("key-two", keys));
  CHECK_FALSE(key_matches("k2", keys));
  CHECK_FALSE(key_matches("", keys));
  CHECK_FALSE(key_matches("", {""}));
}
