// Who may hold a connection slot: the connection cap (HttpOptions::max_connections), eviction of
// the longest-idle connection when it is reached, the per-client cap, and the reserve over the
// cap where only health probes are answered. The rules are http/README.md "Connections and
// per-client limits".
//
// A slot is idle (evictable) from the moment it is admitted, or its connection starts writing an
// answer, until the first byte of its next request arrives: a fresh connection, a keep-alive one
// between requests, or one lingering after its last answer. It is busy from the first byte of a
// request until its answer starts (an event stream or a `?wait=1` request stays busy). An evicted
// connection finishes the answer it is writing, then closes. A new connection at the cap takes the
// slot of the longest-idle one, which is closed. A connection of a limited client
// (http/client_limits.h) at its own cap takes the slot of that client's longest-idle connection, or
// is refused.
//
// Owner: HttpServerImpl (one per server), referenced by ServerContext; it outlives every Session.
// Thread-safety: every method may be called from any thread (one mutex; nothing slow under it):
// admit() from the listener's strand, the others from each Session's strand.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace diffusiond {
struct HttpOptions;
}

namespace diffusiond::http_api {

class Session;

class Admission {
 public:
  explicit Admission(const HttpOptions& options);

  enum class Verdict {
    admit,          // an ordinary slot
    probe,          // over the cap: a health probe is answered, anything else 503
    refuse_client,  // a limited client holds its cap of busy connections: answer 429, close
    refuse_full,    // the cap and the reserve over it are full: answer 503, close
  };
  struct Decision {
    Verdict verdict = Verdict::refuse_full;
    std::uint64_t slot = 0;           // admit, probe: the Session's, until release()
    bool evicted = false;             // a slot was taken from an idle connection for this one
    std::shared_ptr<Session> victim;  // that connection's Session, to evict() (null: not started)
  };
  Decision admit(const boost::asio::ip::address& peer);

  // The connection is idle from now on (evictable unless a probe; already idle: it keeps its
  // place). `pressure`: at least 3/4 of the ordinary slots are taken (idle connections then get
  // HttpOptions::busy_idle_timeout instead of the header timeout; a probe always does).
  // `evicted`: the slot was given away; close the connection.
  enum class Idle { calm, pressure, evicted };
  Idle idle(std::uint64_t slot, std::weak_ptr<Session> session);
  // A request began arriving. False: the slot was given away meanwhile; close the connection.
  bool busy(std::uint64_t slot);
  // The connection is gone (Session destructor).
  void release(std::uint64_t slot);

  int admitted() const;  // ordinary slots taken (evicted ones not counted)

 private:
  struct Slot {
    std::string client;
    bool limited = false;
    bool probe = false;
    bool evicted = false;
    bool is_idle = false;
    std::list<std::uint64_t>::iterator idle_at;  // in idle_, while is_idle
    std::weak_ptr<Session> session;
  };
  // Frees `it`'s slot at once (its connection closes later); returns its Session.
  std::shared_ptr<Session> evict_locked(std::unordered_map<std::uint64_t, Slot>::iterator it);
  void count_locked(const Slot& s, int delta);
  void mark_idle_locked(std::uint64_t id, Slot& s);

  const HttpOptions& options_;
  const int cap_;
  const int per_client_cap_;
  const int reserve_;
  mutable std::mutex mutex_;
  std::unordered_map<std::uint64_t, Slot> slots_;
  std::list<std::uint64_t> idle_;                    // idle ordinary slots, longest idle first
  std::unordered_map<std::string, int> per_client_;  // slots of limited clients, by address
  int admitted_ = 0;
  int probes_ = 0;
  std::uint64_t next_slot_ = 1;
};

}  // namespace diffusiond::http_api
