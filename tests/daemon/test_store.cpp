// The job store against real SQLite files in temporary folders.
#include <sqlite3.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "daemon/atomic_file.h"
#include "daemon/job_store.h"
#include "daemon/sqlite_db.h"
#include "daemon/store_writer.h"
#include "pipeline/media/posix_fs.h"
#include "temp_dir.h"

using namespace diffusiond;
using diffusiond::test::TempDir;

namespace {
JobRecord sample_job(const std::string& prompt = "a lighthouse", int n = 2) {
  JobRequest r;
  r.prompts = {prompt};
  r.n = n;
  r.steps = 5;
  r.seed = 42;
  r.width = 64;
  r.height = 64;
  r.scheduler = "euler_a";
  r.negative_prompt = "fog";
  return make_job(r, make_job_id(), unix_ms_now(), "tiny-sd1");
}

void finish_image(JobStore& store, JobRecord& job, int k, std::int64_t when_ms,
                  std::size_t bytes = 3) {
  set_image_status(job, k, ImageStatus::running);
  set_image_status(job, k, ImageStatus::done);
  auto& image = job.view.images[static_cast<std::size_t>(k)];
  image.has_file = true;
  image.finished_ms = when_ms;
  image.file_bytes = static_cast<std::int64_t>(bytes);
  store.prepare_image_dir(job.view.id);
  write_file_atomically(store.image_file(job.view.id, k), std::string(bytes, 'p'));
  if (is_terminal(job.view.status)) job.view.finished_ms = when_ms;
  store.update(job, {k});
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}
}  // namespace

TEST_CASE("a stored job survives closing and reopening the store", "[store]") {
  TempDir dir;
  JobRecord job = sample_job();
  {
    auto store = JobStore::open(dir.path());
    store->insert(job);
    CHECK(job.seq > 0);
    set_image_status(job, 0, ImageStatus::running);
    job.view.images[0].device = "cpu:1";
    job.view.images[0].started_ms = 1234;
    job.attempts[0] = 1;
    job.view.started_ms = 1234;
    store->update(job, {0});
  }
  auto store = JobStore::open(dir.path());
  auto back = store->load(job.view.id);
  REQUIRE(back);
  CHECK(back->seq == job.seq);
  CHECK(back->view.status == JobStatus::running);
  CHECK(back->view.started_ms == 1234);
  CHECK(back->view.request.prompts == job.view.request.prompts);
  CHECK(back->view.request.negative_prompt == "fog");
  CHECK(back->view.request.scheduler == "euler_a");
  CHECK(back->view.model == "tiny-sd1");
  REQUIRE(back->view.images.size() == 2);
  CHECK(back->view.images[0].status == ImageStatus::running);
  CHECK(back->view.images[0].device == "cpu:1");
  CHECK(back->view.images[0].seed == 42);
  CHECK(back->view.images[1].seed == 43);
  CHECK(back->attempts == std::vector<int>{1, 0});
  CHECK_FALSE(store->load("ffffffffffffffff"));
}

TEST_CASE("recover re-queues running images and returns unfinished jobs in order", "[store]") {
  TempDir dir;
  JobRecord first = sample_job("first"), second = sample_job("second"),
            done = sample_job("done", 1);
  {
    auto store = JobStore::open(dir.path());
    store->insert(first);
    store->insert(second);
    store->insert(done);
    set_image_status(first, 0, ImageStatus::running);
    first.view.images[0].device = "cuda:0";
    store->update(first, {0});
    finish_image(*store, done, 0, unix_ms_now());
  }  // "crash": nothing else is written
  auto store = JobStore::open(dir.path());
  const auto unfinished = store->recover();
  REQUIRE(unfinished.size() == 2);
  CHECK(unfinished[0].view.id == first.view.id);
  CHECK(unfinished[1].view.id == second.view.id);
  CHECK(unfinished[0].view.status == JobStatus::running);  // it had started
  CHECK(unfinished[0].view.images[0].status == ImageStatus::queued);
  CHECK(unfinished[0].view.images[0].device.empty());
  CHECK(store->load(done.view.id)->view.status == JobStatus::done);
}

TEST_CASE("recover cancels images left running in a job that was already cancelled", "[store]") {
  TempDir dir;
  JobRecord job = sample_job("c", 2);
  {
    auto store = JobStore::open(dir.path());
    store->insert(job);
    set_image_status(job, 0, ImageStatus::running);
    cancel_job(job);
    store->update(job, {0, 1});
  }
  auto store = JobStore::open(dir.path());
  CHECK(store->recover().empty());
  auto back = store->load(job.view.id);
  CHECK(back->view.images[0].status == ImageStatus::cancelled);
  CHECK(back->view.images[1].status == ImageStatus::cancelled);
}

TEST_CASE("list is newest first, filters by status and counts by status", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  std::vector<JobRecord> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(sample_job("p" + std::to_string(i), 1));
    store->insert(jobs.back());
  }
  finish_image(*store, jobs[1], 0, 10);
  const auto all = store->list(std::nullopt, 10);
  REQUIRE(all.size() == 4);
  CHECK(all[0].view.id == jobs[3].view.id);
  CHECK(all[3].view.id == jobs[0].view.id);
  CHECK(store->list(std::nullopt, 2).size() == 2);
  const auto finished = store->list(JobStatus::done, 10);
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].view.id == jobs[1].view.id);
  CHECK(finished[0].view.images[0].has_file);
  const auto counts = store->count_by_status();
  CHECK(counts.at(JobStatus::queued) == 3);
  CHECK(counts.at(JobStatus::done) == 1);
  CHECK(counts.at(JobStatus::failed) == 0);
}

TEST_CASE("retention by age deletes old finished jobs and their files only", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  const std::int64_t day = 86'400'000, now = 100 * day;
  JobRecord old_job = sample_job("old", 1), new_job = sample_job("new", 1),
            unfinished = sample_job("queued", 1);
  store->insert(old_job);
  store->insert(new_job);
  store->insert(unfinished);
  finish_image(*store, old_job, 0, now - 8 * day);
  finish_image(*store, new_job, 0, now - 1 * day);
  const auto result = store->prune({7, 0}, now);
  CHECK(result.jobs_deleted == 1);
  CHECK(result.files_deleted == 1);
  CHECK_FALSE(store->load(old_job.view.id));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "images" / old_job.view.id));
  CHECK(store->load(new_job.view.id));
  CHECK(std::filesystem::exists(store->image_file(new_job.view.id, 0)));
  CHECK(store->load(unfinished.view.id));
}

TEST_CASE("retention by count keeps the newest images", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  std::vector<JobRecord> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(sample_job("p" + std::to_string(i), 2));  // 2 images each
    store->insert(jobs.back());
    finish_image(*store, jobs.back(), 0, 1000 + i);
    finish_image(*store, jobs.back(), 1, 1000 + i);
  }
  const auto result = store->prune({0, 5}, 2000);  // 8 files, keep at most 5
  CHECK(result.jobs_deleted == 2);
  CHECK(result.files_deleted == 4);
  CHECK_FALSE(store->load(jobs[0].view.id));
  CHECK_FALSE(store->load(jobs[1].view.id));
  CHECK(store->load(jobs[2].view.id));
  CHECK(store->load(jobs[3].view.id));
  CHECK(store->prune({0, 5}, 2000).jobs_deleted == 0);
  CHECK(store->prune({0, 0}, 2000).jobs_deleted == 0);  // no policy: keep everything
}

TEST_CASE("retention by bytes keeps the newest images within the cap", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  std::vector<JobRecord> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(sample_job("p" + std::to_string(i), 2));  // 2 images of 1000 bytes each
    store->insert(jobs.back());
    finish_image(*store, jobs.back(), 0, 1000 + i, 1000);
    finish_image(*store, jobs.back(), 1, 1000 + i, 1000);
  }
  JobRecord running = sample_job("running", 2);  // its file counts, and is never deleted
  store->insert(running);
  finish_image(*store, running, 0, 900, 1000);
  // 9000 bytes on disk; keep at most 5500: the running job's 1000 + the newest two (4000).
  const auto result = store->prune({0, 0, 5500}, 2000);
  CHECK(result.jobs_deleted == 2);
  CHECK(result.files_deleted == 4);
  CHECK(result.bytes_deleted == 4000);
  CHECK_FALSE(store->load(jobs[0].view.id));
  CHECK_FALSE(store->load(jobs[1].view.id));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "images" / jobs[1].view.id));
  CHECK(store->load(jobs[2].view.id));
  CHECK(store->load(jobs[3].view.id));
  CHECK(std::filesystem::exists(store->image_file(running.view.id, 0)));
  CHECK(store->load(jobs[3].view.id)->view.images[1].file_bytes == 1000);
  CHECK(store->prune({0, 0, 5500}, 2000).jobs_deleted == 0);
}

TEST_CASE("a version 1 database is migrated in place, its jobs intact", "[store]") {
  TempDir dir;
  {  // what diffusiond 0.1 (schema 1) wrote: no client, idempotency or size columns
    SqliteDatabase v1(dir.path() / "diffusiond.db");
    v1.exec(R"sql(
      CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO meta VALUES('schema', '1');
      CREATE TABLE jobs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL, priority INTEGER NOT NULL, request TEXT NOT NULL,
        model TEXT NOT NULL, created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0,
        finished_ms INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '');
      CREATE TABLE images(job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, prompt TEXT NOT NULL, seed INTEGER NOT NULL, status TEXT NOT NULL,
        device TEXT NOT NULL DEFAULT '', steps INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
        file TEXT NOT NULL DEFAULT '', started_ms INTEGER NOT NULL DEFAULT 0,
        finished_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(job_id, idx));
      INSERT INTO jobs(id, status, priority, request, model, created_ms) VALUES('00000000000000aa',
        'queued', 0, '{"prompts":["old"],"n":1,"steps":5,"seed":1,"width":64,"height":64,
        "guidance_scale":7.5,"negative_prompt":"","scheduler":"pndm","priority":0}', 'm', 5);
      INSERT INTO images(job_id, idx, prompt, seed, status, steps)
        VALUES('00000000000000aa', 0, 'old', 1, 'queued', 5);
    )sql");
  }
  auto store = JobStore::open(dir.path());
  const auto old = store->load("00000000000000aa");
  REQUIRE(old);
  CHECK(old->view.request.prompts == std::vector<std::string>{"old"});
  CHECK(old->client.empty());
  CHECK(old->idempotency_key.empty());
  CHECK(old->view.images[0].batch_size == 0);  // schema 3's column, through both migrations
  JobRecord keyed = sample_job("new", 1);
  keyed.client = "key-0123456789abcdef";
  keyed.idempotency_key = "k1";
  keyed.fingerprint = "f";
  store->insert(keyed);
  const auto found = store->find_by_idempotency_key("key-0123456789abcdef", "k1");
  REQUIRE(found);
  CHECK(found->view.id == keyed.view.id);
  CHECK(found->fingerprint == "f");
  CHECK_FALSE(store->find_by_idempotency_key("", "k1"));  // scoped per client
  JobRecord duplicate = sample_job("dup", 1);
  duplicate.client = keyed.client;
  duplicate.idempotency_key = "k1";
  CHECK_THROWS_AS(store->insert(duplicate), StoreError);  // the unique index backs the core
}

TEST_CASE("a corrupt database is a clear start-up error, never silent loss", "[store]") {
  TempDir dir;
  {
    JobRecord job = sample_job();
    JobStore::open(dir.path())->insert(job);
  }
  write_bytes(dir.path() / "diffusiond.db",
              std::string(8192, '\x5a') + "this is not an SQLite database");
  std::filesystem::remove(dir.path() / "diffusiond.db-wal");
  std::filesystem::remove(dir.path() / "diffusiond.db-shm");
  try {
    JobStore::open(dir.path());
    FAIL("a garbage database opened");
  } catch (const StoreError& e) {
    const std::string message = e.what();
    CHECK_THAT(message, Catch::Contains("diffusiond.db"));
    CHECK_THAT(message, Catch::Contains("corrupt or not a diffusiond database"));
    CHECK_THAT(message, Catch::Contains("--data-dir"));
  }
}

TEST_CASE("a database locked by another connection is a clear start-up error", "[store]") {
  TempDir dir;
  JobStore::open(dir.path());  // creates the database, then closes it
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open((dir.path() / "diffusiond.db").c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK);
  try {
    JobStore::open(dir.path());
    FAIL("opened a locked database");
  } catch (const StoreError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("locked by another process"));
  }
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  CHECK_NOTHROW(JobStore::open(dir.path()));  // usable again once the lock is gone
}

TEST_CASE("two stores on one data dir: the second is refused", "[store]") {
  TempDir dir;
  auto first = JobStore::open(dir.path());
  CHECK_THROWS_WITH(JobStore::open(dir.path()), Catch::Contains("in use by another diffusiond"));
  first.reset();
  CHECK_NOTHROW(JobStore::open(dir.path()));
}

TEST_CASE("the store uses WAL with full sync", "[store]") {
  TempDir dir;
  { JobStore::open(dir.path()); }
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((dir.path() / "diffusiond.db").c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))) == "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_CASE("files are written atomically - stale temporaries and orphan folders go", "[store]") {
  TempDir dir;
  const auto target = dir.path() / "x.png";
  write_file_atomically(target, "first version");
  write_file_atomically(target, std::string("\x01\x02", 2));
  std::ifstream in(target, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  CHECK(content == std::string("\x01\x02", 2));
  std::error_code ec;
  CHECK(list_directory(dir.path(), ec).size() == 1);  // no temporary left behind
  CHECK_FALSE(ec);
  CHECK_THROWS_WITH(write_file_atomically(dir.path() / "missing" / "x.png", "x"),
                    Catch::Contains("missing"));

  TempDir data;
  { JobStore::open(data.path()); }
  std::filesystem::create_directories(data.path() / "images" / "0000000000000000");
  write_bytes(data.path() / "images" / "0000000000000000" / "0.png", "x");
  auto store = JobStore::open(data.path());
  CHECK_FALSE(std::filesystem::exists(data.path() / "images" / "0000000000000000"));
  JobRecord job = sample_job();
  store->insert(job);
  store->prepare_image_dir(job.view.id);
  write_bytes(store->image_file(job.view.id, 0).string() + ".tmp-123", "partial");
  store.reset();
  store = JobStore::open(data.path());
  CHECK(std::filesystem::exists(data.path() / "images" / job.view.id));
  CHECK_FALSE(std::filesystem::exists(store->image_file(job.view.id, 0).string() + ".tmp-123"));
}

namespace {
struct RecordingListener : StoreWriter::Listener {
  std::mutex mu;
  std::vector<StoreWriter::Ticket> committed;
  std::vector<std::string> failed_ids;
  std::string error;
  void writes_committed(StoreWriter::Ticket last) override {
    std::lock_guard lock(mu);
    committed.push_back(last);
  }
  void writes_failed(const std::vector<std::string>& ids, const std::string& e) override {
    std::lock_guard lock(mu);
    failed_ids.insert(failed_ids.end(), ids.begin(), ids.end());
    error = e;
  }
  void writes_stalled(const std::string& e) override {
    std::lock_guard lock(mu);
    stalled.push_back(e);
  }
  std::vector<std::string> stalled;
};
}  // namespace

TEST_CASE("the store writer commits concurrent writes durably, in order, in groups", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  RecordingListener listener;
  std::vector<JobRecord> jobs(200);
  {
    StoreWriter writer(*store, listener);
    std::vector<std::thread> threads;
    std::atomic<int> failed_waits{0};  // Catch2's CHECK is not thread-safe: count, check after
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        for (int i = t; i < 200; i += 8) {
          JobRecord job = sample_job("job " + std::to_string(i), 1);
          job.seq = i + 1;
          const auto inserted = writer.enqueue({job, {}, true});
          if (!writer.wait(inserted).empty()) ++failed_waits;  // committed when wait returns
          set_image_status(job, 0, ImageStatus::running);
          writer.enqueue({job, {0}, false});  // then an update of the same job, not waited for
          jobs[static_cast<std::size_t>(i)] = job;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(failed_waits == 0);
    CHECK(writer.flush().empty());
    CHECK_FALSE(writer.failed());
  }
  // 400 writes, fewer commits than writes (grouped), tickets increasing.
  CHECK(listener.committed.size() < 400);
  CHECK(std::is_sorted(listener.committed.begin(), listener.committed.end()));
  CHECK(listener.committed.back() == 400);
  const auto counts = store->count_by_status();
  CHECK(counts.at(JobStatus::running) == 200);  // every update applied after its insert
  for (const auto& job : jobs) CHECK(store->load(job.view.id)->seq == job.seq);
}

TEST_CASE("a store writer failure is reported, final, and names the database", "[store]") {
  TempDir dir;
  auto store = JobStore::open(dir.path());
  RecordingListener listener;
  StoreWriter writer(*store, listener);
  JobRecord first = sample_job("first", 1);
  REQUIRE(writer.wait(writer.enqueue({first, {}, true})).empty());
  std::filesystem::remove(store->database_path());  // SQLite would write on, unnoticed
  JobRecord second = sample_job("second", 1);
  const std::string error = writer.wait(writer.enqueue({second, {}, true}));
  CHECK_THAT(error, Catch::Contains("diffusiond.db") && Catch::Contains("gone"));
  CHECK(writer.failed());
  // The listener hears of the failure on the writer thread after wait() returned (seen under
  // load and AddressSanitizer's slower timing): wait for it, up to 10 s.
  for (int i = 0; i < 1000; ++i) {
    {
      std::lock_guard lock(listener.mu);
      if (!listener.failed_ids.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard lock(listener.mu);
    CHECK(listener.failed_ids == std::vector<std::string>{second.view.id});
  }
  JobRecord third = sample_job("third", 1);
  CHECK(writer.wait(writer.enqueue({third, {}, true})) == error);  // final: no retry
}
