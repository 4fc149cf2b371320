// The PostgreSQL job store (daemon/pg/pg_store.h) against a real server (tests/support/
// pg_server.h; skipped with exit code 77 when PostgreSQL is not installed): the schema created
// once by racing daemons, claims in priority and submission order, concurrent claimers never
// sharing an image (SKIP LOCKED), leases that expire and are taken over, and result writes
// fenced by owner and attempt: a daemon that lost its lease cannot complete the image.
#include <catch2/catch.hpp>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>

#include "daemon/pg/pg_store.h"
#include "tests/support/pg_server.h"

using namespace diffusiond;
using diffusiond::testing::PgServer;

namespace {

void require_postgres() {
  if (PgServer::find_binaries()) return;
  std::cout << "PostgreSQL is not installed (initdb/pg_ctl; Debian: apt-get install "
               "postgresql): skipped (exit code 77)"
            << std::endl;
  std::fflush(nullptr);
  std::_Exit(77);
}

JobRecord job_of(const std::string& id, int n, int priority) {
  JobRequest r;
  r.prompts = {"a test"};
  r.n = n;
  r.steps = 3;
  r.width = r.height = 64;
  r.scheduler = "pndm";
  r.seed = 10;
  r.priority = priority;
  return make_job(r, id, unix_ms_now(), "tiny");
}

}  // namespace

TEST_CASE("pg store: racing schema creation, claim order, no image claimed twice",
          "[postgres][pg_store]") {
  require_postgres();
  PgServer server;
  {  // four daemons starting at once: one creates, the others find it (advisory lock)
    std::vector<std::thread> threads;
    std::mutex mu;
    std::vector<std::string> errors;
    for (int i = 0; i < 4; ++i)
      threads.emplace_back([&] {
        try {
          PgConnection db(server.url());
          pg::open_schema(db);
        } catch (const std::exception& e) {
          std::lock_guard lock(mu);
          errors.push_back(e.what());
        }
      });
    for (auto& t : threads) t.join();
    INFO((errors.empty() ? "" : errors.front()));
    CHECK(errors.empty());
  }
  PgConnection db(server.url());
  CHECK(db.exec("SELECT value FROM diffusiond_meta WHERE key = 'schema'").text(0, 0) ==
        std::to_string(pg::kSchemaVersion));

  auto low = job_of("job-low", 2, 0);
  auto high = job_of("job-high", 1, 5);
  auto later = job_of("job-later", 1, 0);
  pg::insert_job(db, low, "test");
  pg::insert_job(db, high, "test");
  pg::insert_job(db, later, "test");
  CHECK(low.seq < high.seq);
  CHECK(high.seq < later.seq);
  // Priority first, then submission order, then the image index; only served models.
  CHECK(pg::claim(db, "d1", {"other-model"}, 5, 10000).empty());
  const auto first = pg::claim(db, "d1", {"tiny"}, 3, 10000);
  REQUIRE(first.size() == 3);
  CHECK(first[0].job_id == "job-high");
  CHECK(first[1].job_id == "job-low");
  CHECK(first[1].image == 0);
  CHECK(first[2].job_id == "job-low");
  CHECK(first[2].image == 1);
  CHECK(first[0].attempt == 1);
  CHECK(pg::load_job(db, "job-low")->view.status == JobStatus::running);
  CHECK(pg::queue_counts(db).queued == 1);

  // Many images, four claimers at once: every image claimed exactly once.
  for (int j = 0; j < 10; ++j) {
    auto job = job_of("bulk-" + std::to_string(j), 8, 0);
    pg::insert_job(db, job, "test");
  }
  std::mutex mu;
  std::multiset<std::string> claimed;
  std::vector<std::thread> claimers;
  for (int c = 0; c < 4; ++c)
    claimers.emplace_back([&, c] {
      PgConnection mine(server.url());
      for (;;) {
        const auto got = pg::claim(mine, "c" + std::to_string(c), {"tiny"}, 3, 10000);
        if (got.empty()) return;
        std::lock_guard lock(mu);
        for (const auto& t : got) claimed.insert(t.job_id + "/" + std::to_string(t.image));
      }
    });
  for (auto& t : claimers) t.join();
  CHECK(claimed.size() == 81);  // 80 bulk images and job-later's
  CHECK(std::set<std::string>(claimed.begin(), claimed.end()).size() == claimed.size());
}

TEST_CASE("pg store: an expired lease is taken over, the old owner's result refused",
          "[postgres][pg_store]") {
  require_postgres();
  PgServer server;
  PgConnection db(server.url());
  pg::open_schema(db);
  auto job = job_of("job-lease", 1, 0);
  pg::insert_job(db, job, "test");
  const auto a = pg::claim(db, "daemon-a", {"tiny"}, 1, 200);  // a 200 ms lease
  REQUIRE(a.size() == 1);
  CHECK(pg::start_image(db, "daemon-a", "job-lease", 0, a[0].attempt, "daemon-a/cpu", 1));
  CHECK(pg::requeue_expired(db, 3) == 0);                       // not expired yet
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // daemon-a stops renewing
  CHECK(pg::requeue_expired(db, 3) == 1);
  const auto b = pg::claim(db, "daemon-b", {"tiny"}, 1, 10000);
  REQUIRE(b.size() == 1);
  CHECK(b[0].attempt == 2);
  // daemon-a comes back: its lease is gone, its writes are refused.
  CHECK(pg::renew(db, "daemon-a", 10000, {"job-lease"}, {0}).empty());
  CHECK_FALSE(pg::progress_image(db, "daemon-a", "job-lease", 0, a[0].attempt, 2, 3, 1));
  CHECK_FALSE(pg::finish_image(db, "daemon-a", "job-lease", 0, a[0].attempt, "late", 2));
  CHECK_FALSE(pg::end_image(db, "daemon-a", "job-lease", 0, a[0].attempt, pg::ImageOutcome::failed,
                            "late failure"));
  CHECK(pg::load_job(db, "job-lease")->view.status == JobStatus::running);
  // daemon-b holds it and completes it, once.
  CHECK(pg::renew(db, "daemon-b", 10000, {"job-lease"}, {0}).size() == 1);
  CHECK(pg::progress_image(db, "daemon-b", "job-lease", 0, b[0].attempt, 1, 3, 2));
  CHECK(pg::load_job(db, "job-lease")->view.images[0].batch_size == 2);  // shared with another
  CHECK(pg::finish_image(db, "daemon-b", "job-lease", 0, b[0].attempt, "the png", 3));
  CHECK_FALSE(pg::finish_image(db, "daemon-b", "job-lease", 0, b[0].attempt, "again", 4));
  const auto done = pg::load_job(db, "job-lease");
  CHECK(done->view.status == JobStatus::done);
  CHECK(done->attempts[0] == 2);
  CHECK(pg::image_png(db, "job-lease", 0) == std::optional<std::string>("the png"));

  // Out of attempts: an expired lease fails the image and the job.
  auto last = job_of("job-last", 1, 0);
  pg::insert_job(db, last, "test");
  REQUIRE(pg::claim(db, "daemon-a", {"tiny"}, 1, 1).size() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(pg::requeue_expired(db, 1) == 0);
  const auto failed = pg::load_job(db, "job-last");
  CHECK(failed->view.status == JobStatus::failed);
  CHECK(failed->view.images[0].error.find("attempts_exhausted") == 0);

  // Cancel: queued images at once, the job cancelled; the running owner sees it on renew.
  auto big = job_of("job-cancel", 2, 0);
  pg::insert_job(db, big, "test");
  const auto c = pg::claim(db, "daemon-c", {"tiny"}, 1, 10000);
  REQUIRE(c.size() == 1);
  CHECK(pg::cancel_job(db, "job-cancel") == std::optional<bool>(true));
  CHECK(pg::cancel_job(db, "job-cancel") == std::optional<bool>(false));
  CHECK(pg::cancel_job(db, "no-such-job") == std::nullopt);
  const auto renewed = pg::renew(db, "daemon-c", 10000, {"job-cancel"}, {0});
  REQUIRE(renewed.size() == 1);
  CHECK(renewed[0].cancel_requested);
  CHECK(pg::end_image(db, "daemon-c", "job-cancel", 0, c[0].attempt, pg::ImageOutcome::cancelled,
                      ""));
  const auto cancelled = pg::load_job(db, "job-cancel");
  CHECK(cancelled->view.status == JobStatus::cancelled);
  CHECK(cancelled->view.images[1].status == JobStatus::cancelled);
}
