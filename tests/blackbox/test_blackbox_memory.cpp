// Memory and CPU threads (issue 11, part 5). The CPU replicas of `serve --devices cpu*2` share one
// model's weight pages. On a random SD 1.5-layout model of ~290 MB (make-random-model --arch
// small-sd1, fp32: the weights are used in place from the safetensors memory map), after both
// replicas generated: each weights file is mapped once, the second replica adds far less than the
// model's bytes to the peak RSS (VmHWM), and the peak stays well under twice the model.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "blackbox_util.h"

using namespace diffusiond::testing;
namespace fs = std::filesystem;

namespace {

std::int64_t status_kib(pid_t pid, const std::string& key) {  // "VmHWM" -> kB
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  return -1;
}

int mappings_of(pid_t pid, const fs::path& file) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  int n = 0;
  const std::string name = fs::canonical(file).string();
  while (std::getline(in, line))
    if (line.size() >= name.size() &&
        line.compare(line.size() - name.size(), name.size(), name) == 0)
      ++n;
  return n;
}

struct Peak {
  double hwm_mib = 0;
  int unet_mappings = 0;
};

// Serves the model on `devices`, makes one image per replica, returns the daemon's peak RSS.
Peak serve_and_measure(const fs::path& model, const fs::path& data, const std::string& devices,
                       int replicas) {
  DaemonProcess d(data, {"--devices", devices, "--threads", "2", "--max-batch", "1"}, model);
  std::vector<std::string> ids;
  for (int k = 0; k < replicas; ++k)
    ids.push_back(submit(d.port(), R"({"prompt":"a fox","steps":2,"width":64,"height":64,)"
                                   R"("scheduler":"euler","seed":)" +
                                       std::to_string(k) + "}"));
  for (const auto& id : ids) REQUIRE(wait_finished(d.port(), id)["status"] == "done");
  Peak peak;
  peak.hwm_mib = static_cast<double>(status_kib(d.pid(), "VmHWM")) / 1024.0;
  peak.unet_mappings = mappings_of(d.pid(), model / "unet" / "diffusion_pytorch_model.safetensors");
  return peak;
}

}  // namespace

TEST_CASE("two CPU replicas share the weight pages of one model", "[blackbox][memory]") {
#if defined(__SANITIZE_ADDRESS__)
  // An AddressSanitizer build (scripts/sanitize.sh) holds freed memory in its quarantine and
  // adds shadow memory and redzones to every allocation: its RSS says nothing about ours.
  WARN("skipped: peak RSS is not measurable in an AddressSanitizer build");
  return;
#endif
  TempDir dir("memory");
  const fs::path model = dir.path / "small-sd1";
  const std::string make = daemon_binary().string() + " make-random-model --arch small-sd1 --out " +
                           model.string() + " > " + (dir.path / "make.log").string() + " 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  std::int64_t model_bytes = 0;
  for (const auto& entry : fs::recursive_directory_iterator(model))
    if (entry.path().extension() == ".safetensors") model_bytes += fs::file_size(entry.path());
  const double model_mib = static_cast<double>(model_bytes) / (1 << 20);
  REQUIRE(model_mib > 200);  // large enough that sharing shows against LibTorch's own memory

  // What the daemon and LibTorch take without a model worth counting (the 14 MB fixture).
  const Peak base = serve_and_measure(tiny_model(), dir.path / "base", "cpu*2", 2);
  const Peak one = serve_and_measure(model, dir.path / "one", "cpu", 1);
  const Peak two = serve_and_measure(model, dir.path / "two", "cpu*2", 2);
  INFO("model " << model_mib << " MiB; peak RSS: tiny model cpu*2 " << base.hwm_mib << " MiB, cpu "
                << one.hwm_mib << " MiB, cpu*2 " << two.hwm_mib << " MiB");
  CHECK(one.unet_mappings == 1);
  CHECK(two.unet_mappings == 1);                       // one mapping for both replicas
  CHECK(two.hwm_mib - one.hwm_mib < 0.3 * model_mib);  // a second copy would add ~1x
  // The model's share of the peak: well under two copies (in place: about one).
  CHECK(two.hwm_mib - base.hwm_mib < 1.3 * model_mib);
  std::printf(
      "memory: model %.0f MiB; peak RSS tiny-model cpu*2 %.0f MiB, cpu %.0f MiB, cpu*2 %.0f MiB "
      "(the model's share: %.2fx its bytes)\n",
      model_mib, base.hwm_mib, one.hwm_mib, two.hwm_mib, (two.hwm_mib - base.hwm_mib) / model_mib);
}

namespace {

// NAME=VALUE of /proc/<pid>/environ; "" when absent.
std::string environ_of(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string entry;
  while (std::getline(in, entry, '\0'))
    if (entry.rfind(name + "=", 0) == 0) return entry.substr(name.size() + 1);
  return "";
}

}  // namespace

// pipeline/cpu_thread_env.h: the daemon re-executes itself once so that OpenMP and OpenBLAS
// read idle-thread settings that give the cores back; what the user set stays.
TEST_CASE("the daemon's thread pools sleep when idle unless the user said otherwise",
          "[blackbox][memory]") {
  TempDir dir("threadenv");
  ::unsetenv("OMP_WAIT_POLICY");
  ::unsetenv("OPENBLAS_THREAD_TIMEOUT");
  {
    DaemonProcess d(dir.path / "default", {"--devices", "cpu"});
    CHECK(environ_of(d.pid(), "OMP_WAIT_POLICY") == "PASSIVE");
    CHECK(environ_of(d.pid(), "OPENBLAS_THREAD_TIMEOUT") == "4");
    const std::string id = submit(d.port(), R"({"prompt":"a fox","steps":1,"width":64,)"
                                            R"("height":64,"seed":3})");
    CHECK(wait_finished(d.port(), id)["status"] == "done");
  }
  ::setenv("OMP_WAIT_POLICY", "ACTIVE", 1);
  {
    DaemonProcess d(dir.path / "user", {"--devices", "cpu"});
    CHECK(environ_of(d.pid(), "OMP_WAIT_POLICY") == "ACTIVE");
    CHECK(environ_of(d.pid(), "OPENBLAS_THREAD_TIMEOUT") == "4");
  }
  ::unsetenv("OMP_WAIT_POLICY");
}
