// StoreWriter: the one thread that writes the core's state changes to the JobStore, so that no
// lock shared with device threads or HTTP threads is ever held across an fsync.
//
// The core decides a change under its own mutex, then enqueue()s a snapshot of the job (cheap:
// a copy pushed onto a queue; never touches the disk). The writer thread takes everything
// queued and applies it in one transaction (group commit: one fsync for many changes), in
// enqueue order. A submitter that must not answer before its job is durable wait()s for its
// ticket outside every core lock.
//
// After each batch the writer calls the listener, outside its own lock: committed(ticket) with
// the last ticket now durable, or failed(job ids, error) when the batch could not be written.
// A failure is final: every later write fails at once with the same error (the store is gone or
// unwritable; the daemon reports not-ready until restarted).
//
// Except a full disk (StoreError::storage_full: nothing was written): then the inserts of the
// batch are rejected (their submitters get the error, nothing of those jobs was accepted), the
// updates stay queued in order and are retried every `retry_every` until they commit, and the
// listener hears stalled(error) once per failed attempt. Stopping while stalled makes one last
// attempt; if it fails too, the failure becomes final.
//
// Owner: CoreService. Thread-safety: enqueue/wait/failed/error from any thread; stop() from the
// owner's control thread. Listener callbacks run on the writer thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/job_store.h"

namespace diffusiond {

class StoreWriter {
 public:
  using Ticket = std::uint64_t;

  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void writes_committed(Ticket last) = 0;
    virtual void writes_failed(const std::vector<std::string>& job_ids,
                               const std::string& error) = 0;
    virtual void writes_stalled(const std::string& error) = 0;  // disk full; will retry
  };

  StoreWriter(JobStore& store, Listener& listener,
              std::chrono::milliseconds retry_every = std::chrono::seconds(1));
  ~StoreWriter();  // stop()
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Queues a write; returns its ticket (increasing). Never blocks on the disk.
  Ticket enqueue(JobStore::Write write);
  // Blocks until the ticket's batch was committed (returns "") or failed (returns the error;
  // *storage_full tells whether it was rejected for a full disk).
  std::string wait(Ticket ticket, bool* storage_full = nullptr);
  // wait() for everything enqueued so far.
  std::string flush();
  bool failed() const;
  std::string error() const;  // "" while healthy
  // Writes what is queued, then joins the thread. Idempotent. Later enqueues fail at once.
  void stop();

 private:
  void run();
  // The batch hit a full disk: rejects its inserts, puts the rest back in front of the queue.
  void stall_locked(std::vector<std::pair<Ticket, JobStore::Write>>& batch,
                    const std::string& error);

  JobStore& store_;
  Listener& listener_;
  const std::chrono::milliseconds retry_every_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<std::pair<Ticket, JobStore::Write>> queue_;
  Ticket next_ = 1;
  Ticket committed_ = 0;  // every ticket <= committed_ is durable
  Ticket settled_ = 0;    // every ticket <= settled_ is durable or failed
  std::string error_;
  std::map<Ticket, std::string> rejected_;  // inserts refused for a full disk, until waited for
  bool stalled_ = false;                    // the last attempt hit a full disk
  bool stopping_ = false;
  bool exited_ = false;  // the thread ended: enqueue() settles at once
  std::thread thread_;
};

}  // namespace diffusiond
