// Every option of `diffusiond serve`, its CLI11 registration (documented by --help) and the
// config file (`--config FILE`: `key = value` lines, keys = the long option names; a
// command-line option wins over the file).
// Owner: cmd_serve. Thread-safety: used by the control thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace diffusiond {

// How CUDA replicas use their device (--cuda-graphs, --cuda-graph-cache, --channels-last,
// --cudnn-benchmark), as given: "" / -1 = not given, the pipeline's default
// (pipeline/device_tuning.h, the one owner of the defaults) applies. `serve` and `generate`.
struct DeviceTuningFlags {
  std::string cuda_graphs;      // "on" | "off" | ""
  int cuda_graph_cache = -1;    // graphs per CUDA replica; -1 = default
  std::string channels_last;    // "on" | "off" | ""
  std::string cudnn_benchmark;  // "on" | "off" | ""
};

struct ServeOptions {
  std::string config;
  std::string model;
  std::string variant;
  std::string devices = "auto";
  std::string dtype = "auto";
  std::string listen = "127.0.0.1:7860";
  std::string data_dir;  // "" = default_data_dir()
  std::vector<std::string> api_keys;
  std::vector<std::string> priority_api_keys;  // keys that may also use priority > 0
  std::string api_key_file;
  std::vector<std::string> allowed_hosts;    // Host names besides loopback, IPs, the listen host
  std::vector<std::string> allowed_origins;  // origins besides the UI's own that may POST/DELETE
  std::string dispatch = "round-robin";
  int max_queue = 256;
  int max_batch = 0;      // images per UNet batch per device; 0 = auto (CUDA 4, CPU 1)
  int batch_wait_ms = 0;  // how long a batch waits for compatible partners
  int max_pixels = 1024 * 1024;
  int max_steps = 150;
  int max_n = 16;
  int max_connections = 256;
  int max_connections_per_client = 64;
  double rate_limit = 0;  // requests per second per client; 0 = none
  double rate_burst = 20;
  bool limit_loopback = false;
  int keep_days = 30;
  int max_images = 0;
  int max_images_mb = 0;  // MiB of PNGs kept; 0 = no cap
  int min_free_mb = 100;  // free space below which the data dir counts as full
  int png_compression = 1;
  int png_threads = 2;
  int threads = 0;  // total intra-op CPU threads for CPU workers; 0 = all cores
  int io_threads = 2;
  int drain_timeout_s = 30;
  int default_steps = 0;             // 0: the model family's default (SD 50, SDXL 30, Turbo 1)
  int device_failure_threshold = 3;  // consecutive failures that make a device unhealthy
  int device_probe_interval_s = 60;  // then it is probed; doubles per failed probe (16x at most)
  DeviceTuningFlags tuning;
  std::string inject_faults;  // hidden, a test facility (daemon/fault_injection.h)
  std::string log_level = "info";
};

// Registers every option on the subcommand.
void add_serve_options(CLI::App& command, ServeOptions& options);
// Registers the four device tuning options (serve and generate share them).
void add_device_tuning_options(CLI::App& command, DeviceTuningFlags& flags);
// Applies --config: every key of the file sets the option of that name unless the command line
// gave it. Throws CLI::ParseError subclasses naming the file and the key.
void apply_config_file(CLI::App& command, const std::string& path);

// $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/diffusiond, else ~/.local/state/diffusiond,
// else ./diffusiond-data.
std::string default_data_dir();

struct ListenAddress {
  std::string host;
  std::uint16_t port = 0;
};
// "HOST:PORT", "[V6]:PORT", ":PORT" (loopback) or "PORT". Throws std::invalid_argument.
ListenAddress parse_listen(const std::string& text);

struct ApiKeys {
  std::vector<std::string> all;       // every accepted key
  std::vector<std::string> priority;  // those that may also ask for a priority above 0
};
// API keys from --api-key, --priority-api-key and the lines of --api-key-file ("KEY", or
// "KEY priority" for a key that may prioritise; blank lines and # comments skipped). Throws
// std::runtime_error naming the file (and line) when it cannot be read, has no key or a line
// has an unknown second word.
ApiKeys collect_api_keys(const ServeOptions& options);

}  // namespace diffusiond
