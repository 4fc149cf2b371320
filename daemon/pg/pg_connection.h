// A thin RAII layer over one libpq connection: parameterised statements, text results, bytea
// parameters sent binary, and reconnection. The connection string is passed to libpq as it is
// (TLS: sslmode, sslrootcert, ... in the URL or the usual PG* environment variables).
// Owner: whoever made it (the PostgreSQL store keeps one per thread that talks to the database).
// Thread-safety: none; one thread at a time (the owner serialises).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/store_url.h"  // redact_url, is_postgres_url, resolve_store_url

struct pg_conn;
struct pg_result;

namespace diffusiond {

// A statement that failed, or the server that could not be reached (connection_lost()).
class PgError : public std::runtime_error {
 public:
  PgError(const std::string& message, std::string sqlstate, bool connection_lost)
      : std::runtime_error(message),
        sqlstate_(std::move(sqlstate)),
        connection_lost_(connection_lost) {}
  const std::string& sqlstate() const { return sqlstate_; }
  bool connection_lost() const { return connection_lost_; }

 private:
  std::string sqlstate_;
  bool connection_lost_;
};

// One parameter: text (or NULL), or bytes sent in binary (bytea).
struct PgParam {
  std::optional<std::string> value;
  bool binary = false;
  PgParam() = default;  // NULL
  PgParam(std::string v) : value(std::move(v)) {}
  PgParam(const char* v) : value(std::string(v)) {}
  PgParam(std::int64_t v) : value(std::to_string(v)) {}
  PgParam(int v) : value(std::to_string(v)) {}
  PgParam(bool v) : value(v ? "true" : "false") {}
  static PgParam bytes(std::string v) {
    PgParam p(std::move(v));
    p.binary = true;
    return p;
  }
};

class PgResult {
 public:
  explicit PgResult(pg_result* result);
  ~PgResult();
  PgResult(PgResult&& other) noexcept;
  PgResult& operator=(PgResult&&) = delete;
  int rows() const;
  bool null(int row, int col) const;
  std::string text(int row, int col) const;    // "" when NULL
  std::int64_t int64(int row, int col) const;  // 0 when NULL
  bool boolean(int row, int col) const;
  std::string bytea(int row, int col) const;  // a bytea column in text (hex) form, decoded
  int affected() const;                       // rows changed by UPDATE/DELETE/INSERT

 private:
  pg_result* result_;
};

class PgConnection {
 public:
  // Connects (throws PgError with connection_lost() when the server cannot be reached).
  explicit PgConnection(std::string url);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement ($1, $2, ... placeholders). A connection found broken is reset once
  // before the statement (a server that came back is used again). Throws PgError.
  PgResult exec(const std::string& sql, const std::vector<PgParam>& params = {});
  // Several statements without parameters (schema). Throws PgError.
  void exec_script(const std::string& sql);
  // A session setting (SET ..., LISTEN ...) run now and again after every reconnection.
  void keep_session(const std::string& sql);
  bool ok() const;
  void reconnect();  // throws PgError
  // LISTEN support: the socket to wait on, and the notification channels received since the
  // last call (consumes input; never blocks).
  int socket() const;
  std::vector<std::string> notifications();
  const std::string& url() const { return url_; }

 private:
  void connect();
  [[noreturn]] void fail(const std::string& what, pg_result* result);

  std::string url_;
  std::vector<std::string> session_;  // keep_session()
  pg_conn* conn_ = nullptr;
};

}  // namespace diffusiond
