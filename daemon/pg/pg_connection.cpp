#include "daemon/pg/pg_connection.h"

#include <libpq-fe.h>

#include <cstdlib>

namespace diffusiond {

PgResult::PgResult(pg_result* result) : result_(result) {}
PgResult::~PgResult() {
  if (result_) PQclear(result_);
}
PgResult::PgResult(PgResult&& other) noexcept : result_(other.result_) {
  other.result_ = nullptr;
}
int PgResult::rows() const {
  return PQntuples(result_);
}
bool PgResult::null(int row, int col) const {
  return PQgetisnull(result_, row, col) != 0;
}
std::string PgResult::text(int row, int col) const {
  if (null(row, col)) return {};
  return std::string(PQgetvalue(result_, row, col),
                     static_cast<std::size_t>(PQgetlength(result_, row, col)));
}
std::int64_t PgResult::int64(int row, int col) const {
  if (null(row, col)) return 0;
  return std::strtoll(PQgetvalue(result_, row, col), nullptr, 10);
}
bool PgResult::boolean(int row, int col) const {
  return !null(row, col) && PQgetvalue(result_, row, col)[0] == 't';
}
std::string PgResult::bytea(int row, int col) const {
  if (null(row, col)) return {};
  std::size_t length = 0;
  unsigned char* raw = PQunescapeBytea(
      reinterpret_cast<const unsigned char*>(PQgetvalue(result_, row, col)), &length);
  if (!raw) throw PgError("cannot decode a bytea value", "", false);
  std::string out(reinterpret_cast<const char*>(raw), length);
  PQfreemem(raw);
  return out;
}
int PgResult::affected() const {
  const char* n = PQcmdTuples(result_);
  return n && *n ? std::atoi(n) : 0;
}

PgConnection::PgConnection(std::string url) : url_(std::move(url)) {
  connect();
}

PgConnection::~PgConnection() {
  if (conn_) PQfinish(conn_);
}

void PgConnection::connect() {
  if (conn_) PQfinish(conn_);
  conn_ = PQconnectdb(url_.c_str());
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn_);
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    PQfinish(conn_);
    conn_ = nullptr;
    throw PgError("cannot connect to PostgreSQL at " + redact_url(url_) + ": " + message, "08006",
                  true);
  }
  // Our statements are short; a server that hangs must not hang a thread forever.
  PGresult* r = PQexec(
      conn_, "SET statement_timeout = '30s'; SET idle_in_transaction_session_timeout = '60s'");
  PQclear(r);
  for (const auto& sql : session_) PQclear(PQexec(conn_, sql.c_str()));
}

void PgConnection::keep_session(const std::string& sql) {
  session_.push_back(sql);
  exec_script(sql);
}

bool PgConnection::ok() const {
  return conn_ && PQstatus(conn_) == CONNECTION_OK;
}

void PgConnection::reconnect() {
  connect();
}

void PgConnection::fail(const std::string& what, pg_result* result) {
  std::string sqlstate;
  if (result) {
    if (const char* s = PQresultErrorField(result, PG_DIAG_SQLSTATE)) sqlstate = s;
  }
  std::string message = result ? PQresultErrorMessage(result) : "";
  if (message.empty() && conn_) message = PQerrorMessage(conn_);
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  if (result) PQclear(result);
  // Class 08 (connection exception), 57P (operator intervention: admin shutdown), or a socket
  // that broke under the statement.
  const bool lost = !ok() || sqlstate.rfind("08", 0) == 0 || sqlstate.rfind("57P", 0) == 0;
  throw PgError("PostgreSQL: " + what + ": " + message, sqlstate, lost);
}

PgResult PgConnection::exec(const std::string& sql, const std::vector<PgParam>& params) {
  if (!ok()) connect();
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].value ? params[i].value->data() : nullptr;
    lengths[i] = params[i].value ? static_cast<int>(params[i].value->size()) : 0;
    formats[i] = params[i].binary ? 1 : 0;
  }
  // A connection idle outside a transaction may have been closed by a server restart without
  // our knowing: then the statement (a BEGIN, or one on its own) runs again once on a new one.
  const bool idle = PQtransactionStatus(conn_) == PQTRANS_IDLE;
  pg_result* r = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                              values.data(), lengths.data(), formats.data(), 0);
  auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status == PGRES_FATAL_ERROR && idle && PQstatus(conn_) != CONNECTION_OK) {
    if (r) PQclear(r);
    connect();
    r = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr, values.data(),
                     lengths.data(), formats.data(), 0);
    status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  }
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
    fail(sql.substr(0, sql.find_first_of("(\n")), r);
  return PgResult(r);
}

void PgConnection::exec_script(const std::string& sql) {
  if (!ok()) connect();
  pg_result* r = PQexec(conn_, sql.c_str());
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail("script", r);
  PQclear(r);
}

int PgConnection::socket() const {
  return conn_ ? PQsocket(conn_) : -1;
}

std::vector<std::string> PgConnection::notifications() {
  std::vector<std::string> out;
  if (!conn_) return out;
  PQconsumeInput(conn_);
  while (PGnotify* n = PQnotifies(conn_)) {
    out.emplace_back(n->relname);
    PQfreemem(n);
  }
  return out;
}

}  // namespace diffusiond
