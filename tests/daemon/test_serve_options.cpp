// `diffusiond serve` options: --listen parsing, the config file, API key files.
#include <catch2/catch.hpp>

#include <CLI/CLI.hpp>
#include <fstream>

#include "daemon/serve_options.h"
#include "daemon/store_url.h"
#include "temp_dir.h"

using namespace diffusiond;

namespace {
void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

// Parses argv like the real subcommand, then applies the config file if one was given.
ServeOptions parse(std::vector<std::string> args) {
  CLI::App app;
  auto* serve = app.add_subcommand("serve");
  ServeOptions options;
  add_serve_options(*serve, options);
  args.insert(args.begin(), "serve");
  std::reverse(args.begin(), args.end());
  app.parse(args);
  if (!options.config.empty()) apply_config_file(*serve, options.config);
  return options;
}
}  // namespace

TEST_CASE("listen addresses in every accepted form", "[serve]") {
  CHECK(parse_listen("127.0.0.1:7860").host == "127.0.0.1");
  CHECK(parse_listen("127.0.0.1:7860").port == 7860);
  CHECK(parse_listen("0.0.0.0:0").port == 0);
  CHECK(parse_listen(":8080").host == "127.0.0.1");
  CHECK(parse_listen("9000").port == 9000);
  CHECK(parse_listen("[::1]:81").host == "::1");
  CHECK(parse_listen("[::1]:81").port == 81);
  CHECK_THROWS_WITH(parse_listen("host:99999"), Catch::Contains("bad port"));
  CHECK_THROWS_WITH(parse_listen("host:"), Catch::Contains("bad port"));
  CHECK_THROWS_WITH(parse_listen("::1:80"), Catch::Contains("[ADDR]:PORT"));
  CHECK_THROWS_WITH(parse_listen("[::1]80"), Catch::Contains("[IPV6]:PORT"));
}

TEST_CASE("defaults are the documented safe ones", "[serve]") {
  const auto o = parse({});
  CHECK(o.listen == "127.0.0.1:7860");
  CHECK(o.devices == "auto");
  CHECK(o.dispatch == "round-robin");
  CHECK(o.max_queue == 256);
  CHECK(o.api_keys.empty());
}

TEST_CASE("the config file sets options - the command line wins", "[serve]") {
  test::TempDir dir;
  const auto conf = dir.path() / "diffusiond.conf";
  write_text(conf,
             "# comment\n"
             "listen = 0.0.0.0:9000\n"
             "devices = \"cpu*2\"\n"
             "max-queue = 12\n"
             "api-key = [\"k1\", \"k2\"]\n"
             "dispatch = least-loaded\n");
  const auto o = parse({"--config", conf.string(), "--max-queue", "7"});
  CHECK(o.listen == "0.0.0.0:9000");
  CHECK(o.devices == "cpu*2");
  CHECK(o.max_queue == 7);
  CHECK(o.api_keys == std::vector<std::string>{"k1", "k2"});
  CHECK(o.dispatch == "least-loaded");

  write_text(conf, "[serve]\nkeep-days = 3\n");
  CHECK(parse({"--config", conf.string()}).keep_days == 3);
}

TEST_CASE("config file errors name the key and the file", "[serve]") {
  test::TempDir dir;
  const auto conf = dir.path() / "bad.conf";
  write_text(conf, "max-qeueu = 3\n");
  CHECK_THROWS_WITH(parse({"--config", conf.string()}),
                    Catch::Contains("unknown option 'max-qeueu'"));
  write_text(conf, "max-queue = 0\n");
  CHECK_THROWS_WITH(parse({"--config", conf.string()}), Catch::Contains("max-queue"));
  write_text(conf, "dispatch = random\n");
  CHECK_THROWS_AS(parse({"--config", conf.string()}), CLI::ParseError);
  CHECK_THROWS_AS(parse({"--config", (dir.path() / "missing.conf").string()}), CLI::ParseError);
}

TEST_CASE("API keys come from the options and the key file", "[serve]") {
  test::TempDir dir;
  ServeOptions o;
  o.api_keys = {"a"};
  o.api_key_file = (dir.path() / "keys").string();
  write_text(o.api_key_file, "# keys\n\n  b  \nc\r\n");
  CHECK(collect_api_keys(o).all == std::vector<std::string>{"a", "b", "c"});
  CHECK(collect_api_keys(o).priority.empty());
  o.priority_api_keys = {"boss"};
  write_text(o.api_key_file, "b priority\nc\n");
  const ApiKeys keys = collect_api_keys(o);
  CHECK(keys.all == std::vector<std::string>{"a", "boss", "b", "c"});
  CHECK(keys.priority == std::vector<std::string>{"boss", "b"});
  write_text(o.api_key_file, "b admin\n");
  CHECK_THROWS_WITH(collect_api_keys(o), Catch::Contains("line 1"));
  o.priority_api_keys.clear();
  write_text(o.api_key_file, "# only a comment\n");
  CHECK_THROWS_WITH(collect_api_keys(o), Catch::Contains("holds no key"));
  o.api_key_file = (dir.path() / "nope").string();
  CHECK_THROWS_WITH(collect_api_keys(o), Catch::Contains("cannot read --api-key-file"));
}

TEST_CASE("the default data dir follows systemd and XDG", "[serve]") {
  ::setenv("STATE_DIRECTORY", "/var/lib/diffusiond:/var/lib/other", 1);
  CHECK(default_data_dir() == "/var/lib/diffusiond");
  ::unsetenv("STATE_DIRECTORY");
  ::setenv("XDG_STATE_HOME", "/tmp/state", 1);
  CHECK(default_data_dir() == "/tmp/state/diffusiond");
  ::unsetenv("XDG_STATE_HOME");
}

TEST_CASE("connection and per-client limit options, on the command line and in the file",
          "[serve]") {
  const auto defaults = parse({});
  CHECK(defaults.max_connections == 256);
  CHECK(defaults.max_connections_per_client == 64);
  CHECK(defaults.rate_limit == 0);
  CHECK(defaults.rate_burst == 20);
  CHECK_FALSE(defaults.limit_loopback);
  const auto o = parse({"--max-connections-per-client", "8", "--rate-limit", "2.5", "--rate-burst",
                        "5", "--limit-loopback"});
  CHECK(o.max_connections_per_client == 8);
  CHECK(o.rate_limit == 2.5);
  CHECK(o.rate_burst == 5);
  CHECK(o.limit_loopback);
  CHECK_THROWS(parse({"--rate-limit", "-1"}));
  CHECK_THROWS(parse({"--max-connections-per-client", "0"}));

  test::TempDir dir;
  const auto conf = dir.path() / "limits.conf";
  write_text(conf,
             "max-connections-per-client = 3\nrate-limit = 0.5\nrate-burst = 4\n"
             "limit-loopback = true\n");
  const auto f = parse({"--config", conf.string()});
  CHECK(f.max_connections_per_client == 3);
  CHECK(f.rate_limit == 0.5);
  CHECK(f.rate_burst == 4);
  CHECK(f.limit_loopback);
  write_text(conf, "limit-loopback = false\n");
  CHECK_FALSE(parse({"--config", conf.string()}).limit_loopback);
}

TEST_CASE("the CUDA tuning options: unset by default, on/off only, from the file too", "[serve]") {
  const auto none = parse({});
  CHECK(none.tuning.cuda_graphs.empty());  // not given: the pipeline's default applies
  CHECK(none.tuning.cuda_graph_cache == -1);
  CHECK(none.tuning.channels_last.empty());
  CHECK(none.tuning.cudnn_benchmark.empty());
  const auto given = parse({"--cuda-graphs", "off", "--cuda-graph-cache", "3", "--channels-last",
                            "on", "--cudnn-benchmark", "on"});
  CHECK(given.tuning.cuda_graphs == "off");
  CHECK(given.tuning.cuda_graph_cache == 3);
  CHECK(given.tuning.channels_last == "on");
  CHECK(given.tuning.cudnn_benchmark == "on");
  CHECK_THROWS_AS(parse({"--cuda-graphs", "maybe"}), CLI::ValidationError);
  CHECK_THROWS_AS(parse({"--cuda-graph-cache", "0"}), CLI::ValidationError);

  test::TempDir dir;
  const auto conf = dir.path() / "diffusiond.conf";
  write_text(conf, "cuda-graphs = off\ncuda-graph-cache = 2\nchannels-last = on\n");
  const auto o = parse({"--config", conf.string(), "--cuda-graph-cache", "5"});
  CHECK(o.tuning.cuda_graphs == "off");
  CHECK(o.tuning.cuda_graph_cache == 5);
  CHECK(o.tuning.channels_last == "on");
  write_text(conf, "cudnn-benchmark = sometimes\n");
  CHECK_THROWS_WITH(parse({"--config", conf.string()}), Catch::Contains("cudnn-benchmark"));
}

TEST_CASE("the job store from --store and --store-file", "[serve][store]") {
  // Neither, or "sqlite": the SQLite store in the data dir.
  CHECK(resolve_store_url("", "").empty());
  CHECK(resolve_store_url("sqlite", "").empty());
  CHECK(resolve_store_url("postgresql://d@db/q", "") == "postgresql://d@db/q");
  CHECK(resolve_store_url("postgres://d@db/q", "") == "postgres://d@db/q");
  CHECK_THROWS_WITH(resolve_store_url("postgresql://a@b/c", "f"), Catch::Contains("not both"));
  // Not a PostgreSQL URL: refused, the password never shown.
  CHECK_THROWS_WITH(resolve_store_url("mysql://u:hunter2@h/db", ""),
                    Catch::Contains("postgresql://") && !Catch::Contains("hunter2"));

  // --store-file: the first non-blank line, trimmed (a systemd credential).
  test::TempDir dir;
  const auto file = dir.path() / "store";
  write_text(file, "\n   \n  postgresql://u:pw@db.example/q?sslmode=verify-full \r\nignored\n");
  CHECK(resolve_store_url("", file.string()) ==
        "postgresql://u:pw@db.example/q?sslmode=verify-full");
  write_text(file, " \n\t\n");
  CHECK_THROWS_WITH(resolve_store_url("", file.string()), Catch::Contains("is empty"));
  CHECK_THROWS_WITH(resolve_store_url("", (dir.path() / "absent").string()),
                    Catch::Contains("absent") && Catch::Contains("cannot be read"));
}

TEST_CASE("store URLs are shown without their passwords", "[serve][store]") {
  CHECK(redact_url("postgresql://u:secret@db/q") == "postgresql://u:***@db/q");
  CHECK(redact_url("postgresql://db/q?user=u&password=secret&sslmode=require") ==
        "postgresql://db/q?user=u&password=***&sslmode=require");
  CHECK(redact_url("postgresql://u@db/q") == "postgresql://u@db/q");  // nothing to hide
  CHECK(is_postgres_url("postgresql://x"));
  CHECK(is_postgres_url("postgres://x"));
  CHECK_FALSE(is_postgres_url("sqlite"));
  CHECK_FALSE(is_postgres_url(" postgresql://x"));
}
