// `diffusiond serve`: the daemon. Wires the job store, the model backend (one replica per
// device), the core service, the HTTP server and the systemd supervisor together, then waits
// for SIGTERM/SIGINT and drains.
//
// Start-up order: options and config file -> logging -> devices and model resolution -> job
// store (a corrupt or locked database stops here with a clear error) -> core service (recovers
// unfinished jobs; workers load their replicas in parallel) -> HTTP (answers /healthz at once,
// /readyz 503 until loaded) -> READY=1 once every replica finished loading.
// Shutdown: SIGTERM/SIGINT -> STOPPING=1, stop accepting connections, submit() answers 503,
// running images get --drain-timeout seconds then stop and stay queued -> exit 0. A second
// signal exits at once (the store is durable; interrupted images run again at the next start).
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "daemon/commands.h"
#include "daemon/core_service.h"
#include "daemon/device_spec.h"
#include "daemon/dtype.h"
#include "daemon/fault_injection.h"
#include "daemon/job_store.h"
#include "daemon/sd_notify.h"
#include "daemon/serve_logging.h"
#include "daemon/serve_model.h"
#include "daemon/serve_options.h"
#include "daemon/supervisor.h"
#include "daemon/torch_backend.h"
#include "http/server.h"
#include "pipeline/media/png.h"

namespace diffusiond {

namespace {

// --threads 0: $OMP_NUM_THREADS when it is a positive number (what PyTorch users set), else every
// core.
int default_intra_op_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && value > 0 && value <= 4096) return static_cast<int>(value);
    spdlog::warn("OMP_NUM_THREADS='{}' is not a positive number: ignored", env);
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

sigset_t shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// Waits up to `timeout` for SIGTERM/SIGINT; returns the signal or 0.
int wait_signal(std::chrono::milliseconds timeout) {
  const sigset_t set = shutdown_signals();
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>((timeout.count() % 1000) * 1000000)};
  const int sig = ::sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

std::filesystem::path executable_path() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : path;
}

void warn_test_model(const ModelChoice& model) {
  spdlog::warn("************************************************************************");
  spdlog::warn("Serving the bundled TEST model {}: random weights, its images are NOISE.",
               model.folder.root.string());
  spdlog::warn("{}", model.notice);
  spdlog::warn("************************************************************************");
}

void run_serve(CLI::App& cmd, ServeOptions& options) {
  // Signals are taken synchronously by this thread: block them before any thread exists so
  // every thread inherits the mask.
  // A shell starting us in the background leaves SIGINT ignored, and ignored signals never
  // become pending: restore the default disposition (harmless while blocked).
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  const sigset_t signals = shutdown_signals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // Prompts and images are the users' own: the store, the PNGs and their folders are for this
  // user alone, whatever umask the daemon was started with (systemd's unit says the same).
  ::umask(::umask(0) | 077);
  if (!options.config.empty()) apply_config_file(cmd, options.config);
  setup_serve_logging(options.log_level);

  const auto dispatch = parse_dispatch_policy(options.dispatch);
  const auto listen = parse_listen(options.listen);
  const auto devices = parse_devices(options.devices, cuda_device_count());
  const ApiKeys keys = collect_api_keys(options);
  const auto& api_keys = keys.all;
  const std::string data_dir = options.data_dir.empty() ? default_data_dir() : options.data_dir;

  const ModelChoice model = choose_model(options.model, options.variant, executable_path());
  spdlog::info("diffusiond {} starting: model {} ({}, from {})", DIFFUSIOND_VERSION,
               model.folder.name, model.folder.root.string(), model.source);
  if (model.is_test_model) warn_test_model(model);

  int cpu_workers = 0;
  for (const auto& d : devices) cpu_workers += d.kind == DeviceSpec::Kind::cpu ? 1 : 0;
  const int total_threads = options.threads > 0 ? options.threads : default_intra_op_threads();
  const int per_worker = threads_per_worker(total_threads, std::max(1, cpu_workers));
  std::string device_list;
  for (const auto& d : devices) device_list += (device_list.empty() ? "" : ", ") + d.name;
  spdlog::info("devices: {} ({} dispatch{})", device_list, to_string(*dispatch),
               cpu_workers
                   ? ", " + std::to_string(per_worker) + " intra-op thread(s) per CPU worker"
                   : std::string());

  auto store = JobStore::open(data_dir);
  spdlog::info("job store: {}", store->database_path().string());
  const RetentionPolicy retention{options.keep_days, options.max_images,
                                  std::int64_t{options.max_images_mb} << 20};
  if (const auto pruned = store->prune(retention, unix_ms_now()); pruned.jobs_deleted > 0)
    spdlog::info("retention: deleted {} finished job(s), {} image file(s)", pruned.jobs_deleted,
                 pruned.files_deleted);

  TorchBackendOptions backend_options;
  backend_options.dtype = options.dtype;
  backend_options.threads_per_worker = per_worker;
  backend_options.is_test_model = model.is_test_model;
  backend_options.notice = model.notice;
  backend_options.default_steps = options.default_steps;
  backend_options.tuning = resolve_device_tuning(options.tuning);
  if (!options.inject_faults.empty()) {
    std::vector<std::string> names;
    for (const auto& d : devices) names.push_back(d.name);
    const auto rules = parse_fault_rules(options.inject_faults, names);
    for (const auto& rule : rules)
      spdlog::warn("--inject-faults (a test facility): generations on {}", describe(rule));
    backend_options.faults = std::make_shared<FaultInjector>(rules);
  }
  auto backend = make_torch_backend(model.folder, backend_options);

  CoreOptions core;
  core.dispatch = *dispatch;
  core.max_queue = options.max_queue;
  core.max_batch = options.max_batch;
  core.batch_wait = std::chrono::milliseconds(options.batch_wait_ms);
  core.png_threads = options.png_threads;
  core.limits.max_pixels = options.max_pixels;
  core.limits.max_steps = options.max_steps;
  core.limits.max_n = options.max_n;
  core.min_free_bytes = std::uint64_t(options.min_free_mb) << 20;
  core.unhealthy_after = options.device_failure_threshold;
  core.probe_interval = std::chrono::seconds(options.device_probe_interval_s);
  core.dtype = resolve_dtype(options.dtype, devices.front().kind == DeviceSpec::Kind::cuda);
  const int compression = options.png_compression;
  CoreService service(*store, *backend, devices, core,
                      [compression](const RgbImage& image, const PngGenerationInfo& info) {
                        return encode_png_with_metadata(image, info, compression);
                      });
  service.start();

  HttpOptions http_options;
  http_options.host = listen.host;
  http_options.port = listen.port;
  http_options.io_threads = options.io_threads;
  http_options.api_keys = api_keys;
  http_options.priority_api_keys = keys.priority;
  http_options.allowed_hosts = options.allowed_hosts;
  http_options.allowed_origins = options.allowed_origins;
  http_options.max_connections = options.max_connections;
  http_options.max_connections_per_client = options.max_connections_per_client;
  http_options.rate_limit = options.rate_limit;
  http_options.rate_burst = options.rate_burst;
  http_options.limit_loopback = options.limit_loopback;
  HttpServer http(service, http_options);
  const std::uint16_t port = http.start();
  const std::string host =
      listen.host.find(':') != std::string::npos ? "[" + listen.host + "]" : listen.host;
  const std::string url = "http://" + host + ":" + std::to_string(port);
  spdlog::info("diffusiond: listening on {}/{}", url,
               api_keys.empty() ? "" : " (API key required)");
  std::cout << "diffusiond: listening on " << url << std::endl;
  const bool loopback =
      listen.host == "localhost" || listen.host == "::1" || listen.host.rfind("127.", 0) == 0;
  if (!loopback && api_keys.empty())
    spdlog::warn(
        "listening on {} without an API key: anyone who can reach this port can use "
        "the GPUs and read every prompt and image; set api-key-file",
        listen.host);

  Supervisor supervisor(service, *store, {retention});
  supervisor.start();

  int sig = 0;
  while (!service.loading_finished() && sig == 0) sig = wait_signal(std::chrono::milliseconds(200));
  if (sig == 0) {
    if (!service.wait_loaded(
            std::chrono::milliseconds(0))) {  // not ready() (a full disk is not this)
      supervisor.stop();
      http.stop();
      service.drain(std::chrono::milliseconds(0));
      throw std::runtime_error("the model could not be loaded on any device (see the log above)");
    }
    notify_systemd("READY=1\nSTATUS=" + service.status_line());
    spdlog::info("ready: the model is loaded on {} device(s); open {}/ in a browser",
                 devices.size(), url);
    if (model.is_test_model) warn_test_model(model);
    while (sig == 0) sig = wait_signal(std::chrono::seconds(3600));
  }

  spdlog::info("{}: draining (up to {} s for running images)", sig == SIGINT ? "SIGINT" : "SIGTERM",
               options.drain_timeout_s);
  notify_systemd("STOPPING=1\nSTATUS=draining");
  std::thread([] {  // a second signal: leave now
    if (const int again = wait_signal(std::chrono::hours(24 * 365)); again > 0) {
      spdlog::warn("second signal: exiting without finishing the drain");
      std::_Exit(128 + again);
    }
  })
      .detach();
  http.stop_accepting();
  service.drain(std::chrono::seconds(options.drain_timeout_s));
  supervisor.stop();
  http.stop();
  spdlog::info("stopped; {} image(s) stay queued for the next start", service.queued_images());
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve text-to-image over HTTP with one model replica per device (see --help for every "
      "option; each can also be set in a --config file)");
  auto options = std::make_shared<ServeOptions>();
  add_serve_options(*cmd, *options);
  cmd->callback([cmd, options] { run_serve(*cmd, *options); });
}

}  // namespace diffusiond
