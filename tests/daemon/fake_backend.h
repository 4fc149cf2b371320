// A torch-free stand-in for the model, for the daemon core's unit tests: images are a pure
// function of (prompt, seed, size) so results can be checked independently; prompts steer
// behaviour: "FAIL" always throws, "OOM" runs out of device memory (DeviceOutOfMemory), "BLOCK"
// waits at step 1 until release() is called. Devices listed in failing_devices throw on every
// image; `faults` (daemon/fault_injection.h, as --inject-faults) fails chosen generations.
// Batches step in lockstep (every image's step 1, then step 2, ...): an image whose progress
// returns false leaves, a FAIL/OOM prompt or a fault fails the whole batch, as a real one.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "daemon/fault_injection.h"
#include "daemon/image_generator.h"

namespace diffusiond::test {

// What image the fake makes for a task: pixel i = (seed * 31 + i + prompt length) mod 256.
RgbImage expected_fake_image(const std::string& prompt, std::uint64_t seed, int width, int height);

struct FakeCall {
  std::string device;
  std::string prompt;
  std::uint64_t seed = 0;
  std::string model;  // the ImageSpec's (resolved) model name
  int batch_size = 1;  // images of its generation (generate_batch)
};

struct FakeLoad {
  std::string device;
  int model = 0;
};

class FakeBackend : public ModelBackend {
 public:
  std::set<std::string> failing_devices;  // set before start
  std::set<std::string> failing_loads;    // load_replica throws for these
  std::shared_ptr<FaultInjector> faults;  // set before start; null = none
  // The models served, by id (set before start); default: one, "fake-model" (16x8, 3 steps).
  std::vector<ModelInfo> model_list = {fake_model_info()};
  std::set<std::string> failing_models;  // loading these (by name) throws "fake load failure"

  static ModelInfo fake_model_info();
  std::vector<ModelInfo> models() const override { return model_list; }
  std::optional<std::string> canonical_scheduler(const std::string& name) const override;
  using ModelBackend::load_replica;
  std::unique_ptr<ImageGenerator> load_replica(const DeviceSpec& device, int model) override;
  std::vector<FakeLoad> loads() const;  // load_replica calls that succeeded, in order

  void hold_loads();  // load_replica waits until release_loads()
  void release_loads();
  void release();                                        // lets every BLOCK generation continue
  bool wait_blocked(int count, int timeout_ms = 10000);  // until `count` generations wait
  std::vector<FakeCall> calls() const;                   // generations started, in order
  void record(FakeCall call);
  // Used by the generators.
  void block_until_released();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
  bool loads_held_ = false;
  int blocked_ = 0;
  std::vector<FakeCall> calls_;
  std::vector<FakeLoad> loads_;
};

}  // namespace diffusiond::test
