#include "fake_backend.h"

#include <chrono>
#include <stdexcept>

namespace diffusiond::test {

RgbImage expected_fake_image(const std::string& prompt, std::uint64_t seed, int width, int height) {
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<std::size_t>(width) * height * 3);
  for (std::size_t i = 0; i < image.pixels.size(); ++i)
    image.pixels[i] = static_cast<std::uint8_t>((seed * 31 + i + prompt.size()) % 256);
  return image;
}

namespace {
class FakeGenerator : public ImageGenerator {
 public:
  FakeGenerator(FakeBackend& backend, DeviceSpec device, bool failing)
      : backend_(backend), device_(std::move(device)), failing_(failing) {}

  RgbImage generate_one(const ImageSpec& task, const StepProgress& progress) override {
    backend_.record({device_.name, task.prompt, task.seed, task.model});
    if (failing_) throw std::runtime_error("fake device failure on " + device_.name);
    if (const auto fault = backend_.faults ? backend_.faults->next(device_.name) : std::nullopt) {
      if (*fault == InjectedFault::out_of_memory)
        throw DeviceOutOfMemory("injected out of memory on " + device_.name);
      throw std::runtime_error("injected failure on " + device_.name);
    }
    if (task.prompt.find("FAIL") != std::string::npos)
      throw std::runtime_error("fake failure for prompt '" + task.prompt + "'");
    if (task.prompt.find("OOM") != std::string::npos)
      throw DeviceOutOfMemory("fake out of memory for prompt '" + task.prompt + "'");
    for (int step = 1; step <= task.steps; ++step) {
      if (step == 2 && task.prompt.find("BLOCK") != std::string::npos)
        backend_.block_until_released();
      if (!progress(step, task.steps)) throw GenerationStopped();
    }
    return expected_fake_image(task.prompt, task.seed, task.width, task.height);
  }
  std::vector<std::optional<RgbImage>> generate_batch(const std::vector<ImageSpec>& tasks,
                                                      const BatchProgress& progress) override {
    const int size = static_cast<int>(tasks.size());
    for (const auto& task : tasks)
      backend_.record({device_.name, task.prompt, task.seed, task.model, size});
    if (failing_) throw std::runtime_error("fake device failure on " + device_.name);
    for (std::size_t k = 0; k < tasks.size(); ++k) {
      const auto fault = backend_.faults ? backend_.faults->next(device_.name) : std::nullopt;
      if (fault && *fault == InjectedFault::out_of_memory)
        throw DeviceOutOfMemory("injected out of memory on " + device_.name);
      if (fault) throw std::runtime_error("injected failure on " + device_.name);
    }
    bool block = false;
    for (const auto& task : tasks) {
      if (task.prompt.find("FAIL") != std::string::npos)
        throw std::runtime_error("fake failure for prompt '" + task.prompt + "'");
      if (task.prompt.find("OOM") != std::string::npos)
        throw DeviceOutOfMemory("fake out of memory for prompt '" + task.prompt + "'");
      block = block || task.prompt.find("BLOCK") != std::string::npos;
    }
    std::vector<bool> alive(tasks.size(), true);
    const int steps = tasks.front().steps;  // a batch shares its steps (the batch key)
    for (int step = 1; step <= steps; ++step) {
      if (step == 2 && block) backend_.block_until_released();
      for (std::size_t k = 0; k < tasks.size(); ++k)
        if (alive[k] && !progress(static_cast<int>(k), step, steps)) alive[k] = false;
    }
    std::vector<std::optional<RgbImage>> out;
    for (std::size_t k = 0; k < tasks.size(); ++k) {
      if (alive[k])
        out.emplace_back(
            expected_fake_image(tasks[k].prompt, tasks[k].seed, tasks[k].width, tasks[k].height));
      else
        out.emplace_back(std::nullopt);
    }
    return out;
  }
  std::string description() const override { return "fake " + device_.name; }
  DeviceMemory memory() const override { return {1000, 10}; }

 private:
  FakeBackend& backend_;
  DeviceSpec device_;
  bool failing_;
};
}  // namespace

ModelInfo FakeBackend::fake_model_info() {
  ModelInfo info;
  info.name = "fake-model";
  info.default_width = 16;
  info.default_height = 8;
  info.default_steps = 3;
  info.default_scheduler = "euler";
  info.schedulers = {{"euler", {"Euler"}}, {"euler_a", {"Euler a"}}};
  return info;
}

std::optional<std::string> FakeBackend::canonical_scheduler(const std::string& name) const {
  if (name == "euler" || name == "Euler") return "euler";
  if (name == "euler_a" || name == "Euler a") return "euler_a";
  return std::nullopt;
}

std::unique_ptr<ImageGenerator> FakeBackend::load_replica(const DeviceSpec& device, int model) {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !loads_held_; });
  }
  if (failing_loads.count(device.name))
    throw std::runtime_error("fake load failure on " + device.name);
  const auto& name = model_list.at(static_cast<std::size_t>(model)).name;
  if (failing_models.count(name))
    throw std::runtime_error("fake load failure of model " + name + ": bad header");
  {
    std::lock_guard lock(mu_);
    loads_.push_back({device.name, model});
  }
  return std::make_unique<FakeGenerator>(*this, device, failing_devices.count(device.name) > 0);
}

void FakeBackend::hold_loads() {
  std::lock_guard lock(mu_);
  loads_held_ = true;
}

void FakeBackend::release_loads() {
  std::lock_guard lock(mu_);
  loads_held_ = false;
  cv_.notify_all();
}

void FakeBackend::release() {
  std::lock_guard lock(mu_);
  released_ = true;
  cv_.notify_all();
}

bool FakeBackend::wait_blocked(int count, int timeout_ms) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return blocked_ >= count; });
}

void FakeBackend::block_until_released() {
  std::unique_lock lock(mu_);
  ++blocked_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return released_; });
}

std::vector<FakeLoad> FakeBackend::loads() const {
  std::lock_guard lock(mu_);
  return loads_;
}

std::vector<FakeCall> FakeBackend::calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}

void FakeBackend::record(FakeCall call) {
  std::lock_guard lock(mu_);
  calls_.push_back(std::move(call));
}

}  // namespace diffusiond::test
