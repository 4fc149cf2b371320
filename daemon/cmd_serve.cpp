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
#include <memory>
#include <optional>
#include <thread>

#include "daemon/commands.h"
#include "daemon/core_service.h"
#include "daemon/device_spec.h"
#include "daemon/dtype.h"
#include "daemon/fault_injection.h"
#include "daemon/job_store.h"
#include "daemon/model_hasher.h"
#if DIFFUSIOND_HAVE_POSTGRES
#include "daemon/pg/cluster_service.h"
#endif
#include "daemon/sd_notify.h"
#include "daemon/serve_logging.h"
#include "daemon/serve_model.h"
#include "daemon/serve_options.h"
#include "daemon/store_url.h"
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

  const ServedModels served =
      choose_served_models(options.model, options.models_dir, options.variant,
                           options.default_steps, executable_path(), options.model_config);
  const ModelChoice& model = served.choice;
  std::vector<ModelSource> sources = served.models;
  for (const auto& m : sources)
    spdlog::info("model {}: {} ({}, {} MB){}", m.info.name, m.info.path, m.info.format,
                 m.info.size_bytes >> 20,
                 m.info.is_default ? ", the default (from " + model.source + ")" : "");
  if (model.folder.is_single_file())
    spdlog::info("single-file checkpoint: {}", model.folder.config_source);
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

  const std::string store_url = resolve_store_url(options.store, options.store_file);
#if !DIFFUSIOND_HAVE_POSTGRES
  if (!store_url.empty())
    throw std::invalid_argument("--store " + redact_url(store_url) +
                                ": this diffusiond was built without the PostgreSQL store (libpq "
                                "was not found at build time: install libpq-dev and rebuild, or "
                                "configure with -DDIFFUSIOND_POSTGRES=ON)");
#endif
  const RetentionPolicy retention{options.keep_days, options.max_images,
                                  std::int64_t{options.max_images_mb} << 20};
  std::unique_ptr<JobStore> store;  // SQLite; none with a PostgreSQL store
  if (store_url.empty()) {
    store = JobStore::open(data_dir);
    spdlog::info("job store: {}", store->database_path().string());
    if (const auto pruned = store->prune(retention, unix_ms_now()); pruned.jobs_deleted > 0)
      spdlog::info("retention: deleted {} finished job(s), {} image file(s)", pruned.jobs_deleted,
                   pruned.files_deleted);
  } else {
    std::filesystem::create_directories(data_dir);
    spdlog::info("job store: PostgreSQL at {} (a fleet's shared queue)", redact_url(store_url));
  }

  TorchBackendOptions backend_options;
  backend_options.dtype = options.dtype;
  backend_options.threads_per_worker = per_worker;
  backend_options.is_test_model = model.is_test_model;
  backend_options.notice = model.notice;
  backend_options.pad_cond_uncond = options.pad_cond_uncond;
  backend_options.tuning = resolve_device_tuning(options.tuning);
  if (!options.inject_faults.empty()) {
    std::vector<std::string> names;
    for (const auto& d : devices) names.push_back(d.name);
    const auto rules = parse_fault_rules(options.inject_faults, names);
    for (const auto& rule : rules)
      spdlog::warn("--inject-faults (a test facility): generations on {}", describe(rule));
    backend_options.faults = std::make_shared<FaultInjector>(rules);
  }
  const std::filesystem::path lora_dir = options.lora_dir.empty()
                                             ? std::filesystem::path(data_dir) / "loras"
                                             : std::filesystem::path(options.lora_dir);
  auto loras = std::make_shared<const LoraCatalog>(lora_dir);
  spdlog::info("LoRA folder: {} ({} LoRA(s))", lora_dir.string(), loras->names().size());
  backend_options.loras = loras;
  // Hash the folder's LoRAs once in the background, so GET /loras and the first PNGs find them
  // in the cache (hashing never runs on a device thread).
  std::thread([loras] {  // co-owns the catalog; nothing else to wait for
    try {
      loras->list();
    } catch (...) {
    }
  })
      .detach();
  auto backend = make_torch_backend(sources, backend_options);
  // The model hashes (PNG "Model hash", /models), once per file, cached in the data dir: the
  // default's now, every other model's at its first request (never all of a big models dir).
  auto hasher =
      std::make_shared<ModelHasher>(std::filesystem::path(data_dir) / "model-hashes.json");
  for (const auto& m : sources)
    if (m.info.is_default) hasher->hash_in_background({m.info.hash_file});

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
  core.max_loaded_models = options.max_loaded_models;
  core.hasher = hasher;
  core.loras = loras;
  core.dtype = resolve_dtype(options.dtype, devices.front().kind == DeviceSpec::Kind::cuda);
  const int compression = options.png_compression;
  const PngEncoder encoder = [compression](const RgbImage& image, const PngGenerationInfo& info) {
    return encode_png_with_metadata(image, info, compression);
  };
  // One of the two cores: CoreService on the SQLite store, ClusterService on PostgreSQL.
  std::unique_ptr<CoreService> local;
#if DIFFUSIOND_HAVE_POSTGRES
  std::unique_ptr<ClusterService> fleet;
#endif
  if (store) {
    local = std::make_unique<CoreService>(*store, *backend, devices, core, encoder);
    local->start();
  } else {
#if DIFFUSIOND_HAVE_POSTGRES
    ClusterOptions cluster;
    cluster.url = store_url;
    cluster.cache_dir = std::filesystem::path(data_dir) / "pg-image-cache";
    cluster.lease = std::chrono::milliseconds(static_cast<long>(options.lease_seconds * 1000));
    cluster.retention = retention;
    fleet = std::make_unique<ClusterService>(*backend, devices, core, cluster, encoder);
    fleet->start();
#endif
  }
  // f(the core that runs): both have these members.
  auto on_core = [&](auto&& f) -> decltype(auto) {
#if DIFFUSIOND_HAVE_POSTGRES
    if (fleet) return f(*fleet);
#endif
    return f(*local);
  };
  ImageService& service = on_core([](auto& c) -> ImageService& { return c; });
  auto loading_finished = [&] { return on_core([](auto& c) { return c.loading_finished(); }); };
  auto wait_loaded = [&](std::chrono::milliseconds t) {
    return on_core([t](auto& c) { return c.wait_loaded(t); });
  };
  auto drain = [&](std::chrono::milliseconds t) { on_core([t](auto& c) { c.drain(t); }); };
  auto status_line = [&] { return on_core([](auto& c) { return c.status_line(); }); };

  HttpOptions http_options;
  http_options.host = listen.host;
  http_options.port = listen.port;
  http_options.io_threads = options.io_threads;
  http_options.api_keys = api_keys;
  http_options.priority_api_keys = keys.priority;
  http_options.allowed_hosts = options.allowed_hosts;
  http_options.public_url = options.public_url;
  while (!http_options.public_url.empty() && http_options.public_url.back() == '/')
    http_options.public_url.pop_back();
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
#if DIFFUSIOND_HAVE_POSTGRES
  if (fleet) fleet->set_public_url(http_options.public_url.empty() ? url : http_options.public_url);
#endif
  const bool loopback =
      listen.host == "localhost" || listen.host == "::1" || listen.host.rfind("127.", 0) == 0;
  if (!loopback && api_keys.empty())
    spdlog::warn(
        "listening on {} without an API key: anyone who can reach this port can use "
        "the GPUs and read every prompt and image; set api-key-file",
        listen.host);

  std::optional<Supervisor> supervisor;  // the fleet's heartbeat thread does its part
  if (local) {
    supervisor.emplace(*local, *store, SupervisorOptions{retention});
    supervisor->start();
  }

  int sig = 0;
  while (!loading_finished() && sig == 0) sig = wait_signal(std::chrono::milliseconds(200));
  if (sig == 0) {
    if (!wait_loaded(std::chrono::milliseconds(0))) {  // not ready() (a full disk is not this)
      if (supervisor) supervisor->stop();
      http.stop();
      drain(std::chrono::milliseconds(0));
      throw std::runtime_error("the model could not be loaded on any device (see the log above)");
    }
    notify_systemd("READY=1\nSTATUS=" + status_line());
    spdlog::info("ready: {} is loaded on {} device(s), {} model(s) served; open {}/ in a browser",
                 model.folder.name, devices.size(), sources.size(), url);
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
  drain(std::chrono::seconds(options.drain_timeout_s));
  if (supervisor) supervisor->stop();
  http.stop();
  hasher->stop();
  if (local)
    spdlog::info("stopped; {} image(s) stay queued for the next start", local->queued_images());
  else
    spdlog::info("stopped; the images this daemon held are back in the fleet's queue");
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
