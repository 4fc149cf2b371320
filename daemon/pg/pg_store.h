// The PostgreSQL job store of a fleet (`--store postgresql://...`): the same job model as the
// SQLite store (daemon/job_store.h), shared by every daemon pointed at the database. The queue
// is the images table: a daemon claims queued images for its idle devices (claim(), FOR UPDATE
// SKIP LOCKED, priority then submission order), holds a lease on each (lease_expires_at,
// renewed by renew()), and writes its results fenced by (owner, attempt): a daemon whose lease
// expired and whose image another daemon took over cannot complete it any more
// (finish_image() returns false), so an image is done at most once. requeue_expired() (run by
// every daemon) puts images whose lease expired back in the queue, or fails them once their
// attempts are spent. PNGs live in images.png (bytea), so any daemon serves any image.
// Schema: versioned (diffusiond_meta), created or migrated by open_schema() under an advisory
// lock, so daemons starting together do not race.
// Job status: every change of an image recomputes its job's status in the same transaction
// (job.h's next_job_status under the job row's lock). Lock order: image rows, then the job row.
// Owner: ClusterService (daemon/pg/cluster_service.h) and `diffusiond status`. Thread-safety:
// stateless; every method runs on the connection it is given (one thread per connection).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "daemon/job.h"
#include "daemon/pg/pg_connection.h"

namespace diffusiond::pg {

constexpr int kSchemaVersion = 1;
constexpr const char* kQueueChannel = "diffusiond_queue";    // NOTIFY: images were queued
constexpr const char* kEventsChannel = "diffusiond_events";  // NOTIFY: an image ended

// Durability: a job (insert_job), a cancel and an image's end (finish_image, end_image) are
// committed durably before they return. Claims, lease renewals, re-queues, starts, progress and
// the daemons table need not be: a connection given to use_fast_commits() commits them without
// waiting for the WAL flush (synchronous_commit off; the end statements switch it back on for
// their own transaction). What a server crash can lose of them is harmless: a lost claim makes
// the image queued again (its claimer's writes are then refused and another daemon runs it), a
// lost renewal or progress is redone by the next heartbeat.
void use_fast_commits(PgConnection& db);

// Creates or migrates the schema (under pg_advisory_lock). Throws PgError, or
// std::runtime_error for a database of a newer schema.
void open_schema(PgConnection& db);

// Inserts the job and its images (queued) and NOTIFYs the queue; sets job.seq. Throws PgError
// (sqlstate 23505 when the idempotency key was taken meanwhile).
void insert_job(PgConnection& db, JobRecord& job, const std::string& daemon_id);

std::optional<JobRecord> load_job(PgConnection& db, const std::string& id);
std::vector<JobRecord> load_jobs(PgConnection& db, const std::vector<std::string>& ids);
std::optional<JobRecord> find_by_idempotency_key(PgConnection& db, const std::string& client,
                                                 const std::string& key);
// Newest first; only `status` if given; only seq < before_seq when before_seq > 0.
std::vector<JobRecord> list_jobs(PgConnection& db, std::optional<JobStatus> status, int limit,
                                 std::int64_t before_seq = 0);
// Unfinished jobs of a client, oldest first.
std::vector<JobRecord> client_jobs(PgConnection& db, const std::string& client);
std::optional<std::string> image_png(PgConnection& db, const std::string& id, int k);

struct QueueCounts {
  std::int64_t queued = 0;   // images waiting, fleet-wide
  std::int64_t running = 0;  // images claimed
};
QueueCounts queue_counts(PgConnection& db);

struct ClaimedTask {
  std::string job_id;
  int image = 0;
  int attempt = 0;  // the fencing token: attempts after this claim
  int priority = 0;
  std::int64_t seq = 0;
  std::string model;
  JobRequest request;
  std::int64_t waited_ms = 0;  // how long it was queued
};
// Claims up to `n` queued images of the listed models for `daemon_id` (running, lease from
// now). The job's status follows. Throws PgError.
std::vector<ClaimedTask> claim(PgConnection& db, const std::string& daemon_id,
                               const std::vector<std::string>& models, int n,
                               std::int64_t lease_ms);

struct LeaseState {
  std::string job_id;
  int image = 0;
  int attempt = 0;
  bool cancel_requested = false;
};
// Renews the leases of the listed images (job_ids[i], images[i]) this daemon runs; returns
// those it still holds. An image it holds but does not list (a claim whose answer was lost)
// is not renewed: its lease expires and it runs elsewhere.
std::vector<LeaseState> renew(PgConnection& db, const std::string& daemon_id, std::int64_t lease_ms,
                              const std::vector<std::string>& job_ids,
                              const std::vector<int>& images);
// Images whose lease expired: queued again while attempts < max_attempts, else failed. Returns
// how many were queued again (NOTIFY when > 0).
int requeue_expired(PgConnection& db, int max_attempts);

// The results of an image this daemon holds at `attempt`. Each returns false (and writes
// nothing) when the daemon does not hold it any more (lease lost, taken over, cancelled).
bool start_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
                 int attempt, const std::string& device, std::int64_t started_ms);
bool progress_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id,
                    int k, int attempt, int step, int steps, int batch_size);
bool finish_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
                  int attempt, const std::string& png, std::int64_t finished_ms,
                  int batch_size = 0);  // 0: keep what progress stored
// failed (error) | cancelled | queued again (retry: the attempt counts; give_back: a drain or a
// full disk, the attempt does not count).
enum class ImageOutcome { failed, cancelled, retry, give_back };
bool end_image(PgConnection& db, const std::string& daemon_id, const std::string& job_id, int k,
               int attempt, ImageOutcome outcome, const std::string& error);

// Cancels a job (queued images cancelled at once; running ones stop when their daemon sees
// cancel_requested at its next heartbeat). nullopt: no such job; false: already finished.
std::optional<bool> cancel_job(PgConnection& db, const std::string& id);

// The fleet: one row per daemon, refreshed by its heartbeat.
struct DaemonRow {
  std::string id, host, url, devices_json;
  std::int64_t started_ms = 0, heartbeat_ms = 0, heartbeat_age_ms = 0;
  int running = 0;
};
void heartbeat(PgConnection& db, const DaemonRow& self);
void remove_daemon(PgConnection& db, const std::string& daemon_id);
std::vector<DaemonRow> daemons(PgConnection& db);
std::map<JobStatus, std::int64_t> count_by_status(PgConnection& db);

// Retention: deletes finished jobs (with their PNGs) older than keep_days, and beyond
// max_images / max_bytes (oldest first). Returns the jobs deleted.
int prune(PgConnection& db, int keep_days, int max_images, std::int64_t max_bytes,
          std::int64_t now_ms);

}  // namespace diffusiond::pg
