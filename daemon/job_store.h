// The durable job store: SQLite (WAL, synchronous=FULL so that a committed job survives a power
// cut: a 202 means durable) at DATA_DIR/diffusiond.db, PNG files at DATA_DIR/images/<job>/<k>.png.
// The store is the source of truth for every job the core no longer holds in memory; the core
// (CoreService) writes its state changes through one StoreWriter (daemon/store_writer.h).
// One process per data dir: an exclusive lock on DATA_DIR/diffusiond.lock is held while open.
// Owner: the executable (cmd_serve.cpp) or a test. Thread-safety: every method may be called
// from any thread. Writes are serialised on a write connection; reads (load, list, counts) use
// a second connection of their own, so a read never waits for a write's fsync (WAL).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/job.h"

namespace diffusiond {

class SqliteDatabase;

// Start-up and I/O failures of the store, with the file and what to do in plain words.
class StoreError : public std::runtime_error {
 public:
  explicit StoreError(const std::string& message, bool storage_full = false)
      : std::runtime_error(message), storage_full_(storage_full) {}
  // The disk (or quota) is full: nothing was written, and the same write can succeed once
  // space is freed. Every other store error is final (see store_writer.h).
  bool storage_full() const { return storage_full_; }

 private:
  bool storage_full_;
};

struct RetentionPolicy {
  int keep_days = 0;   // finished jobs older than this are deleted; 0 = keep forever
  int max_images = 0;  // at most this many image files are kept (oldest jobs go first); 0 = no cap
  std::int64_t max_bytes = 0;  // at most this many bytes of PNGs are kept (likewise); 0 = no cap
  bool any() const { return keep_days > 0 || max_images > 0 || max_bytes > 0; }
};

struct PruneResult {
  int jobs_deleted = 0;
  int files_deleted = 0;
  std::int64_t bytes_deleted = 0;
};

class JobStore {
 public:
  // Creates data_dir if needed, locks it, opens/creates the database and checks it. Throws
  // StoreError: database corrupt or not a database, locked by another process, data dir in use.
  static std::unique_ptr<JobStore> open(const std::filesystem::path& data_dir);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts the job and all its images in one transaction (committed and synced on return);
  // sets job.seq when it is 0, else stores the given one. Throws StoreError.
  void insert(JobRecord& job);
  // Writes the job row and the listed images in one transaction. Throws StoreError.
  void update(const JobRecord& job, const std::vector<int>& images);

  // One write of a batch: an insert (every image) or an update (the listed images).
  struct Write {
    JobRecord job;
    std::vector<int> images;  // update only
    bool insert = false;
  };
  // Applies every write in one transaction (one fsync: group commit), after checking that the
  // database file is still the one opened and still writable (check_writable). All or nothing.
  // Throws StoreError.
  void apply(std::vector<Write>& batch);
  // Throws StoreError when the database file was removed or replaced since it was opened, or
  // lost its owner's write permission: SQLite would keep writing to the open file unnoticed.
  void check_writable() const;
  // The highest job seq stored (0 when empty): the core numbers new jobs after it.
  std::int64_t max_seq() const;

  std::optional<JobRecord> load(const std::string& id) const;
  // The job `client` submitted with this idempotency key, if it is still stored.
  std::optional<JobRecord> find_by_idempotency_key(const std::string& client,
                                                   const std::string& key) const;
  // Newest first (by submission), optionally only one status, only jobs with seq < before_seq
  // when it is > 0.
  std::vector<JobRecord> list(std::optional<JobStatus> status, int limit,
                              std::int64_t before_seq = 0) const;
  std::map<JobStatus, std::int64_t> count_by_status() const;

  // After a restart: images left running are re-queued (running jobs stay running); images of
  // finished jobs that were still running become cancelled. Returns every unfinished job,
  // oldest first.
  std::vector<JobRecord> recover();

  // Deletes finished jobs (rows and image files) beyond the policy. Jobs with an image still
  // queued or running are never touched.
  PruneResult prune(const RetentionPolicy& policy, std::int64_t now_ms);

  const std::filesystem::path& data_dir() const { return data_dir_; }
  std::filesystem::path database_path() const { return data_dir_ / "diffusiond.db"; }
  // Where image k of a job lives (the folder is created by prepare_image_dir).
  std::filesystem::path image_file(const std::string& job_id, int k) const;
  std::filesystem::path relative_image_file(const std::string& job_id, int k) const;
  void prepare_image_dir(const std::string& job_id) const;

 private:
  JobStore(std::filesystem::path data_dir, int lock_fd);
  void open_database();
  void remove_orphan_image_dirs();
  std::vector<JobRecord> select_jobs(SqliteDatabase& db, const std::string& where_order_limit,
                                     const std::vector<std::string>& params) const;
  void write_images(const JobRecord& job, const std::vector<int>& images);
  void insert_locked(JobRecord& job);
  void update_locked(const JobRecord& job, const std::vector<int>& images);

  std::filesystem::path data_dir_;
  int lock_fd_ = -1;
  mutable std::mutex mu_;  // the write connection
  std::unique_ptr<SqliteDatabase> db_;
  mutable std::mutex read_mu_;  // the read connection
  std::unique_ptr<SqliteDatabase> reader_;
  std::uint64_t db_inode_ = 0;
  std::uint64_t db_device_ = 0;
};

}  // namespace diffusiond
