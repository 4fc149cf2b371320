#include "prometheus_text.h"

#include <cmath>
#include <limits>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace diffusiond::testing {
namespace {

const std::regex kName("[a-zA-Z_:][a-zA-Z0-9_:]*");
const std::regex kLabel("[a-zA-Z_][a-zA-Z0-9_]*");

[[noreturn]] void bad(int line_no, const std::string& line, const std::string& why) {
  throw std::runtime_error("metrics line " + std::to_string(line_no) + " (" + line + "): " + why);
}

double parse_value(const std::string& s, bool& ok) {
  ok = true;
  if (s == "+Inf" || s == "Inf") return std::numeric_limits<double>::infinity();
  if (s == "-Inf") return -std::numeric_limits<double>::infinity();
  if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  std::size_t used = 0;
  try {
    const double v = std::stod(s, &used);
    ok = used == s.size();
    return v;
  } catch (...) {
    ok = false;
    return 0;
  }
}

// The family a sample belongs to (histogram/summary suffixes stripped when declared so).
std::string family_of(const std::string& name, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string sfx(suffix);
    if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      const std::string base = name.substr(0, name.size() - sfx.size());
      auto it = types.find(base);
      if (it != types.end() && (it->second == "histogram" || it->second == "summary")) return base;
    }
  }
  return name;
}

}  // namespace

double MetricFamilies::value(const std::string& name,
                             const std::map<std::string, std::string>& labels) const {
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) return s.value;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

MetricFamilies parse_prometheus_text(const std::string& text) {
  MetricFamilies out;
  std::set<std::string> families_with_samples;
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  if (!text.empty() && text.back() != '\n')
    throw std::runtime_error("metrics text must end with \\n");
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line.substr(1));
      std::string keyword, name;
      words >> keyword >> name;
      if (keyword == "TYPE") {
        std::string type;
        words >> type;
        if (!std::regex_match(name, kName)) bad(line_no, line, "bad metric name");
        static const std::set<std::string> known = {"counter", "gauge", "histogram", "summary",
                                                    "untyped"};
        if (!known.count(type)) bad(line_no, line, "unknown type '" + type + "'");
        if (out.types.count(name)) bad(line_no, line, "second TYPE for " + name);
        if (families_with_samples.count(name)) bad(line_no, line, "TYPE after samples of " + name);
        out.types[name] = type;
      } else if (keyword == "HELP") {
        if (!std::regex_match(name, kName)) bad(line_no, line, "bad metric name");
      }
      continue;  // other comments are allowed
    }
    MetricSample s;
    std::size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    s.name = line.substr(0, pos);
    if (!std::regex_match(s.name, kName)) bad(line_no, line, "bad metric name");
    if (pos < line.size() && line[pos] == '{') {
      ++pos;
      while (true) {
        if (pos < line.size() && line[pos] == '}') {
          ++pos;
          break;
        }
        const std::size_t eq = line.find('=', pos);
        if (eq == std::string::npos) bad(line_no, line, "label without '='");
        const std::string key = line.substr(pos, eq - pos);
        if (!std::regex_match(key, kLabel)) bad(line_no, line, "bad label name '" + key + "'");
        if (eq + 1 >= line.size() || line[eq + 1] != '"')
          bad(line_no, line, "unquoted label value");
        std::string value;
        std::size_t i = eq + 2;
        for (; i < line.size() && line[i] != '"'; ++i) {
          if (line[i] == '\\') {
            if (++i >= line.size()) bad(line_no, line, "dangling escape");
            if (line[i] == 'n')
              value += '\n';
            else if (line[i] == '\\' || line[i] == '"')
              value += line[i];
            else
              bad(line_no, line, "bad escape");
          } else {
            value += line[i];
          }
        }
        if (i >= line.size()) bad(line_no, line, "unterminated label value");
        if (s.labels.count(key)) bad(line_no, line, "label '" + key + "' twice");
        s.labels[key] = value;
        pos = i + 1;
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
    }
    if (pos >= line.size() || line[pos] != ' ') bad(line_no, line, "no value");
    std::istringstream rest(line.substr(pos + 1));
    std::string value_text, timestamp, extra;
    rest >> value_text >> timestamp >> extra;
    if (!extra.empty()) bad(line_no, line, "trailing text");
    bool ok = false;
    s.value = parse_value(value_text, ok);
    if (!ok) bad(line_no, line, "bad value '" + value_text + "'");
    const std::string family = family_of(s.name, out.types);
    families_with_samples.insert(family);
    auto type = out.types.find(family);
    if (type != out.types.end() && type->second == "counter" && s.value < 0) {
      bad(line_no, line, "negative counter");
    }
    out.samples.push_back(std::move(s));
  }
  // Histogram consistency, per label set (le removed).
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    std::map<std::map<std::string, std::string>, double> counts;
    for (const auto& s : out.samples) {
      if (s.name == family + "_bucket") {
        auto labels = s.labels;
        auto le = labels.find("le");
        if (le == labels.end()) throw std::runtime_error(family + "_bucket without le");
        bool ok = false;
        const double bound = parse_value(le->second, ok);
        if (!ok) throw std::runtime_error(family + ": bad le '" + le->second + "'");
        labels.erase(le);
        buckets[labels].push_back({bound, s.value});
      } else if (s.name == family + "_count") {
        counts[s.labels] = s.value;
      }
    }
    for (const auto& [labels, list] : buckets) {
      for (std::size_t i = 1; i < list.size(); ++i) {
        if (!(list[i].first > list[i - 1].first))
          throw std::runtime_error(family + ": le not increasing");
        if (list[i].second < list[i - 1].second)
          throw std::runtime_error(family + ": buckets not cumulative");
      }
      if (list.empty() || !std::isinf(list.back().first))
        throw std::runtime_error(family + ": no +Inf bucket");
      auto c = counts.find(labels);
      if (c == counts.end()) throw std::runtime_error(family + ": no _count");
      if (c->second != list.back().second)
        throw std::runtime_error(family + ": +Inf bucket != _count");
    }
  }
  return out;
}

}  // namespace diffusiond::testing
