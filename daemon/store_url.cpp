#include "daemon/store_url.h"

#include <fstream>
#include <regex>
#include <stdexcept>

namespace diffusiond {

std::string redact_url(const std::string& url) {
  // Any scheme: a mistyped --store (mysql://u:pw@...) is quoted in its error message too.
  static const std::regex password(R"(^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)[^@]*@)");
  std::string out = std::regex_replace(url, password, "$1***@");
  static const std::regex param(R"((password=)[^& ]*)");
  return std::regex_replace(out, param, "$1***");
}

bool is_postgres_url(const std::string& text) {
  return text.rfind("postgresql://", 0) == 0 || text.rfind("postgres://", 0) == 0;
}

std::string resolve_store_url(const std::string& store, const std::string& store_file) {
  if (!store.empty() && !store_file.empty())
    throw std::invalid_argument("give --store or --store-file, not both");
  std::string url = store;
  if (!store_file.empty()) {
    std::ifstream in(store_file);
    if (!in) throw std::invalid_argument("--store-file " + store_file + ": cannot be read");
    std::string line;
    while (std::getline(in, line)) {
      const auto begin = line.find_first_not_of(" \t\r");
      if (begin == std::string::npos) continue;
      url = line.substr(begin, line.find_last_not_of(" \t\r") - begin + 1);
      break;
    }
    if (url.empty()) throw std::invalid_argument("--store-file " + store_file + " is empty");
  }
  if (url.empty() || url == "sqlite") return {};
  if (!is_postgres_url(url))
    throw std::invalid_argument(
        "--store must be a postgresql:// (or postgres://) URL, e.g. "
        "postgresql://diffusiond@db.example/diffusiond?sslmode=verify-full; got '" +
        redact_url(url).substr(0, 40) + "'");
  return url;
}
}  // namespace diffusiond
