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

namespace {
const std::string kModel = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1";

// ctest runs each test case in its own process (catch_discover_tests), so exiting skips just the
// one test case. Run by hand without a CUDA device, the binary stops at the first CUDA test case.
constexpr int kSkipExitCode = 77;

void require_cuda() {
  if (torch::cuda::is_available()) return;
  std::cout << "no CUDA device: skipped (exit code " << kSkipExitCode << ")" << std::endl;
  std::fflush(nullptr);
  std::_Exit(kSkipExitCode);  // no static destructors: LibTorch's thread pools may be running
}

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

int max_abs_diff(const RgbImage& a, const RgbImage& b) {
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst =
        std::max(worst, std::abs(static_cast<int>(a.pixels[i]) - static_cast<int>(b.pixels[i])));
  return worst;
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

namespace {
std::vector<Txt2ImgParams> mixed_batch(const std::string& scheduler) {
  std::vector<Txt2ImgParams> items;
  const char* prompts[] = {"a red house", "an astronaut riding a horse", "a bowl of fruit",
                           "a red house"};
  const std::optional<std::string> negatives[] = {std::nullopt, "blurry", "", "cartoon"};
  const double scales[] = {7.5, 3.0, 12.0, 7.5};
  for (int k = 0; k < 4; ++k) {
    Txt2ImgParams p;
    p.prompts = {prompts[k]};
    p.negative_prompt = negatives[k];
    p.guidance_scale = scales[k];
    p.seed = 11 + static_cast<std::uint64_t>(k);
    p.steps = 8;
    p.width = p.height = 64;
    p.scheduler = scheduler;
    items.push_back(p);
  }
  return items;
}
}  // namespace

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
  auto& state = c10::cuda::warning_state();
  for (const std::string scheduler : {"euler", "euler_a", "ddim", "pndm", "dpmpp_2m",
                                      "dpmpp_2m_karras", "lms", "heun", "unipc", "lcm"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_batch(scheduler);
    // From the first step's callback to the last one's, any synchronising CUDA call (a
    // blocking copy, .item(), a stream or device synchronize) throws; image 1 leaving the
    // batch at step 3 is inside the checked span too.
    std::string error;
    try {
      pipe->generate_batch(items, [&](int image, int step, int steps) {
        if (step == 1 && image == 0) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
        if (step == steps) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
        return !(image == 1 && step == 3);
      });
    } catch (const std::exception& e) {
      error = e.what();
    }
    state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    CHECK(error == "");
  }
}
#endif

// ---- issue 11: CUDA graphs of the denoising step, the step fence, pinned copies, SDPA --------

namespace {
// The tiny model on cuda:0 in fp16 with the given tuning (graphs off: the eager reference).
std::unique_ptr<StableDiffusion> tiny_cuda(const DeviceTuning& tuning) {
  auto pipe =
      StableDiffusion::load(resolve_model(kModel), torch::Device(torch::kCUDA, 0), torch::kFloat16);
  pipe->set_device_tuning(tuning, [](const std::string& m) { WARN(m); });
  return pipe;
}
DeviceTuning graphs(bool on, int cache = 8) {
  DeviceTuning t;
  t.cuda_graphs = on;
  t.cuda_graph_cache = cache;
  return t;
}
// Every noise prediction of a run (the UNet's output per step, CFG combined), on the host.
std::vector<torch::Tensor> noise_preds(StableDiffusion& pipe, const Txt2ImgParams& p,
                                       RgbImage* image = nullptr) {
  std::vector<torch::Tensor> out;
  auto images = pipe.generate(p, {}, [&](const std::string& key, const torch::Tensor& v) {
    if (key.rfind("noise_pred.", 0) == 0) out.push_back(v.clone());
  });
  if (image) *image = images.front();
  return out;
}
Txt2ImgParams graph_params(int width, int height, int n, double guidance) {
  Txt2ImgParams p;
  p.prompts = {"a lighthouse at dusk"};
  p.negative_prompt = "blurry";
  p.num_images_per_prompt = n;
  p.guidance_scale = guidance;
  p.steps = 5;
  p.width = width;
  p.height = height;
  p.seed = 21;
  p.scheduler = "dpmpp_2m";  // multistep: keeps earlier model outputs
  return p;
}
}  // namespace

TEST_CASE("the device tuning flags resolve to the pipeline's defaults unless given", "[gpu]") {
  const DeviceTuning defaults;
  const DeviceTuning none = resolve_device_tuning({});
  CHECK(none.cuda_graphs == defaults.cuda_graphs);
  CHECK(none.cuda_graph_cache == defaults.cuda_graph_cache);
  CHECK(none.channels_last == defaults.channels_last);
  CHECK(none.cudnn_benchmark == defaults.cudnn_benchmark);
  const DeviceTuning all = resolve_device_tuning({"off", 3, "on", "on"});
  CHECK_FALSE(all.cuda_graphs);
  CHECK(all.cuda_graph_cache == 3);
  CHECK(all.channels_last);
  CHECK(all.cudnn_benchmark);
}

TEST_CASE("cuda:0 fp16: a replayed CUDA graph gives the eager step's bits at two shapes",
          "[gpu][graphs]") {
  require_cuda();
  REQUIRE(cuda_graphs_built());
  auto eager = tiny_cuda(graphs(false));
  auto graphed = tiny_cuda(graphs(true));
  REQUIRE(graphed->graph_stats().enabled);
  CHECK_FALSE(eager->graph_stats().enabled);
  // Shape 1: 64x64, one image, CFG (UNet batch 2); shape 2: 96x64, two images, no CFG.
  for (const auto& p : {graph_params(64, 64, 1, 7.5), graph_params(96, 64, 2, 1.0)}) {
    INFO(p.width << "x" << p.height << ", n " << p.num_images_per_prompt << ", cfg "
                 << p.guidance_scale);
    RgbImage a, b;
    const auto want = noise_preds(*eager, p, &a);
    const auto got = noise_preds(*graphed, p, &b);
    REQUIRE(want.size() == got.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      INFO("step " << i);
      CHECK(torch::equal(want[i], got[i]));
    }
    CHECK(a.pixels == b.pixels);
  }
  const auto stats = graphed->graph_stats();
  CHECK(stats.captures == 2);
  CHECK(stats.failures == 0);
  CHECK(stats.eager_runs == 0);
  CHECK(stats.replays == 10);
}

TEST_CASE("cuda:0: a full graph cache evicts, and images stay the eager ones", "[gpu][graphs]") {
  require_cuda();
  REQUIRE(cuda_graphs_built());
  auto eager = tiny_cuda(graphs(false));
  auto graphed = tiny_cuda(graphs(true, /*cache=*/1));
  const auto small = graph_params(64, 64, 1, 7.5), wide = graph_params(96, 64, 1, 7.5);
  for (const auto* p : {&small, &wide, &small}) {
    RgbImage a, b;
    (void)noise_preds(*eager, *p, &a);
    (void)noise_preds(*graphed, *p, &b);
    CHECK(a.pixels == b.pixels);
  }
  const auto stats = graphed->graph_stats();
  CHECK(stats.captures == 3);
  CHECK(stats.evictions == 2);
  CHECK(stats.size == 1);
  CHECK(stats.failures == 0);
}

TEST_CASE("cuda:0 fp16 with CUDA graphs: a mixed batch of 4 equals each alone, one can leave it",
          "[gpu][graphs][batch]") {
  require_cuda();
  auto pipe = tiny_cuda(graphs(true));
  for (const std::string scheduler : {"euler_a", "dpmpp_2m"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_batch(scheduler);
    const auto batch = pipe->generate_batch(items);
    // Image 2 leaves at step 3: the batch shrinks to 3 (a new graph, captured mid-run).
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
  CHECK(pipe->graph_stats().failures == 0);
}

TEST_CASE("cuda:0: the step fence keeps the host at most N steps ahead of the device", "[gpu]") {
  require_cuda();
  const torch::Device cuda0(torch::kCUDA, 0);
  torch::Tensor a = torch::randn({2048, 2048}, torch::dtype(torch::kFloat16).device(cuda0));
  c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  for (int ahead : {1, 2}) {
    StepFence fence(cuda0, ahead);
    std::deque<c10::Event> mine;  // recorded at the same points as the fence's
    for (int step = 0; step < 8; ++step) {
      for (int k = 0; k < 20; ++k) a = torch::matmul(a, a).clamp(-1, 1);  // a few ms of work
      fence.launched();
      mine.emplace_back(c10::DeviceType::CUDA);
      mine.back().record(guard.getStream(cuda0));
      fence.wait();
      // Every step but the last `ahead` is done on the device when wait() returns.
      for (std::size_t i = 0; i + static_cast<std::size_t>(ahead) < mine.size(); ++i)
        CHECK(mine[i].query());
    }
  }
  // copy_to_host: the same values as a blocking copy, from pinned memory.
  const torch::Tensor host = copy_to_host(a);
  CHECK(host.is_pinned());
  CHECK(torch::equal(host, a.to(torch::kCPU)));
}

namespace {
template <class C>
auto set_math_sdp(C& c, bool on, int)
    -> decltype(c.setSDPUseMath(on), c.userEnabledMathSDP(), bool()) {
  const bool before = c.userEnabledMathSDP();
  c.setSDPUseMath(on);
  return before;
}
template <class C>
bool set_math_sdp(C&, bool, long) {
  return true;
}
}  // namespace

// With the math kernel switched off, scaled_dot_product_attention must pick a fused kernel
// (flash / memory-efficient / cuDNN) or throw "No available kernel": the UNet's attention at
// the SD 1.5 head sizes (40, 80, 160), self and cross. (LibTorch 1.13 never
// calls the fused op: there the check is empty, and no CUDA build of 1.13 is in use.)
TEST_CASE("cuda:0 fp16: SD 1.5's attention shapes run on a fused SDPA kernel", "[gpu]") {
  require_cuda();
  struct NoMath {
    bool before = set_math_sdp(at::globalContext(), false, 0);
    ~NoMath() { set_math_sdp(at::globalContext(), before, 0); }
  } no_math;
  const auto options = torch::dtype(torch::kFloat16).device(torch::kCUDA, 0);
  for (int64_t head_dim : {40, 80, 160}) {
    INFO("head dim " << head_dim);
    const auto q = torch::randn({2, 8, 1024, head_dim}, options);
    const auto k = torch::randn({2, 8, 77, head_dim}, options);
    CHECK_NOTHROW(dot_product_attention(q, q, q));  // self-attention
    CHECK_NOTHROW(dot_product_attention(q, k, k));  // cross-attention (77 tokens)
  }
  // (Not the tiny model: its first block has 32 channels in 8 heads, head size 4, which no fused
  // kernel takes; with the math kernel on, as always in the daemon, it runs on that one.)
}

#if DIFFUSIOND_TORCH_CUDA
TEST_CASE("with CUDA graphs the denoising loop never synchronises the host with the device",
          "[gpu][sync][graphs]") {
  require_cuda();
  auto pipe = tiny_cuda(graphs(true));
  auto& state = c10::cuda::warning_state();
  for (const std::string scheduler : {"euler", "dpmpp_2m", "unipc"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_batch(scheduler);
    std::string error;
    try {
      // Image 1 leaves at step 3: the next step captures a graph for the smaller batch inside
      // the checked span.
      pipe->generate_batch(items, [&](int image, int step, int steps) {
        if (step == 1 && image == 0) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
        if (step == steps) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
        return !(image == 1 && step == 3);
      });
    } catch (const std::exception& e) {
      error = e.what();
    }
    state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    CHECK(error == "");
  }
  CHECK(pipe->graph_stats().failures == 0);
}
#endif
