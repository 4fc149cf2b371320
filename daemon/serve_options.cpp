#include "daemon/serve_options.h"

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace diffusiond {

void add_device_tuning_options(CLI::App& cmd, DeviceTuningFlags& t) {
  const auto on_off = CLI::IsMember({"on", "off"});
  cmd.add_option("--cuda-graphs", t.cuda_graphs,
                 "on|off: replay each denoising step's UNet from a CUDA graph captured once per "
                 "shape (batch, size, dtype, prompt length, CFG); CUDA devices only (default on)")
      ->check(on_off);
  cmd.add_option("--cuda-graph-cache", t.cuda_graph_cache,
                 "CUDA graphs kept per CUDA device, the least recently used evicted (default 8)")
      ->check(CLI::Range(1, 256));
  cmd.add_option("--channels-last", t.channels_last,
                 "on|off: UNet and VAE convolutions in channels_last layout on CUDA devices "
                 "(default off; images differ by rounding)")
      ->check(on_off);
  cmd.add_option("--cudnn-benchmark", t.cudnn_benchmark,
                 "on|off: let cuDNN time its convolution algorithms per shape and keep the "
                 "fastest (default off; the choice may differ between runs)")
      ->check(on_off);
}

void add_serve_options(CLI::App& cmd, ServeOptions& o) {
  cmd.add_option("--config", o.config,
                 "Read options from this file: `key = value` lines, keys are the long options "
                 "below without dashes (the systemd unit passes /etc/diffusiond/diffusiond.conf); "
                 "the command line wins")
      ->check(CLI::ExistingFile);
  cmd.add_option("--model", o.model,
                 "Model: a diffusers folder or a Hugging Face repo id in the HF cache (offline). "
                 "Default: $DIFFUSIOND_MODEL, else Stable Diffusion 1.5 from the HF cache, else "
                 "the bundled test model (random weights: noise)");
  cmd.add_option("--variant", o.variant, "Weights variant, e.g. fp16 (*.fp16.safetensors)");
  cmd.add_option("--devices", o.devices,
                 "auto (every CUDA device, else the CPU), cpu, cpu*N (N CPU workers, each with "
                 "its own replica), cuda, or a list like cuda:0,cuda:2")
      ->capture_default_str();
  cmd.add_option("--dtype", o.dtype, "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "fp16", "bf16"}));
  cmd.add_option("--listen", o.listen,
                 "HOST:PORT to serve HTTP on (loopback by default; port 0 picks a free port)")
      ->capture_default_str();
  cmd.add_option("--data-dir", o.data_dir,
                 "Job store (SQLite) and PNG files. Default: $STATE_DIRECTORY, else "
                 "$XDG_STATE_HOME/diffusiond, else ~/.local/state/diffusiond");
  cmd.add_option("--api-key", o.api_keys,
                 "Require `Authorization: Bearer KEY` on every route but /healthz and the UI "
                 "files (repeatable)");
  cmd.add_option("--allowed-hosts", o.allowed_hosts,
                 "Host names to answer besides loopback names, IP addresses and the listen "
                 "address, e.g. the name a reverse proxy forwards (DNS rebinding guard; * = any)")
      ->delimiter(',');
  cmd.add_option("--allowed-origins", o.allowed_origins,
                 "Web origins (scheme://host[:port]) besides the UI's own that may POST and "
                 "DELETE (cross-site request guard; * = any)")
      ->delimiter(',');
  cmd.add_option("--priority-api-key", o.priority_api_keys,
                 "Like --api-key, and requests with this key may use a priority above 0 "
                 "(repeatable)");
  cmd.add_option("--api-key-file", o.api_key_file,
                 "File with API keys, one per line, 'KEY priority' for one that may use a "
                 "priority above 0 (# comments); safer than --api-key");
  cmd.add_option("--dispatch", o.dispatch,
                 "round-robin: images rotate over the devices; least-loaded: an idle device "
                 "takes the next image")
      ->capture_default_str()
      ->check(CLI::IsMember({"round-robin", "least-loaded"}));
  cmd.add_option("--max-batch", o.max_batch,
                 "Images of different requests a device runs as one UNet batch when they are "
                 "compatible (same size, steps, sampler, CFG on/off); 0 = auto: 4 on CUDA, 1 "
                 "on the CPU")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  cmd.add_option("--batch-wait-ms", o.batch_wait_ms,
                 "How long a device waits for compatible images to fill a batch (0: it never "
                 "idles for them, it batches what is already queued)")
      ->capture_default_str()
      ->check(CLI::Range(0, 60000));
  add_device_tuning_options(cmd, o.tuning);
  cmd.add_option("--max-queue", o.max_queue, "Queued images beyond which submissions get 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  cmd.add_option("--max-pixels", o.max_pixels, "Largest width x height accepted")
      ->capture_default_str()
      ->check(CLI::Range(64 * 64, 16384 * 16384));
  cmd.add_option("--max-steps", o.max_steps, "Most denoising steps accepted")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd.add_option("--max-n", o.max_n, "Most images per prompt accepted")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd.add_option("--max-connections", o.max_connections,
                 "Concurrent HTTP connections; at the cap a new one evicts the longest-idle "
                 "one; with none idle, new ones get 503 (/healthz and /readyz still answer)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd.add_option("--max-connections-per-client", o.max_connections_per_client,
                 "Concurrent HTTP connections per client IP address (loopback exempt unless "
                 "--limit-loopback); more get 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd.add_option("--rate-limit", o.rate_limit,
                 "Requests per second per client IP address (a token bucket of --rate-burst; "
                 "/healthz and /readyz exempt); more get 429. 0: no limit")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  cmd.add_option("--rate-burst", o.rate_burst,
                 "Requests a client may send at once before --rate-limit applies")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1e6));
  cmd.add_flag("--limit-loopback", o.limit_loopback,
               "Apply the per-client limits to loopback clients too (exempt by default: local "
               "processes, and a reverse proxy, whose clients all look like loopback)");
  cmd.add_option("--keep-days", o.keep_days,
                 "Delete finished jobs and their PNGs after this many days (0: keep)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  cmd.add_option("--max-images", o.max_images,
                 "Keep at most this many PNGs; the oldest finished jobs go first (0: no cap)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000000));
  cmd.add_option(
         "--max-images-mb", o.max_images_mb,
         "Keep at most this many MiB of PNGs; the oldest finished jobs go first (0: no cap)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000000));
  cmd.add_option("--min-free-mb", o.min_free_mb,
                 "Free MiB the data dir keeps: below it, no new jobs (507 storage_full) or images "
                 "until space is freed (0: only when a write fails)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000000));
  cmd.add_option("--png-compression", o.png_compression, "zlib level of the PNG files, 0..9")
      ->capture_default_str()
      ->check(CLI::Range(0, 9));
  cmd.add_option("--png-threads", o.png_threads, "CPU threads encoding PNGs")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd.add_option("--threads", o.threads,
                 "Intra-op CPU threads shared by the CPU workers (each gets total/N; 0: "
                 "$OMP_NUM_THREADS if set, else every core)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  cmd.add_option("--io-threads", o.io_threads, "HTTP I/O threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd.add_option("--drain-timeout", o.drain_timeout_s,
                 "On SIGTERM, seconds running images get to finish before they stop and are "
                 "kept queued for the next start")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600));
  cmd.add_option("--default-steps", o.default_steps,
                 "Steps when a request gives none; 0: the model family's (SD 1.x/2.x 50, SDXL 30, "
                 "SD-Turbo/SDXL-Turbo 1)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  cmd.add_option("--device-failure-threshold", o.device_failure_threshold,
                 "Failures in a row after which a device is unhealthy: it takes no new work "
                 "and its queue moves to the other devices")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd.add_option("--device-probe-interval", o.device_probe_interval_s,
                 "Seconds before an unhealthy device is given one task again (its probe); "
                 "doubles after each failed probe, up to 16 times")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400));
  // A test facility, left out of --help: see daemon/fault_injection.h and daemon/README.md.
  cmd.add_option("--inject-faults", o.inject_faults,
                 "TESTS ONLY: make generations fail, e.g. cpu:1=error or cuda:0=oom:after=2")
      ->group("");
  cmd.add_option("--log-level", o.log_level, "trace, debug, info, warn, error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
}

void apply_config_file(CLI::App& cmd, const std::string& path) {
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::FileError& e) {
    throw CLI::FileError(std::string("cannot read the config file: ") + e.what());
  }
  for (const auto& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    // Keys may sit at the top level or in a [serve] section.
    std::string name = item.name;
    if (!item.parents.empty() && !(item.parents.size() == 1 && item.parents[0] == "serve"))
      name = item.parents.back() + "." + item.name;
    if (name == "config")
      throw CLI::ValidationError(path, "a config file cannot name another config file");
    auto* option = cmd.get_option_no_throw("--" + name);
    if (!option)
      throw CLI::ValidationError(
          path, "unknown option '" + name + "' (see `diffusiond serve --help` for the names)");
    if (option->count() > 0) continue;  // given on the command line
    try {
      option->add_result(item.inputs);
      option->run_callback();
    } catch (const CLI::ParseError& e) {
      throw CLI::ValidationError(path, "'" + name + "': " + e.what());
    }
  }
}

std::string default_data_dir() {
  if (const char* state = std::getenv("STATE_DIRECTORY"); state && *state) {
    std::string first = state;  // systemd may list several, separated by ':'
    return first.substr(0, first.find(':'));
  }
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg)
    return std::string(xdg) + "/diffusiond";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.local/state/diffusiond";
  return "diffusiond-data";
}

ListenAddress parse_listen(const std::string& text) {
  ListenAddress out{"127.0.0.1", 0};
  std::string port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw std::invalid_argument("--listen: expected [IPV6]:PORT, got '" + text + "'");
    out.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (const auto colon = text.rfind(':'); colon != std::string::npos) {
    if (text.find(':') != colon)
      throw std::invalid_argument("--listen: write IPv6 addresses as [ADDR]:PORT");
    if (colon > 0) out.host = text.substr(0, colon);
    port = text.substr(colon + 1);
  } else {
    port = text;
  }
  std::size_t used = 0;
  long value = -1;
  try {
    value = std::stol(port, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (port.empty() || used != port.size() || value < 0 || value > 65535)
    throw std::invalid_argument("--listen: bad port in '" + text + "' (0..65535)");
  out.port = static_cast<std::uint16_t>(value);
  return out;
}

ApiKeys collect_api_keys(const ServeOptions& options) {
  ApiKeys keys;
  for (const auto& key : options.api_keys)
    if (!key.empty()) keys.all.push_back(key);
  for (const auto& key : options.priority_api_keys)
    if (!key.empty()) {
      keys.all.push_back(key);
      keys.priority.push_back(key);
    }
  if (!options.api_key_file.empty()) {
    std::ifstream in(options.api_key_file);
    if (!in) throw std::runtime_error("cannot read --api-key-file " + options.api_key_file);
    std::string line;
    int found = 0, number = 0;
    while (std::getline(in, line)) {
      ++number;
      std::istringstream words(line);
      std::string key, right, extra;
      words >> key >> right >> extra;
      if (key.empty() || key[0] == '#') continue;
      if ((!right.empty() && right != "priority") || !extra.empty())
        throw std::runtime_error("--api-key-file " + options.api_key_file + " line " +
                                 std::to_string(number) +
                                 ": expected 'KEY' or 'KEY priority', got more");
      keys.all.push_back(key);
      if (right == "priority") keys.priority.push_back(key);
      ++found;
    }
    if (found == 0)
      throw std::runtime_error("--api-key-file " + options.api_key_file + " holds no key");
  }
  return keys;
}

}  // namespace diffusiond
