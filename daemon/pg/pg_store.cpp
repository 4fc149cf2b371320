#include "daemon/pg/pg_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <stdexcept>

#include "daemon/api/json/request_json.h"

namespace diffusiond::pg {

namespace {

// The advisory lock key every daemon takes while it creates or migrates the schema.
constexpr std::int64_t kSchemaLock = 0x64696666757369;  // "diffusi"

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS diffusiond_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  seq BIGSERIAL UNIQUE,
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  priority INTEGER NOT NULL,
  request TEXT NOT NULL,
  model TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  started_ms BIGINT NOT NULL DEFAULT 0,
  finished_ms BIGINT NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  client TEXT NOT NULL DEFAULT '',
  idem_key TEXT,
  idem_fp TEXT NOT NULL DEFAULT '',
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  submitted_by TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs(client, idem_key)
  WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS images(
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  prompt TEXT NOT NULL,
  seed BIGINT NOT NULL,
  status TEXT NOT NULL,
  priority INTEGER NOT NULL,
  seq BIGINT NOT NULL,
  model TEXT NOT NULL,
  device TEXT NOT NULL DEFAULT '',
  owner TEXT,
  lease_expires_at TIMESTAMPTZ,
  queued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  step INTEGER NOT NULL DEFAULT 0,
  steps INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  png BYTEA,
  bytes BIGINT NOT NULL DEFAULT 0,
  batch_size INTEGER,
  started_ms BIGINT NOT NULL DEFAULT 0,
  finished_ms BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY(job_id, idx));
CREATE INDEX IF NOT EXISTS images_queue ON images(priority DESC, seq, idx) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS images_leases ON images(lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS images_owner ON images(owner) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS daemons(
  id TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  url TEXT NOT NULL,
  devices TEXT NOT NULL,
  running INTEGER NOT NULL DEFAULT 0,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now());
)sql";

// From version N to N + 1 (index N), run in the schema transaction with the version bump.
constexpr const char* kMigrations[] = {
    "",  // (version 0 does not exist)
};

constexpr const char* kJobColumns =
    "seq, id, status, request, model, created_ms, started_ms, finished_ms, error, client, "
    "COALESCE(idem_key, ''), idem_fp";
constexpr const char* kImageColumns =
    "job_id, idx, prompt, seed, status, device, step, steps, attempts, error, (png IS NOT NULL), "
    "bytes, started_ms, finished_ms, COALESCE(batch_size, 0)";

template <class Status, class Parse>
Status parse_or_throw(const std::string& text, Parse parse, const std::string& where) {
  auto s = parse(text);
  if (!s) throw std::runtime_error("job store: unknown status '" + text + "' in " + where);
  return *s;
}

// Runs fn inside BEGIN/COMMIT; rolls back on an exception (which it rethrows).
template <class Fn>
auto in_transaction(PgConnection& db, Fn fn) {
  db.exec("BEGIN");
  try {
    if constexpr (std::is_void_v<decltype(fn())>) {
      fn();
      db.exec("COMMIT");
    } else {
      auto result = fn();
      db.exec("COMMIT");
      return result;
    }
  } catch (...) {
    try {
      if (db.ok()) db.exec("ROLLBACK");
    } catch (...) {
    }
    throw;
  }
}

std::vector<JobRecord> select_jobs(PgConnection& db, const std::string& where_order_limit,
                                   const std::vector<PgParam>& params) {
  auto jobs =
      db.exec(std::string("SELECT ") + kJobColumns + " FROM jobs " + where_order_limit, params);
  std::vector<JobRecord> out;
  if (jobs.rows() == 0) return out;
  std::map<std::string, std::size_t> index;
  std::string ids = "{";
  for (int r = 0; r < jobs.rows(); ++r) {
    JobRecord job;
    job.seq = jobs.int64(r, 0);
    job.view.id = jobs.text(r, 1);
    job.view.status = parse_or_throw<JobStatus>(jobs.text(r, 2), parse_job_status, job.view.id);
    try {
      job.view.request = request_from_json(nlohmann::json::parse(jobs.text(r, 3)));
    } catch (const std::exception& e) {
      throw std::runtime_error("job store: job " + job.view.id +
                               " has an unreadable request: " + e.what());
    }
    job.view.model = jobs.text(r, 4);
    job.view.created_ms = jobs.int64(r, 5);
    job.view.started_ms = jobs.int64(r, 6);
    job.view.finished_ms = jobs.int64(r, 7);
    job.view.error = jobs.text(r, 8);
    job.client = jobs.text(r, 9);
    job.idempotency_key = jobs.text(r, 10);
    job.fingerprint = jobs.text(r, 11);
    index[job.view.id] = out.size();
    ids += (r ? "," : "") + std::string("\"") + job.view.id + "\"";  // ids are [A-Za-z0-9_-]
    out.push_back(std::move(job));
  }
  ids += "}";
  auto images = db.exec(std::string("SELECT ") + kImageColumns +
                            " FROM images WHERE job_id = ANY($1::text[]) ORDER BY job_id, idx",
                        {ids});
  for (int r = 0; r < images.rows(); ++r) {
    auto& job = out[index.at(images.text(r, 0))];
    ImageView image;
    image.index = static_cast<int>(images.int64(r, 1));
    image.prompt = images.text(r, 2);
    image.seed = static_cast<std::uint64_t>(images.int64(r, 3));
    image.status = parse_or_throw<ImageStatus>(images.text(r, 4), parse_job_status, job.view.id);
    image.device = images.text(r, 5);
    image.step = static_cast<int>(images.int64(r, 6));
    image.steps = static_cast<int>(images.int64(r, 7));
    job.attempts.push_back(static_cast<int>(images.int64(r, 8)));
    image.error = images.text(r, 9);
    image.has_file = images.boolean(r, 10);
    image.file_bytes = images.int64(r, 11);
    image.started_ms = images.int64(r, 12);
    image.finished_ms = images.int64(r, 13);
    image.batch_size = static_cast<int>(images.int64(r, 14));
    job.view.images.push_back(std::move(image));
  }
  return out;
}

// Under the transaction: the job's status after its images changed (job.h's rule), with its
// start, end and first error. Locks the job row (after the image rows: the lock order).
void recompute_job(PgConnection& db, const std::string& id) {
  auto job = db.exec(
      "SELECT status, started_ms, finished_ms, error FROM jobs WHERE id = $1 FOR UPDATE", {id});
  if (job.rows() == 0) return;
  const JobStatus current = parse_or_throw<JobStatus>(job.text(0, 0), parse_job_status, id);
  auto rows = db.exec("SELECT idx, status, error FROM images WHERE job_id = $1 ORDER BY idx", {id});
  std::vector<ImageView> images;
  std::string first_error;
  for (int r = 0; r < rows.rows(); ++r) {
    ImageView image;
    image.index = static_cast<int>(rows.int64(r, 0));
    image.status = parse_or_throw<ImageStatus>(rows.text(r, 1), parse_job_status, id);
    if (image.status == ImageStatus::failed && first_error.empty())
      first_error = "image " + std::to_string(image.index) + ": " + rows.text(r, 2);
    images.push_back(image);
  }
  const JobStatus next = next_job_status(current, images);
  if (next == current) return;
  check_job_transition(current, next, id);
  const auto now = unix_ms_now();
  const std::int64_t started = job.int64(0, 1) ? job.int64(0, 1) : now;
  const std::int64_t finished = is_terminal(next) ? now : 0;
  const std::string error =
      next == JobStatus::failed && job.text(0, 3).empty() ? first_error : job.text(0, 3);
  db.exec(
      "UPDATE jobs SET status = $2, started_ms = $3, finished_ms = $4, error = $5 WHERE id = $1",
      {id, std::string(to_string(next)), started, finished, error});
}

std::string text_array(const std::vector<std::string>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    out += i ? ",\"" : "\"";
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

}  // namespace

void use_fast_commits(PgConnection& db) {
  db.exec("SET synchronous_commit = off");
}

void open_schema(PgConnection& db) {
  db.exec("SELECT pg_advisory_lock($1)", {kSchemaLock});
  try {
    in_transaction(db, [&] {
      auto exists = db.exec("SELECT to_regclass('diffusiond_meta') IS NOT NULL");
      std::string version;
      if (exists.boolean(0, 0)) {
        auto v = db.exec("SELECT value FROM diffusiond_meta WHERE key = 'schema'");
        if (v.rows() > 0) version = v.text(0, 0);
      }
      if (version.empty()) {
        db.exec_script(kSchema);
        db.exec("INSERT INTO diffusiond_meta(key, value) VALUES('schema', $1)",
                {std::to_string(kSchemaVersion)});
        spdlog::info("job store: created the PostgreSQL schema (version {})", kSchemaVersion);
        return;
      }
      int from = 0;
      try {
        from = std::stoi(version);
      } catch (const std::exception&) {
      }
      if (from < 1 || from > kSchemaVersion)
        throw std::runtime_error("the PostgreSQL job store has schema version " + version +
                                 ", this diffusiond reads versions 1 to " +
                                 std::to_string(kSchemaVersion) + " (upgrade this daemon)");
      for (int v = from; v < kSchemaVersion; ++v) db.exec_script(kMigrations[v]);
      if (from != kSchemaVersion) {
        db.exec("UPDATE diffusiond_meta SET value = $1 WHERE key = 'schema'",
                {std::to_string(kSchemaVersion)});
        spdlog::info("job store: migrated the PostgreSQL schema from version {} to {}", from,
                     kSchemaVersion);
      }
    });
  } catch (...) {
    try {
      db.exec("SELECT pg_advisory_unlock($1)", {kSchemaLock});
    } catch (...) {
    }
    throw;
  }
  db.exec("SELECT pg_advisory_unlock($1)", {kSchemaLock});
}

void insert_job(PgConnection& db, JobRecord& job, const std::string& daemon_id) {
  in_transaction(db, [&] {
    auto r = db.exec(
        "INSERT INTO jobs(id, status, priority, request, model, created_ms, client, idem_key, "
        "idem_fp, submitted_by) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING seq",
        {job.view.id, std::string(to_string(job.view.status)), job.view.request.priority,
         request_to_json(job.view.request).dump(), job.view.model, job.view.created_ms, job.client,
         job.idempotency_key.empty() ? PgParam() : PgParam(job.idempotency_key), job.fingerprint,
         daemon_id});
    job.seq = r.int64(0, 0);
    for (const auto& image : job.view.images)
      db.exec(
          "INSERT INTO images(job_id, idx, prompt, seed, status, priority, seq, model, steps) "
          "VALUES($1,$2,$3,$4,'queued',$5,$6,$7,$8)",
          {job.view.id, image.index, image.prompt, static_cast<std::int64_t>(image.seed),
           job.view.request.priority, job.seq, job.view.model, job.view.request.steps});
    db.exec(std::string("NOTIFY ") + kQueueChannel);
  });
}

std::optional<JobRecord> load_job(PgConnection& db, const std::string& id) {
  auto jobs = select_jobs(db, "WHERE id = $1", {id});
  if (jobs.empty()) return std::nullopt;
  return std::move(jobs.front());
}

std::vector<JobRecord> load_jobs(PgConnection& db, const std::vector<std::string>& ids) {
  if (ids.empty()) return {};
  return select_jobs(db, "WHERE id = ANY($1::text[])", {text_array(ids)});
}

std::optional<JobRecord> find_by_idempotency_key(PgConnection& db, const std::string& client,
                                                 const std::string& key) {
  auto jobs = select_jobs(db, "WHERE client = $1 AND idem_key = $2", {client, key});
  if (jobs.empty()) return std::nullopt;
  return std::move(jobs.front());
}

std::vector<JobRecord> list_jobs(PgConnection& db, std::optional<JobStatus> status, int limit,
                                 std::int64_t before_seq) {
  std::vector<PgParam> params{std::int64_t{limit}, before_seq};
  std::string where = "WHERE ($2::bigint = 0 OR seq < $2::bigint)";
  if (status) {
    where += " AND status = $3";
    params.emplace_back(std::string(to_string(*status)));
  }
  return select_jobs(db, where + " ORDER BY seq DESC LIMIT $1", params);
}

std::vector<JobRecord> client_jobs(PgConnection& db, const std::string& client) {
  return select_jobs(
      db, "WHERE client = $1 AND status IN ('queued', 'running') ORDER BY seq LIMIT 1000",
      {client});
}

std::optional<std::string> image_png(PgConnection& db, const std::string& id, int k) {
  auto r =
      db.exec("SELECT png FROM images WHERE job_id = $1 AND idx = $2 AND png IS NOT NULL", {id, k});
  if (r.rows() == 0) return std::nullopt;
  return r.bytea(0, 0);
}

QueueCounts queue_counts(PgConnection& db) {
  auto r = db.exec(
      "SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = "
      "'running') FROM images WHERE status IN ('queued', 'running')");
  return {r.int64(0, 0), r.int64(0, 1)};
}

std::vector<ClaimedTask> claim(PgConnection& db, const std::string& daemon_id,
                               const std::vector<std::string>& models, int n,
                               std::int64_t lease_ms) {
  if (n <= 0) return {};
  return in_transaction(db, [&] {
    auto r = db.exec(
        "WITH picked AS (SELECT job_id, idx FROM images WHERE status = 'queued' AND model = "
        "ANY($2::text[]) ORDER BY priority DESC, seq, idx LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "UPDATE images i SET status = 'running', owner = $1, attempts = i.attempts + 1, step = 0, "
        "lease_expires_at = now() + $4::bigint * interval '1 millisecond', error = '' "
        "FROM picked, jobs j WHERE i.job_id = picked.job_id AND i.idx = picked.idx AND "
        "j.id = i.job_id RETURNING i.job_id, i.idx, i.attempts, i.priority, i.seq, i.model, "
        "j.request, (extract(epoch FROM now() - i.queued_at) * 1000)::bigint",
        {daemon_id, text_array(models), n, lease_ms});
    std::vector<ClaimedTask> out;
    std::set<std::string> jobs;
    for (int row = 0; row < r.rows(); ++row) {
      ClaimedTask t;
      t.job_id = r.text(row, 0);
      t.image = static_cast<int>(r.int64(row, 1));
      t.attempt = static_cast<int>(r.int64(row, 2));
      t.priority = static_cast<int>(r.int64(row, 3));
      t.seq = r.int64(row, 4);
      t.model = r.text(row, 5);
      t.request = request_from_json(nlohmann::json::parse(r.text(row, 6)));
      t.waited_ms = r.int64(row, 7);
      jobs.insert(t.job_id);
      out.push_back(std::move(t));
    }
    for (const auto& id : jobs) recompute_job(db, id);  // sorted: one lock order for all
    std::sort(out.begin(), out.end(), [](const ClaimedTask& a, const ClaimedTask& b) {
      if (a.priority != b.priority) return a.priority > b.priority;
      if (a.seq != b.seq) return a.seq < b.seq;
      return a.image < b.image;
    });
    return out;
  });
}

std::vector<LeaseState> renew(PgConnection& db, const std::string& daemon_id, std::int64_t lease_ms,
                              const std::vector<std::string>& job_ids,
                              const std::vector<int>& images) {
  if (job_ids.empty()) return {};
  std::vector<std::string> idx;
  for (int k : images) idx.push_back(std::to_string(k));
  auto r = db.exec(
      "UPDATE images i SET lease_expires_at = now() + $2::bigint * interval '1 millisecond' FROM "
      "jobs j, "
      "unnest($3::text[], $4::int[]) AS mine(job_id, idx) "
      "WHERE i.owner = $1 AND i.status = 'running' AND j.id = i.job_id AND i.job_id = "
      "mine.job_id AND i.idx = mine.idx "
      "RETURNING i.job_id, i.idx, i.attempts, j.cancel_requested",
      {daemon_id, lease_ms, text_array(job_ids), text_array(idx)});
  std::vector<LeaseState> out;
  for (int row = 0; row < r.rows(); ++row)
    out.push_back({r.text(row, 0), static_cast<int>(r.int64(row, 1)),
                   static_cast<int>(r.int64(row, 2)), r.boolean(row, 3)});
  return out;
}

int requeue_expired(PgConnection& db, int max_attempts) {
  return in_transaction(db, [&] {
    auto r = db.exec(
        "WITH expired AS (SELECT job_id, idx FROM images WHERE status = 'running' AND "
        "lease_expires_at < now() FOR UPDATE SKIP LOCKED) "
        "UPDATE images i SET "
        "status = CASE WHEN j.cancel_requested THEN 'cancelled' WHEN i.attempts < $1 THEN "
        "'queued' ELSE 'failed' END, "
        "error = CASE WHEN j.cancel_requested THEN '' WHEN i.attempts < $1 THEN 'the daemon ' || "
        "i.owner || ' running it stopped renewing its lease; queued again' ELSE "
        "'attempts_exhausted: the daemon ' || i.owner || ' running it stopped renewing its "
        "lease, ' || i.attempts || ' time(s); it is not run again' END, "
        "finished_ms = CASE WHEN j.cancel_requested OR i.attempts >= $1 THEN $2::bigint ELSE 0 "
        "END, "
        "started_ms = CASE WHEN j.cancel_requested OR i.attempts >= $1 THEN i.started_ms ELSE 0 "
        "END, owner = NULL, lease_expires_at = NULL, device = CASE WHEN i.attempts < $1 THEN '' "
        "ELSE i.device END, step = 0, queued_at = now() "
        "FROM expired, jobs j WHERE i.job_id = expired.job_id AND i.idx = expired.idx AND "
        "j.id = i.job_id RETURNING i.job_id, i.idx, i.status",
        {max_attempts, unix_ms_now()});
    std::set<std::string> jobs;
    int queued = 0;
    for (int row = 0; row < r.rows(); ++row) {
      jobs.insert(r.text(row, 0));
      if (r.text(row, 2) == "queued") ++queued;
      spdlog::warn("job {} image {}: lease expired; {}", r.text(row, 0), r.int64(row, 1),
                   r.text(row, 2) == "queued" ? "queued again" : r.text(row, 2));
    }
    for (const auto& id : jobs) recompute_job(db, id);
    if (queued > 0) db.exec(std::string("NOTIFY ") + kQueueChannel);
    return queued;
  });
}

bool start_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
                 int attempt, const std::string& device, std::int64_t started_ms) {
  auto r = db.exec(
      "UPDATE images SET device = $5, started_ms = $6 WHERE job_id = $1 AND idx = $2 AND "
      "owner = $3 AND attempts = $4 AND status = 'running'",
      {job_id, k, daemon_id, attempt, device, started_ms});
  return r.affected() == 1;
}

bool progress_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id,
                    int k, int attempt, int step, int steps, int batch_size) {
  auto r = db.exec(
      "UPDATE images SET step = $5, steps = $6, batch_size = $7 WHERE job_id = $1 AND idx = $2 "
      "AND owner = $3 AND attempts = $4 AND status = 'running'",
      {job_id, k, daemon_id, attempt, step, steps, batch_size});
  return r.affected() == 1;
}

bool finish_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
                  int attempt, const std::string& png, std::int64_t finished_ms, int batch_size) {
  return in_transaction(db, [&] {
    db.exec("SET LOCAL synchronous_commit = on");  // a result is durable (see pg_store.h)
    auto r = db.exec(
        "UPDATE images SET status = 'done', png = $5, bytes = $6, finished_ms = $7, "
        "step = (SELECT (request::json->>'steps')::int FROM jobs WHERE id = $1), "
        "steps = (SELECT (request::json->>'steps')::int FROM jobs WHERE id = $1), "
        "batch_size = CASE WHEN $8 > 0 THEN $8 ELSE batch_size END, "
        "error = '', owner = NULL, lease_expires_at = NULL WHERE job_id = $1 AND idx = $2 AND "
        "owner = $3 AND attempts = $4 AND status = 'running'",
        {job_id, k, daemon_id, attempt, PgParam::bytes(png), static_cast<std::int64_t>(png.size()),
         finished_ms, batch_size});
    if (r.affected() != 1) return false;
    recompute_job(db, job_id);
    db.exec(std::string("NOTIFY ") + kEventsChannel);
    return true;
  });
}

bool end_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
               int attempt, ImageOutcome outcome, const std::string& error) {
  return in_transaction(db, [&] {
    db.exec("SET LOCAL synchronous_commit = on");
    const char* set = "";
    switch (outcome) {
      case ImageOutcome::failed:
        set = "status = 'failed', error = $5, finished_ms = $6::bigint";
        break;
      case ImageOutcome::cancelled:
        set = "status = 'cancelled', error = $5, finished_ms = $6::bigint";
        break;
      case ImageOutcome::retry:
        set =
            "status = 'queued', error = $5, device = '', step = 0, started_ms = 0, "
            "queued_at = now(), finished_ms = $6::bigint * 0";
        break;
      case ImageOutcome::give_back:
        set =
            "status = 'queued', error = $5, device = '', step = 0, started_ms = 0, "
            "queued_at = now(), attempts = GREATEST(attempts - 1, 0), finished_ms = $6::bigint * 0";
        break;
    }
    auto r = db.exec(std::string("UPDATE images SET ") + set +
                         ", owner = NULL, lease_expires_at = NULL WHERE job_id = $1 AND idx = $2 "
                         "AND owner = $3 AND attempts = $4 AND status = 'running'",
                     {job_id, k, daemon_id, attempt, error, unix_ms_now()});
    if (r.affected() != 1) return false;
    recompute_job(db, job_id);
    db.exec(std::string("NOTIFY ") + kEventsChannel);
    if (outcome == ImageOutcome::retry || outcome == ImageOutcome::give_back)
      db.exec(std::string("NOTIFY ") + kQueueChannel);
    return true;
  });
}

std::optional<bool> cancel_job(PgConnection& db, const std::string& id) {
  return in_transaction(db, [&]() -> std::optional<bool> {
    db.exec("SELECT 1 FROM images WHERE job_id = $1 ORDER BY idx FOR UPDATE", {id});
    auto job = db.exec("SELECT status FROM jobs WHERE id = $1 FOR UPDATE", {id});
    if (job.rows() == 0) return std::nullopt;
    const JobStatus status = parse_or_throw<JobStatus>(job.text(0, 0), parse_job_status, id);
    if (is_terminal(status)) return false;
    check_job_transition(status, JobStatus::cancelled, id);
    const auto now = unix_ms_now();
    db.exec(
        "UPDATE images SET status = 'cancelled', finished_ms = $2 WHERE job_id = $1 AND status = "
        "'queued'",
        {id, now});
    db.exec(
        "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_ms = $2, "
        "started_ms = CASE WHEN started_ms = 0 THEN $2 ELSE started_ms END WHERE id = $1",
        {id, now});
    return true;
  });
}

void heartbeat(PgConnection& db, const DaemonRow& self) {
  db.exec(
      "INSERT INTO daemons(id, host, url, devices, running, started_at, heartbeat_at) "
      "VALUES($1,$2,$3,$4,$5, to_timestamp($6::bigint / 1000.0), now()) ON CONFLICT(id) DO UPDATE "
      "SET "
      "host = excluded.host, url = excluded.url, devices = excluded.devices, running = "
      "excluded.running, heartbeat_at = now()",
      {self.id, self.host, self.url, self.devices_json, self.running, self.started_ms});
}

void remove_daemon(PgConnection& db, const std::string& daemon_id) {
  db.exec("DELETE FROM daemons WHERE id = $1", {daemon_id});
}

std::vector<DaemonRow> daemons(PgConnection& db) {
  auto r = db.exec(
      "SELECT id, host, url, devices, running, (extract(epoch FROM started_at) * 1000)::bigint, "
      "(extract(epoch FROM heartbeat_at) * 1000)::bigint, "
      "(extract(epoch FROM now() - heartbeat_at) * 1000)::bigint FROM daemons ORDER BY id");
  std::vector<DaemonRow> out;
  for (int row = 0; row < r.rows(); ++row) {
    DaemonRow d;
    d.id = r.text(row, 0);
    d.host = r.text(row, 1);
    d.url = r.text(row, 2);
    d.devices_json = r.text(row, 3);
    d.running = static_cast<int>(r.int64(row, 4));
    d.started_ms = r.int64(row, 5);
    d.heartbeat_ms = r.int64(row, 6);
    d.heartbeat_age_ms = r.int64(row, 7);
    out.push_back(std::move(d));
  }
  return out;
}

std::map<JobStatus, std::int64_t> count_by_status(PgConnection& db) {
  std::map<JobStatus, std::int64_t> out;
  auto r = db.exec("SELECT status, count(*) FROM jobs GROUP BY status");
  for (int row = 0; row < r.rows(); ++row)
    if (auto s = parse_job_status(r.text(row, 0))) out[*s] = r.int64(row, 1);
  return out;
}

int prune(PgConnection& db, int keep_days, int max_images, std::int64_t max_bytes,
          std::int64_t now_ms) {
  // Finished jobs without a queued or running image, newest first, with the running totals of
  // the images and bytes kept by them and every newer one.
  auto r = db.exec(
      "WITH finished AS (SELECT j.id, j.seq, j.finished_ms, "
      "sum(count(i.idx)) OVER (ORDER BY j.seq DESC) AS images_upto, "
      "sum(sum(i.bytes)) OVER (ORDER BY j.seq DESC) AS bytes_upto FROM jobs j JOIN images i ON "
      "i.job_id = j.id WHERE j.status IN ('done', 'failed', 'cancelled') AND NOT EXISTS (SELECT 1 "
      "FROM images q WHERE q.job_id = j.id AND q.status IN ('queued', 'running')) GROUP BY j.id, "
      "j.seq, j.finished_ms) "
      "DELETE FROM jobs WHERE id IN (SELECT id FROM finished WHERE ($1 > 0 AND finished_ms < "
      "$4::bigint - "
      "$1::bigint * 86400000) OR ($2 > 0 AND images_upto > $2) OR ($3::bigint > 0 AND bytes_upto > "
      "$3::bigint))",
      {keep_days, max_images, max_bytes, now_ms});
  return r.affected();
}

}  // namespace diffusiond::pg
