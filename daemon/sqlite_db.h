// A thin RAII layer over the SQLite C API: one connection, prepared statements, errors that
// carry the SQLite result code and name the database file.
// Owner: JobStore. Thread-safety: none; the owner serialises every call.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

struct sqlite3;
struct sqlite3_stmt;

namespace diffusiond {

class SqliteError : public std::runtime_error {
 public:
  SqliteError(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }  // primary SQLite result code (SQLITE_BUSY, ...)

 private:
  int code_;
};

class SqliteStatement {
 public:
  SqliteStatement(sqlite3* db, const std::string& sql);
  ~SqliteStatement();
  SqliteStatement(const SqliteStatement&) = delete;
  SqliteStatement& operator=(const SqliteStatement&) = delete;

  SqliteStatement& bind(int index, std::int64_t value);  // 1-based
  SqliteStatement& bind(int index, const std::string& value);
  bool step();  // true: a row is ready; false: done. Throws SqliteError.
  void run();   // step() to completion, then reset()
  void reset();
  std::int64_t int64(int column) const;  // 0-based
  std::string text(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

class SqliteDatabase {
 public:
  // Opens (creating if needed). Throws SqliteError naming the file.
  explicit SqliteDatabase(const std::filesystem::path& path);
  ~SqliteDatabase();
  SqliteDatabase(const SqliteDatabase&) = delete;
  SqliteDatabase& operator=(const SqliteDatabase&) = delete;

  void exec(const std::string& sql);  // one or more statements, no results
  // First column of the first row as text ("" when no row).
  std::string query_text(const std::string& sql);
  sqlite3* handle() const { return db_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
};

// RAII transaction: BEGIN IMMEDIATE on construction, ROLLBACK unless commit() was called.
class SqliteTransaction {
 public:
  explicit SqliteTransaction(SqliteDatabase& db);
  ~SqliteTransaction();
  void commit();

 private:
  SqliteDatabase& db_;
  bool done_ = false;
};

}  // namespace diffusiond
