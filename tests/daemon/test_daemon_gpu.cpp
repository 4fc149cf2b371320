// CUDA checks of the torch backend (label gpu): every CUDA replica runs on its own stream from
// the pool (not the default stream), and images made on the GPU match the CPU's. The CPU build
// compiles this file too: without a CUDA device each CUDA test case ends its process with
// kSkipExitCode, which ctest reports as skipped (SKIP_RETURN_CODE, tests/daemon/CMakeLists.txt).
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <thread>

#include "daemon/core_service.h"
#include "daemon/torch_backend.h"
#include "golden_pipeline.h"
#include "gpu_test_util.h"
#include "pipeline/attention_ops.h"
#include "pipeline/cuda_graph_step.h"
#include "pipeline/device_sync.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/safetensors.h"
#include "pipeline/txt2img.h"
#include "temp_dir.h"

#include <fstream>
#include <sstream>

#if DIFFUSIOND_TORCH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

using namespace diffusiond;
using namespace diffusiond::gpu_test;

namespace {
ImageSpec task(std::uint64_t seed) {
  ImageSpec spec;
  spec.prompt = "a watercolor fox";
  spec.negative_prompt = "blurry";
  spec.steps = 8;
  spec.guidance_scale = 7.5;
  spec.seed = seed;
  spec.width = spec.height = 64;
  spec.scheduler = "euler";
  return spec;
}

Txt2ImgParams golden_params() {
  return testing::golden_pipeline_params(kModel);
}

RgbImage golden_image() {
  return testing::golden_pipeline_image(kModel);
}

double mean_abs_diff(const RgbImage& a, const RgbImage& b) {
  double sum = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    sum += std::abs(static_cast<int>(a.pixels[i]) - static_cast<int>(b.pixels[i]));
  return sum / static_cast<double>(a.pixels.size());
}
}  // namespace

TEST_CASE("the stream code builds everywhere - CPU replicas keep working", "[gpu]") {
  auto backend = make_torch_backend(resolve_model(kModel), {});
  auto replica = backend->load_replica({DeviceSpec::Kind::cpu, 0, "cpu"});
  const auto image = replica->generate_one(task(1), [](int, int) { return true; });
  CHECK(image.width == 64);
  CHECK(image.pixels.size() == 64u * 64 * 3);
}

TEST_CASE("LibTorch's out-of-memory errors become DeviceOutOfMemory, others lose the backtrace",
          "[gpu]") {
  auto captured = [](auto&& thrower) {
    try {
      thrower();
    } catch (...) {
      return std::current_exception();
    }
    return std::exception_ptr();
  };
  auto oom_message = [](std::exception_ptr error) -> std::string {
    try {
      rethrow_generation_error(error);
    } catch (const DeviceOutOfMemory& e) {
      return e.what();
    } catch (...) {
    }
    return "not DeviceOutOfMemory";
  };
  // What CUDA's caching allocator throws (c10::OutOfMemoryError since LibTorch 1.13).
  CHECK_THAT(oom_message(captured([] {
               TORCH_CHECK_WITH(OutOfMemoryError, false,
                                "CUDA out of memory. Tried to allocate 2.00 GiB");
             })),
             Catch::StartsWith("CUDA out of memory. Tried to allocate 2.00 GiB"));
  // A real allocation failure of the CPU allocator (4 PiB: refused without touching memory).
  CHECK_THAT(
      oom_message(captured([] { (void)torch::empty({std::int64_t{1} << 50}, torch::kFloat); })),
      Catch::Contains("allocate"));
  CHECK(oom_message(captured([] { throw std::bad_alloc(); })) ==
        "host memory exhausted (std::bad_alloc)");
  // Any other c10::Error: its message, without "Exception raised from ... frame #0 ...".
  const auto shape_error = captured([] {
    (void)torch::matmul(torch::ones({2, 3}), torch::ones({2, 3}));
  });
  CHECK(oom_message(shape_error) == "not DeviceOutOfMemory");
  try {
    rethrow_generation_error(shape_error);
  } catch (const std::runtime_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("cannot be multiplied"));
    CHECK_THAT(e.what(), !Catch::Contains("frame #"));
  }
  // Anything else passes unchanged.
  CHECK_THROWS_AS(rethrow_generation_error(captured([] { throw std::invalid_argument("x"); })),
                  std::invalid_argument);
}

TEST_CASE("an injected fault on a CPU replica fails inside the pipeline, classified as a real one",
          "[gpu]") {
  TorchBackendOptions options;
  options.faults = std::make_shared<FaultInjector>(
      parse_fault_rules("cpu=oom:times=1,cpu:1=error:after=1", {"cpu", "cpu:1"}));
  auto backend = make_torch_backend(resolve_model(kModel), options);
  auto replica = backend->load_replica({DeviceSpec::Kind::cpu, 0, "cpu"});
  int steps_seen = 0;
  auto progress = [&](int, int) {
    ++steps_seen;
    return true;
  };
  CHECK_THROWS_MATCHES(replica->generate_one(task(1), progress), DeviceOutOfMemory,
                       Catch::Message("out of memory on cpu (injected by --inject-faults)"));
  CHECK(steps_seen == 0);                                       // it struck in the first step
  CHECK(replica->generate_one(task(1), progress).width == 64);  // times=1: then it works
  auto other = backend->load_replica({DeviceSpec::Kind::cpu, 1, "cpu:1"});
  CHECK(other->generate_one(task(2), progress).width == 64);  // after=1
  try {
    other->generate_one(task(2), progress);
    FAIL("no injected error");
  } catch (const DeviceOutOfMemory&) {
    FAIL("an error, not out of memory");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "generation failed on cpu:1 (injected by --inject-faults)");
  }
}

TEST_CASE("each CUDA replica runs on its own non-default stream", "[gpu]") {
  require_cuda();
  auto backend = make_torch_backend(resolve_model(kModel), {});
  const DeviceSpec cuda0{DeviceSpec::Kind::cuda, 0, "cuda:0"};
  std::int64_t stream_id[2] = {-1, -1};
  std::string error[2];
  auto worker = [&](int i) {
    try {
      auto replica = backend->load_replica(cuda0);
      c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
      stream_id[i] = static_cast<std::int64_t>(cuda.getStream(c10::Device(c10::kCUDA, 0)).id());
      const auto image = replica->generate_one(task(3), [](int, int) { return true; });
      if (image.pixels.size() != 64u * 64 * 3) error[i] = "wrong image size";
    } catch (const std::exception& e) {
      error[i] = e.what();
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  CHECK(error[0].empty());
  CHECK(error[1].empty());
  CHECK(stream_id[0] != 0);  // 0 is the default (legacy) stream
  CHECK(stream_id[1] != 0);
  CHECK(stream_id[0] != stream_id[1]);
  // This thread never set a stream: it still sees the default one.
  c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  CHECK(cuda.getStream(c10::Device(c10::kCUDA, 0)).id() == 0);
}

TEST_CASE("an fp32 image made on cuda:0 matches the CPU's", "[gpu]") {
  require_cuda();
  TorchBackendOptions fp32;
  fp32.dtype = "fp32";
  auto backend = make_torch_backend(resolve_model(kModel), fp32);
  RgbImage on_gpu, on_cpu;
  std::thread gpu_thread([&] {
    auto replica = backend->load_replica({DeviceSpec::Kind::cuda, 0, "cuda:0"});
    on_gpu = replica->generate_one(task(7), [](int, int) { return true; });
  });
  gpu_thread.join();
  auto cpu = backend->load_replica({DeviceSpec::Kind::cpu, 0, "cpu"});
  on_cpu = cpu->generate_one(task(7), [](int, int) { return true; });
  REQUIRE(on_gpu.pixels.size() == on_cpu.pixels.size());
  const double diff = mean_abs_diff(on_gpu, on_cpu);
  INFO("mean |gpu - cpu| = " << diff << " / 255");
  CHECK(diff < 2.0);
}

TEST_CASE("the daemon core runs a job on cuda:0 in fp16", "[gpu]") {
  require_cuda();
  test::TempDir dir;
  auto store = JobStore::open(dir.path());
  auto backend = make_torch_backend(resolve_model(kModel), {});
  CoreOptions options;
  options.dtype = "fp16";
  CoreService service(*store, *backend, parse_devices("cuda:0", cuda_device_count()), options,
                      [](const RgbImage& image, const PngGenerationInfo& info) {
                        return encode_png_with_metadata(image, info);
                      });
  service.start();
  REQUIRE(service.wait_loaded(std::chrono::minutes(5)));
  GenerateRequest request;
  request.prompts = {"a lighthouse", "a harbour"};
  request.steps = 6;
  request.width = request.height = 64;
  request.scheduler = "euler_a";
  const auto job = service.submit(request);
  for (int i = 0; i < 6000; ++i) {
    if (is_terminal(service.job(job.id)->status)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const auto done = service.job(job.id);
  CHECK(done->status == JobStatus::done);
  for (const auto& image : done->images) {
    CHECK(image.device == "cuda:0");
    CHECK(service.image_path(job.id, image.index));
  }
  CHECK_THAT(service.devices()[0].description, Catch::Contains("fp16"));
  CHECK(service.devices()[0].memory_total_bytes > 0);
}

namespace {
// The fused attention kernels (flash, memory-efficient, cuDNN) of LibTorch 2.x never hold the
// [B, heads, N, N] scores, so a huge image could run for hours before it runs out of memory; the
// math kernel allocates them in the first step. Restores the settings it found. The setters are
// found by overload resolution, so this compiles on every LibTorch (1.13 has only the math one).
template <class C>
auto set_fused_sdp(C& c, bool on, int)
    -> decltype(c.setSDPUseFlash(on), c.setSDPUseMemEfficient(on), c.userEnabledFlashSDP(),
                c.userEnabledMemEfficientSDP(), bool()) {
  const bool before = c.userEnabledFlashSDP() || c.userEnabledMemEfficientSDP();
  c.setSDPUseFlash(on);
  c.setSDPUseMemEfficient(on);
  return before;
}
template <class C>
bool set_fused_sdp(C&, bool, long) {
  return false;
}
template <class C>
auto set_cudnn_sdp(C& c, bool on, int)
    -> decltype(c.setSDPUseCuDNN(on), c.userEnabledCuDNNSDP(), bool()) {
  const bool before = c.userEnabledCuDNNSDP();
  c.setSDPUseCuDNN(on);
  return before;
}
template <class C>
bool set_cudnn_sdp(C&, bool, long) {
  return false;
}
struct MathAttentionOnly {
  MathAttentionOnly()
      : fused(set_fused_sdp(at::globalContext(), false, 0)),
        cudnn(set_cudnn_sdp(at::globalContext(), false, 0)) {}
  ~MathAttentionOnly() {
    if (fused) set_fused_sdp(at::globalContext(), true, 0);
    if (cudnn) set_cudnn_sdp(at::globalContext(), true, 0);
  }
  bool fused, cudnn;
};
}  // namespace

// A real CUDA out-of-memory: a 4096x4096 image's first self-attention asks for the scores of
// 262144 tokens ([2, 8, N, N] in fp16: about 2 TiB). That image fails as device_out_of_memory;
// the device stays healthy (it never made an image that large) and runs the next job.
TEST_CASE("a real CUDA out-of-memory at a huge size fails that image only", "[gpu]") {
  require_cuda();
  const MathAttentionOnly math_attention;
  test::TempDir dir;
  auto store = JobStore::open(dir.path());
  auto backend = make_torch_backend(resolve_model(kModel), {});  // fp16 on CUDA
  CoreOptions options;
  options.dtype = "fp16";
  options.unhealthy_after = 1;  // were the failure counted, the device would be unhealthy
  options.limits.max_pixels = 4096 * 4096;
  CoreService service(*store, *backend, parse_devices("cuda:0", cuda_device_count()), options,
                      [](const RgbImage& image, const PngGenerationInfo& info) {
                        return encode_png_with_metadata(image, info);
                      });
  service.start();
  REQUIRE(service.wait_loaded(std::chrono::minutes(5)));
  auto run = [&](int side) {
    GenerateRequest request;
    request.prompts = {"a very large lighthouse"};
    request.steps = 2;
    request.width = request.height = side;
    request.scheduler = "euler";
    const auto job = service.submit(request);
    for (int i = 0; i < 60000 && !is_terminal(service.job(job.id)->status); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return *service.job(job.id);
  };
  const auto huge = run(4096);
  REQUIRE(huge.status == JobStatus::failed);
  INFO(huge.images[0].error);
  CHECK_THAT(huge.images[0].error, Catch::StartsWith("device_out_of_memory: CUDA out of memory"));
  CHECK_THAT(huge.images[0].error, Catch::EndsWith("(on cuda:0)"));
  auto devices = service.devices();
  CHECK(devices[0].healthy);
  CHECK(devices[0].images_out_of_memory == 2);  // the first run and its retry on cuda:0
  CHECK(devices[0].consecutive_failures == 0);
  const auto small = run(64);
  CHECK(small.status == JobStatus::done);
  CHECK(small.images[0].device == "cuda:0");
  CHECK(service.devices()[0].healthy);
  CHECK(service.ready());
}

// The golden VAE output and image of diffusers (fp32, CPU) against cuda:0. fp32 convolutions on the
// GPU may use TF32 (LibTorch's default, as in PyTorch), fp16 rounds every activation: both are
// close, not bit-equal. The printed figures go into bench/RESULTS.md.
TEST_CASE("cuda:0 reproduces the diffusers golden run in fp32 and fp16", "[gpu]") {
  require_cuda();
  const auto model = resolve_model(kModel);
  auto golden = SafetensorsFile::open(kModel + "/golden/pipeline.safetensors");
  const torch::Tensor golden_decoded = golden->tensor("decoded").to(torch::kFloat64);
  const RgbImage expected = golden_image();
  for (const auto dtype : {torch::kFloat32, torch::kHalf}) {
    const char* name = dtype == torch::kHalf ? "fp16" : "fp32";
    auto pipe = StableDiffusion::load(model, torch::Device(torch::kCUDA, 0), dtype);
    // diffusers draws the noise in the pipeline's dtype (fp16 randn is another sequence): start
    // both runs from the golden fp32 noise, as `latents=` does, to compare the model itself.
    Txt2ImgParams params = golden_params();
    params.latents = golden->tensor("latents.00");
    torch::Tensor decoded;
    const auto images =
        pipe->generate(params, {}, [&](const std::string& key, const torch::Tensor& value) {
          if (key == "decoded") decoded = value.to(torch::kFloat64);
        });
    REQUIRE(images.size() == 1);
    REQUIRE(decoded.defined());
    const double rel_l2 =
        ((decoded - golden_decoded).norm() / golden_decoded.norm()).item<double>();
    const int worst = max_abs_diff(images[0], expected);
    const double mean = mean_abs_diff(images[0], expected);
    WARN("cuda:0 " << name << " vs diffusers fp32 CPU: VAE output rel L2 " << rel_l2
                   << ", image max |diff| " << worst << "/255, mean " << mean << "/255");
    CHECK(rel_l2 < (dtype == torch::kHalf ? 2e-2 : 2e-3));
    CHECK(mean < (dtype == torch::kHalf ? 2.0 : 0.5));
  }
}

// ---- issue 11: batches across requests and no host-device synchronisation in the loop --------

TEST_CASE("cuda:0 fp16: a batch of 4 mixed requests equals each alone, and one can leave it",
          "[gpu][batch]") {
  require_cuda();
  auto pipe =
      StableDiffusion::load(resolve_model(kModel), torch::Device(torch::kCUDA, 0), torch::kFloat16);
  for (const std::string scheduler : {"euler_a", "dpmpp_2m", "pndm"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_batch(scheduler);
    const auto batch = pipe->generate_batch(items);
    const auto partial = pipe->generate_batch(
        items, [](int image, int step, int) { return !(image == 2 && step == 3); });
    CHECK_FALSE(partial.images[2].has_value());
    for (std::size_t k = 0; k < items.size(); ++k) {
      INFO("image " << k);
      const RgbImage alone = pipe->generate(items[k]).front();
      REQUIRE(batch.images[k].has_value());
      CHECK(max_abs_diff(*batch.images[k], alone) <= 1);
      if (k != 2) CHECK(max_abs_diff(*partial.images[k], alone) <= 1);
    }
  }
}

#if DIFFUSIOND_TORCH_CUDA
TEST_CASE("the denoising loop never synchronises the host with the device", "[gpu][sync]") {
  require_cuda();
  auto pipe =
      StableDiffusion::load(resolve_model(kModel), torch::Device(torch::kCUDA, 0), torch::kFloat16);
  for (const std::string scheduler : {"euler", "euler_a", "ddim", "pndm", "dpmpp_2m",
                                      "dpmpp_2m_karras", "lms", "heun", "unipc", "lcm"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_batch(scheduler);
    CHECK(sync_error_of(*pipe, items) == "");
  }
}
#endif
