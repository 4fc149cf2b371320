// The job store a daemon is told to use (`--store`, `--store-file`): the one owner of that rule,
// and of how a store URL is shown. Plain string logic, no libpq: a build without PostgreSQL
// (cmake -DDIFFUSIOND_POSTGRES=OFF) still recognises a PostgreSQL URL and refuses it clearly.
// Thread-safety: free functions without state; any thread.
#pragma once

#include <string>

namespace diffusiond {

// The store a daemon uses, from --store and --store-file: "" when neither is given or the value
// is "sqlite" (the SQLite store in the data dir), else the PostgreSQL URL. --store-file names a
// file holding the URL on its first non-blank line (a systemd credential:
// LoadCredential=store:/etc/diffusiond/store.url and `--store-file %d/store`), so that a
// password never shows on a command line. Throws std::invalid_argument naming the option or the
// file: both given, an unreadable or empty file, or something that is not a postgresql:// URL.
std::string resolve_store_url(const std::string& store, const std::string& store_file);

// The URL with its password (user:PASSWORD@ in any scheme, password=... parameters) replaced
// by "***" (for logs and messages).
std::string redact_url(const std::string& url);
// "postgresql://..." or "postgres://..." (libpq's URI forms).
bool is_postgres_url(const std::string& text);

}  // namespace diffusiond
