// ClusterService::Pool: a few PostgreSQL connections for the front ends' threads (HTTP reads,
// submits), made on demand, at most 4 kept idle, a broken one dropped.
// Owner: ClusterService. Thread-safety: with() from any thread.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "daemon/pg/cluster_service.h"

namespace diffusiond {

class ClusterService::Pool {
 public:
  explicit Pool(std::string url) : url_(std::move(url)) {}
  template <class Fn>
  auto with(Fn fn) {
    std::unique_ptr<PgConnection> conn;
    {
      std::lock_guard lock(mu_);
      if (!idle_.empty()) {
        conn = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!conn) conn = std::make_unique<PgConnection>(url_);
    auto give_back = [&] {
      if (!conn->ok()) return;
      std::lock_guard lock(mu_);
      if (idle_.size() < 4) idle_.push_back(std::move(conn));
    };
    try {
      if constexpr (std::is_void_v<decltype(fn(*conn))>) {
        fn(*conn);
        give_back();
      } else {
        auto result = fn(*conn);
        give_back();
        return result;
      }
    } catch (...) {
      give_back();
      throw;
    }
  }

 private:
  const std::string url_;
  std::mutex mu_;
  std::vector<std::unique_ptr<PgConnection>> idle_;
};

}  // namespace diffusiond
