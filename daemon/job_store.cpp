#include "daemon/job_store.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "daemon/api/json/request_json.h"
#include "daemon/atomic_file.h"
#include "daemon/sqlite_db.h"
#include "pipeline/media/posix_fs.h"

namespace diffusiond {

namespace {

constexpr int kSchemaVersion = 3;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL,
  priority INTEGER NOT NULL,
  request TEXT NOT NULL,
  model TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL DEFAULT 0,
  finished_ms INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  client TEXT NOT NULL DEFAULT '',
  idem_key TEXT,
  idem_fp TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS images(
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  prompt TEXT NOT NULL,
  seed INTEGER NOT NULL,
  status TEXT NOT NULL,
  device TEXT NOT NULL DEFAULT '',
  steps INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  file TEXT NOT NULL DEFAULT '',
  started_ms INTEGER NOT NULL DEFAULT 0,
  finished_ms INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER NOT NULL DEFAULT 0,
  batch_size INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(job_id, idx));
CREATE INDEX IF NOT EXISTS images_by_status ON images(status);
)sql";

// Created after the migrations (a version 1 table has no idem_key column before them).
constexpr const char* kIndexes = R"sql(
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs(client, idem_key)
  WHERE idem_key IS NOT NULL;
)sql";

// From version N to N + 1, in one transaction with the version bump.
constexpr const char* kMigrations[] = {
    "",  // (version 0 does not exist)
    // 1 -> 2: who submitted a job, its idempotency key and request fingerprint; PNG sizes.
    "ALTER TABLE jobs ADD COLUMN client TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN idem_key TEXT;"
    "ALTER TABLE jobs ADD COLUMN idem_fp TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE images ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;",
    // 2 -> 3: how many images shared an image's UNet batch (batches across requests).
    "ALTER TABLE images ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 0;",
};

constexpr const char* kJobColumns =
    "seq, id, status, request, model, created_ms, started_ms, finished_ms, error, client, "
    "COALESCE(idem_key, ''), idem_fp";
constexpr const char* kImageColumns =
    "idx, prompt, seed, status, device, steps, attempts, error, file, started_ms, finished_ms, "
    "bytes, batch_size";

JobStatus status_from_text(const std::string& text, const std::string& where) {
  auto status = parse_job_status(text);
  if (!status) throw StoreError("job store: unknown status '" + text + "' in " + where);
  return *status;
}

std::string describe(const SqliteError& e, const std::filesystem::path& db_path) {
  switch (e.code()) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return "job database " + db_path.string() + " is corrupt or not a diffusiond database (" +
             e.what() + "). Move it away (the daemon will start with an empty queue) or point " +
             "--data-dir at another folder.";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "job database " + db_path.string() + " is locked by another process (" + e.what() +
             "). Stop the other diffusiond or sqlite3 session using it, or use another --data-dir.";
    default:
      return "job database " + db_path.string() + ": " + e.what();
  }
}

}  // namespace

std::unique_ptr<JobStore> JobStore::open(const std::filesystem::path& data_dir) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir / "images", ec);
  if (ec)
    throw StoreError("cannot create data dir " + (data_dir / "images").string() + ": " +
                     ec.message());
  const auto lock_path = data_dir / "diffusiond.lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw StoreError("cannot open lock file " + lock_path.string() + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK)
      throw StoreError("data dir " + data_dir.string() +
                       " is in use by another diffusiond (lock held on " + lock_path.string() +
                       "); stop it or use another --data-dir");
    throw StoreError("cannot lock " + lock_path.string() + ": " + std::strerror(err));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    [[maybe_unused]] auto n = ::write(fd, pid.data(), pid.size());
  }
  std::unique_ptr<JobStore> store(new JobStore(data_dir, fd));
  store->open_database();
  store->remove_orphan_image_dirs();
  remove_stale_temp_files(data_dir / "images");
  return store;
}

JobStore::JobStore(std::filesystem::path data_dir, int lock_fd)
    : data_dir_(std::move(data_dir)), lock_fd_(lock_fd) {}

JobStore::~JobStore() {
  reader_.reset();
  db_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

void JobStore::open_database() {
  const auto path = database_path();
  try {
    db_ = std::make_unique<SqliteDatabase>(path);
    db_->exec("PRAGMA busy_timeout=2000");  // a locked database is a quick start-up error
    // quick_check reads every page header: garbage or a truncated file fails here, not later.
    const std::string check = db_->query_text("PRAGMA quick_check");
    if (check != "ok") throw SqliteError(SQLITE_CORRUPT, "integrity check says: " + check);
    const std::string mode = db_->query_text("PRAGMA journal_mode=WAL");
    if (mode != "wal")
      throw SqliteError(SQLITE_BUSY, "cannot switch to WAL journal mode (got '" + mode + "')");
    db_->exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON");
    SqliteTransaction tx(*db_);  // BEGIN IMMEDIATE: fails with BUSY if another writer holds it
    db_->exec(kSchema);
    const std::string version = db_->query_text("SELECT value FROM meta WHERE key='schema'");
    if (version.empty()) {  // a new database: kSchema is the newest version
      db_->exec("INSERT INTO meta(key, value) VALUES('schema', '" + std::to_string(kSchemaVersion) +
                "')");
    } else {
      int from = 0;
      try {
        from = std::stoi(version);
      } catch (const std::exception&) {
      }
      if (from < 1 || from > kSchemaVersion)
        throw StoreError("job database " + path.string() + " has schema version " + version +
                         ", this diffusiond reads versions 1 to " + std::to_string(kSchemaVersion));
      for (int v = from; v < kSchemaVersion; ++v) db_->exec(kMigrations[v]);
      if (from != kSchemaVersion) {
        db_->exec("UPDATE meta SET value='" + std::to_string(kSchemaVersion) +
                  "' WHERE key='schema'");
        spdlog::info("job store: migrated {} from schema version {} to {}", path.string(), from,
                     kSchemaVersion);
      }
    }
    db_->exec(kIndexes);
    tx.commit();
    // From now on writes happen on the store writer thread, never under a lock shared with
    // devices or HTTP: another process holding SQLite's write lock for a while only delays them
    // (a write that still fails is final, see store_writer.h).
    db_->exec("PRAGMA busy_timeout=10000");
    reader_ = std::make_unique<SqliteDatabase>(path);
    reader_->exec("PRAGMA busy_timeout=2000");
  } catch (const SqliteError& e) {
    db_.reset();
    reader_.reset();
    throw StoreError(describe(e, path));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    db_inode_ = st.st_ino;
    db_device_ = st.st_dev;
  }
}

void JobStore::check_writable() const {
  const auto path = database_path();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw StoreError("job database " + path.string() + " is gone (" + std::strerror(errno) + ")");
  if (st.st_ino != db_inode_ || st.st_dev != db_device_)
    throw StoreError("job database " + path.string() + " was replaced by another file");
  if ((st.st_mode & S_IWUSR) == 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    throw StoreError("job database " + path.string() + " is no longer writable (mode " + mode +
                     ")");
  }
}

std::int64_t JobStore::max_seq() const {
  std::lock_guard lock(read_mu_);
  try {
    const std::string text = reader_->query_text("SELECT COALESCE(MAX(seq), 0) FROM jobs");
    return text.empty() ? 0 : std::stoll(text);
  } catch (const SqliteError& e) {
    throw StoreError(std::string("cannot read the job numbering: ") + e.what());
  }
}

void JobStore::remove_orphan_image_dirs() {
  std::lock_guard lock(mu_);
  std::error_code ec;
  SqliteStatement exists(db_->handle(), "SELECT 1 FROM jobs WHERE id = ?");
  std::vector<std::filesystem::path> orphans;
  for (const auto& name : list_directory(data_dir_ / "images", ec)) {
    exists.bind(1, name);
    const bool known = exists.step();
    exists.reset();
    if (!known) orphans.push_back(data_dir_ / "images" / name);
  }
  for (const auto& dir : orphans) remove_tree(dir, ec);
}

std::filesystem::path JobStore::relative_image_file(const std::string& job_id, int k) const {
  return std::filesystem::path("images") / job_id / (std::to_string(k) + ".png");
}

std::filesystem::path JobStore::image_file(const std::string& job_id, int k) const {
  return data_dir_ / relative_image_file(job_id, k);
}

void JobStore::prepare_image_dir(const std::string& job_id) const {
  std::error_code ec;
  std::filesystem::create_directories(data_dir_ / "images" / job_id, ec);
  if (ec)
    throw StoreError("cannot create " + (data_dir_ / "images" / job_id).string() + ": " +
                     ec.message());
}

void JobStore::write_images(const JobRecord& job, const std::vector<int>& images) {
  SqliteStatement upsert(db_->handle(),
                         "INSERT INTO images(job_id, idx, prompt, seed, status, device, steps, "
                         "attempts, error, file, started_ms, finished_ms, bytes, batch_size) "
                         "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id, idx) DO UPDATE "
                         "SET status=excluded.status, device=excluded.device, "
                         "attempts=excluded.attempts, error=excluded.error, file=excluded.file, "
                         "started_ms=excluded.started_ms, finished_ms=excluded.finished_ms, "
                         "bytes=excluded.bytes, batch_size=excluded.batch_size");
  for (int k : images) {
    const auto& image = job.view.images.at(static_cast<std::size_t>(k));
    const std::string file =
        image.has_file ? relative_image_file(job.view.id, image.index).string() : "";
    upsert.bind(1, job.view.id)
        .bind(2, std::int64_t{image.index})
        .bind(3, image.prompt)
        .bind(4, static_cast<std::int64_t>(image.seed))
        .bind(5, std::string(to_string(image.status)))
        .bind(6, image.device)
        .bind(7, std::int64_t{image.steps})
        .bind(8, std::int64_t{job.attempts.at(static_cast<std::size_t>(k))})
        .bind(9, image.error)
        .bind(10, file)
        .bind(11, image.started_ms)
        .bind(12, image.finished_ms)
        .bind(13, image.file_bytes)
        .bind(14, std::int64_t{image.batch_size});
    upsert.run();
  }
}

void JobStore::insert_locked(JobRecord& job) {
  const bool numbered = job.seq > 0;
  SqliteStatement insert(db_->handle(),
                         numbered ? "INSERT INTO jobs(id, status, priority, request, model, "
                                    "created_ms, started_ms, finished_ms, error, client, "
                                    "idem_key, idem_fp, seq) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
                                  : "INSERT INTO jobs(id, status, priority, request, model, "
                                    "created_ms, started_ms, finished_ms, error, client, "
                                    "idem_key, idem_fp) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)");
  insert.bind(1, job.view.id)
      .bind(2, std::string(to_string(job.view.status)))
      .bind(3, std::int64_t{job.view.request.priority})
      .bind(4, request_to_json(job.view.request).dump())
      .bind(5, job.view.model)
      .bind(6, job.view.created_ms)
      .bind(7, job.view.started_ms)
      .bind(8, job.view.finished_ms)
      .bind(9, job.view.error)
      .bind(10, job.client)
      .bind(12, job.fingerprint);
  if (!job.idempotency_key.empty()) insert.bind(11, job.idempotency_key);  // else NULL
  if (numbered) insert.bind(13, job.seq);
  insert.run();
  if (!numbered) job.seq = sqlite3_last_insert_rowid(db_->handle());
  std::vector<int> all(job.view.images.size());
  for (std::size_t k = 0; k < all.size(); ++k) all[k] = static_cast<int>(k);
  write_images(job, all);
}

void JobStore::update_locked(const JobRecord& job, const std::vector<int>& images) {
  SqliteStatement update(db_->handle(),
                         "UPDATE jobs SET status=?, started_ms=?, finished_ms=?, error=? "
                         "WHERE id=?");
  update.bind(1, std::string(to_string(job.view.status)))
      .bind(2, job.view.started_ms)
      .bind(3, job.view.finished_ms)
      .bind(4, job.view.error)
      .bind(5, job.view.id);
  update.run();
  if (sqlite3_changes(db_->handle()) != 1)
    throw StoreError("cannot update job " + job.view.id + ": no such job in the store");
  write_images(job, images);
}

void JobStore::insert(JobRecord& job) {
  std::lock_guard lock(mu_);
  try {
    SqliteTransaction tx(*db_);
    insert_locked(job);
    tx.commit();
  } catch (const SqliteError& e) {
    throw StoreError("cannot store job " + job.view.id + ": " + e.what());
  }
}

void JobStore::update(const JobRecord& job, const std::vector<int>& images) {
  std::lock_guard lock(mu_);
  try {
    SqliteTransaction tx(*db_);
    update_locked(job, images);
    tx.commit();
  } catch (const SqliteError& e) {
    throw StoreError("cannot update job " + job.view.id + ": " + e.what());
  }
}

void JobStore::apply(std::vector<Write>& batch) {
  if (batch.empty()) return;
  std::lock_guard lock(mu_);
  check_writable();
  try {
    SqliteTransaction tx(*db_);
    for (auto& write : batch) {
      if (write.insert)
        insert_locked(write.job);
      else
        update_locked(write.job, write.images);
    }
    tx.commit();
  } catch (const SqliteError& e) {
    throw StoreError("cannot write " + std::to_string(batch.size()) + " change(s) to " +
                         database_path().string() + ": " + e.what(),
                     e.code() == SQLITE_FULL);
  }
}

std::vector<JobRecord> JobStore::select_jobs(SqliteDatabase& db,
                                             const std::string& where_order_limit,
                                             const std::vector<std::string>& params) const {
  SqliteStatement jobs(db.handle(),
                       std::string("SELECT ") + kJobColumns + " FROM jobs " + where_order_limit);
  for (std::size_t i = 0; i < params.size(); ++i) jobs.bind(static_cast<int>(i) + 1, params[i]);
  SqliteStatement images(db.handle(), std::string("SELECT ") + kImageColumns +
                                          " FROM images WHERE job_id=? ORDER BY idx");
  std::vector<JobRecord> result;
  while (jobs.step()) {
    JobRecord job;
    job.seq = jobs.int64(0);
    job.view.id = jobs.text(1);
    job.view.status = status_from_text(jobs.text(2), "job " + job.view.id);
    try {
      job.view.request = request_from_json(nlohmann::json::parse(jobs.text(3)));
    } catch (const std::exception& e) {
      throw StoreError("job store: job " + job.view.id + " has an unreadable request: " + e.what());
    }
    job.view.model = jobs.text(4);
    job.view.created_ms = jobs.int64(5);
    job.view.started_ms = jobs.int64(6);
    job.view.finished_ms = jobs.int64(7);
    job.view.error = jobs.text(8);
    job.client = jobs.text(9);
    job.idempotency_key = jobs.text(10);
    job.fingerprint = jobs.text(11);
    images.bind(1, job.view.id);
    while (images.step()) {
      ImageView image;
      image.index = static_cast<int>(images.int64(0));
      image.prompt = images.text(1);
      image.seed = static_cast<std::uint64_t>(images.int64(2));
      image.status = status_from_text(images.text(3), "image of job " + job.view.id);
      image.device = images.text(4);
      image.steps = static_cast<int>(images.int64(5));
      job.attempts.push_back(static_cast<int>(images.int64(6)));
      image.error = images.text(7);
      image.has_file = !images.text(8).empty();
      image.started_ms = images.int64(9);
      image.finished_ms = images.int64(10);
      image.file_bytes = images.int64(11);
      image.batch_size = static_cast<int>(images.int64(12));
      image.step = image.status == ImageStatus::done ? image.steps : 0;
      job.view.images.push_back(std::move(image));
    }
    images.reset();
    result.push_back(std::move(job));
  }
  return result;
}

std::optional<JobRecord> JobStore::load(const std::string& id) const {
  std::lock_guard lock(read_mu_);
  try {
    auto jobs = select_jobs(*reader_, "WHERE id=?", {id});
    if (jobs.empty()) return std::nullopt;
    return std::move(jobs.front());
  } catch (const SqliteError& e) {
    throw StoreError("cannot read job " + id + ": " + e.what());
  }
}

std::optional<JobRecord> JobStore::find_by_idempotency_key(const std::string& client,
                                                           const std::string& key) const {
  std::lock_guard lock(read_mu_);
  try {
    auto jobs = select_jobs(*reader_, "WHERE client=? AND idem_key=?", {client, key});
    if (jobs.empty()) return std::nullopt;
    return std::move(jobs.front());
  } catch (const SqliteError& e) {
    throw StoreError("cannot look up an idempotency key: " + std::string(e.what()));
  }
}

std::vector<JobRecord> JobStore::list(std::optional<JobStatus> status, int limit,
                                      std::int64_t before_seq) const {
  std::lock_guard lock(read_mu_);
  const std::string tail = " ORDER BY seq DESC LIMIT " + std::to_string(std::max(limit, 0));
  const std::string older = before_seq > 0 ? "seq < " + std::to_string(before_seq) : "1";
  try {
    if (status)
      return select_jobs(*reader_, "WHERE status=? AND " + older + tail, {to_string(*status)});
    return select_jobs(*reader_, "WHERE " + older + tail, {});
  } catch (const SqliteError& e) {
    throw StoreError(std::string("cannot list jobs: ") + e.what());
  }
}

std::map<JobStatus, std::int64_t> JobStore::count_by_status() const {
  std::lock_guard lock(read_mu_);
  std::map<JobStatus, std::int64_t> counts;
  for (JobStatus s : {JobStatus::queued, JobStatus::running, JobStatus::done, JobStatus::failed,
                      JobStatus::cancelled})
    counts[s] = 0;
  try {
    SqliteStatement count(reader_->handle(), "SELECT status, COUNT(*) FROM jobs GROUP BY status");
    while (count.step()) counts[status_from_text(count.text(0), "jobs")] = count.int64(1);
  } catch (const SqliteError& e) {
    throw StoreError(std::string("cannot count jobs: ") + e.what());
  }
  return counts;
}

std::vector<JobRecord> JobStore::recover() {
  std::lock_guard lock(mu_);
  try {
    SqliteTransaction tx(*db_);
    db_->exec(
        "UPDATE images SET status='cancelled', finished_ms=started_ms "
        "WHERE status IN ('queued','running') AND job_id IN "
        "(SELECT id FROM jobs WHERE status IN ('done','failed','cancelled'))");
    db_->exec("UPDATE images SET status='queued', device='', started_ms=0 WHERE status='running'");
    tx.commit();
    return select_jobs(*db_, "WHERE status IN ('queued','running') ORDER BY seq", {});
  } catch (const SqliteError& e) {
    throw StoreError(std::string("cannot recover unfinished jobs: ") + e.what());
  }
}

PruneResult JobStore::prune(const RetentionPolicy& policy, std::int64_t now_ms) {
  std::lock_guard lock(mu_);
  PruneResult result;
  std::vector<std::string> doomed;
  try {
    // Finished jobs with nothing left to run, newest first, with their files and bytes.
    SqliteStatement finished(
        db_->handle(),
        "SELECT j.id, j.finished_ms, (SELECT COUNT(*) FROM images i WHERE i.job_id=j.id AND "
        "i.file<>''), (SELECT COALESCE(SUM(i.bytes), 0) FROM images i WHERE i.job_id=j.id AND "
        "i.file<>'') FROM jobs j WHERE j.status IN ('done','failed','cancelled') AND NOT EXISTS "
        "(SELECT 1 FROM images i WHERE i.job_id=j.id AND i.status IN ('queued','running')) "
        "ORDER BY j.finished_ms DESC, j.seq DESC");
    std::int64_t kept_files = 0;
    std::int64_t kept_bytes = 0;
    if (policy.max_images > 0 || policy.max_bytes > 0) {
      // Files of unfinished jobs count against the caps but are never deleted.
      SqliteStatement active(db_->handle(),
                             "SELECT COUNT(*), COALESCE(SUM(i.bytes), 0) FROM images i JOIN jobs j "
                             "ON i.job_id=j.id WHERE i.file<>'' AND (j.status IN "
                             "('queued','running') OR EXISTS (SELECT 1 FROM images k WHERE "
                             "k.job_id=j.id AND k.status IN ('queued','running')))");
      if (active.step()) {
        kept_files = active.int64(0);
        kept_bytes = active.int64(1);
      }
    }
    const std::int64_t cutoff =
        policy.keep_days > 0 ? now_ms - std::int64_t{policy.keep_days} * 86'400'000 : 0;
    bool cap_reached = false;  // once a job does not fit, every older one goes too
    while (finished.step()) {
      const std::int64_t files = finished.int64(2);
      const std::int64_t bytes = finished.int64(3);
      const bool too_old = policy.keep_days > 0 && finished.int64(1) < cutoff;
      cap_reached = cap_reached ||
                    (policy.max_images > 0 && kept_files + files > policy.max_images) ||
                    (policy.max_bytes > 0 && kept_bytes + bytes > policy.max_bytes);
      if (too_old || cap_reached) {
        doomed.push_back(finished.text(0));
        result.files_deleted += static_cast<int>(files);
        result.bytes_deleted += bytes;
      } else {
        kept_files += files;
        kept_bytes += bytes;
      }
    }
    if (!doomed.empty()) {
      SqliteTransaction tx(*db_);
      SqliteStatement remove(db_->handle(), "DELETE FROM jobs WHERE id=?");
      for (const auto& id : doomed) {
        remove.bind(1, id);
        remove.run();
      }
      tx.commit();
    }
  } catch (const SqliteError& e) {
    throw StoreError(std::string("cannot apply retention: ") + e.what());
  }
  for (const auto& id : doomed) {
    std::error_code ec;
    remove_tree(data_dir_ / "images" / id, ec);
  }
  result.jobs_deleted = static_cast<int>(doomed.size());
  return result;
}

}  // namespace diffusiond
