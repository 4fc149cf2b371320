// The device-independent half of the CUDA graphs of the denoising step (pipeline/step_graphs.h),
// on the CPU with the tiny model's real UNet: a stand-in capturer whose "graph" re-runs what was
// captured on the static buffers (as a CUDA replay re-runs the recorded kernels on the same
// memory). Checks the cache key, that replays see each call's inputs, LRU eviction, the
// once-per-shape eager fallback when a capture fails, invalidation when the weights move, and
// that a CPU replica ignores the tuning. The CUDA half is tested in tests/daemon/test_daemon_gpu.
#include <catch2/catch.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipeline/cuda_graph_step.h"
#include "pipeline/device_sync.h"
#include "pipeline/model_folder.h"
#include "pipeline/step_graphs.h"
#include "pipeline/txt2img.h"
#include "pipeline/unet.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = (fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1").string();

UNet2DConditionModel& tiny_unet() {
  static UNet2DConditionModel unet = [] {
    auto u = load_unet(resolve_model(kTiny), torch::kCPU, torch::kFloat32);
    u->eval();
    return u;
  }();
  return unet;
}

std::vector<torch::Tensor> weights_of(UNet2DConditionModel& unet) {
  std::vector<torch::Tensor> w = unet->parameters();
  for (const auto& b : unet->buffers()) w.push_back(b);
  return w;
}

// batch rows, latent side, text length: fresh values from `seed`.
UNetInputs inputs(int64_t batch, int64_t side, int64_t length, std::uint64_t seed) {
  auto g = at::detail::createCPUGenerator(seed);
  UNetInputs in;
  in.sample = torch::randn({batch, 4, side, side}, g, torch::kFloat32);
  in.timestep = torch::full({}, 500.0 + static_cast<double>(seed), torch::kFloat32);
  in.embeds = torch::randn({batch, length, 32}, g, torch::kFloat32);
  return in;
}

torch::Tensor eager(const UNetInputs& in) {
  return tiny_unet()->forward(in.sample, in.timestep, in.embeds, in.added);
}

struct CaptureLog {
  int captures = 0;  // capture() calls
  int replays = 0;
  int bodies = 0;  // runs of the captured body (warm-up, capture, replays)
};

// A stand-in for the CUDA capturer: warm-up and capture run the body; a replay runs it again on
// the static buffers as they are then and writes the result into the captured output in place
// (as a CUDA replay rewrites the graph's memory); fail_next(true) makes the capture throw.
class RerunCapturer final : public GraphCapturer {
 public:
  explicit RerunCapturer(CaptureLog& log) : log_(log) {}
  std::unique_ptr<ReplayableGraph> capture(const std::function<torch::Tensor()>& body) override {
    ++log_.captures;
    (void)body();  // warm-up
    ++log_.bodies;
    torch::Tensor out = body();  // the "captured" run
    ++log_.bodies;
    if (fail_next_) throw std::runtime_error("operation not permitted when stream is capturing");
    struct Graph final : ReplayableGraph {
      Graph(std::function<torch::Tensor()> b, torch::Tensor out, CaptureLog& l)
          : body(std::move(b)), log(l) {
        output_ = std::move(out);
      }
      void replay() override {
        ++log.replays;
        ++log.bodies;
        output_.copy_(body());
      }
      std::function<torch::Tensor()> body;
      CaptureLog& log;
    };
    return std::make_unique<Graph>(body, std::move(out), log_);
  }
  void fail_next(bool on) { fail_next_ = on; }

 private:
  CaptureLog& log_;
  bool fail_next_ = false;
};

// A capturer that fails while *current_batch == batch (the test sets it before each call).
class FailingFor final : public GraphCapturer {
 public:
  FailingFor(CaptureLog& log, int64_t batch, const int64_t* current_batch)
      : inner_(log), batch_(batch), current_(current_batch) {}
  std::unique_ptr<ReplayableGraph> capture(const std::function<torch::Tensor()>& body) override {
    inner_.fail_next(*current_ == batch_);
    return inner_.capture(body);
  }

 private:
  RerunCapturer inner_;
  int64_t batch_;
  const int64_t* current_;
};

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && torch::equal(a, b);
}

}  // namespace

TEST_CASE("the graph key tells apart every shape a graph is fixed to", "[graphs]") {
  const auto base = UNetGraphCache::key_of(inputs(2, 8, 77, 1));
  CHECK(UNetGraphCache::key_of(inputs(2, 8, 77, 2)) == base);   // values are not part of it
  CHECK(UNetGraphCache::key_of(inputs(4, 8, 77, 1)) != base);   // batch (CFG doubles it)
  CHECK(UNetGraphCache::key_of(inputs(2, 16, 77, 1)) != base);  // latent size
  CHECK(UNetGraphCache::key_of(inputs(2, 8, 154, 1)) != base);  // text sequence length
  auto half = inputs(2, 8, 77, 1);
  half.sample = half.sample.to(torch::kBFloat16);
  CHECK(UNetGraphCache::key_of(half) != base);  // dtype
  auto cl = inputs(2, 8, 77, 1);
  cl.sample = cl.sample.contiguous(torch::MemoryFormat::ChannelsLast);
  CHECK(UNetGraphCache::key_of(cl) != base);  // layout
  auto xl = inputs(2, 8, 77, 1);
  xl.added.text_embeds = torch::zeros({2, 16});
  xl.added.time_ids = torch::zeros({2, 6});
  CHECK(UNetGraphCache::key_of(xl) != base);  // SDXL's added conditions
}

TEST_CASE("replays give eager's bits at two shapes and see each call's own inputs", "[graphs]") {
  torch::NoGradGuard no_grad;
  CaptureLog log;
  UNetGraphCache cache(std::make_unique<RerunCapturer>(log), 4, weights_of(tiny_unet()), {});
  const UNetEval eval = [](const UNetInputs& in) { return eager(in); };
  for (const auto& [batch, side] : std::vector<std::pair<int64_t, int64_t>>{{2, 8}, {4, 16}}) {
    INFO("batch " << batch << ", latent " << side << "x" << side);
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      const UNetInputs in = inputs(batch, side, 77, seed);
      const torch::Tensor got = cache.run(in, eval);
      CHECK(same_bits(got, eager(in)));  // a replay that kept the first call's inputs fails here
    }
  }
  const auto stats = cache.stats();
  CHECK(stats.enabled);
  CHECK(stats.captures == 2);
  CHECK(stats.replays == 6);
  CHECK(stats.eager_runs == 0);
  CHECK(stats.size == 2);
  CHECK(log.captures == 2);
  CHECK(log.replays == 6);
}

TEST_CASE("the result outlives the next replay (samplers keep model outputs)", "[graphs]") {
  torch::NoGradGuard no_grad;
  CaptureLog log;
  UNetGraphCache cache(std::make_unique<RerunCapturer>(log), 2, weights_of(tiny_unet()), {});
  const UNetEval eval = [](const UNetInputs& in) { return eager(in); };
  const UNetInputs a = inputs(2, 8, 77, 1), b = inputs(2, 8, 77, 2);
  const torch::Tensor first = cache.run(a, eval);
  const torch::Tensor kept = first.clone();
  (void)cache.run(b, eval);
  CHECK(same_bits(first, kept));
}

TEST_CASE("a full graph cache evicts the least recently used shape", "[graphs]") {
  torch::NoGradGuard no_grad;
  CaptureLog log;
  UNetGraphCache cache(std::make_unique<RerunCapturer>(log), 2, weights_of(tiny_unet()), {});
  const UNetEval eval = [](const UNetInputs& in) { return eager(in); };
  auto run = [&](int64_t batch) {
    const UNetInputs in = inputs(batch, 8, 77, static_cast<std::uint64_t>(batch));
    CHECK(same_bits(cache.run(in, eval), eager(in)));
  };
  run(1);
  run(2);
  run(1);  // 1 is now the most recently used
  CHECK(log.captures == 2);
  run(3);  // evicts 2
  CHECK(log.captures == 3);
  CHECK(cache.stats().evictions == 1);
  CHECK(cache.stats().size == 2);
  run(1);  // still cached
  CHECK(log.captures == 3);
  run(2);  // was evicted: captured again (evicts 3)
  CHECK(log.captures == 4);
  CHECK(cache.stats().evictions == 2);
  run(3);
  CHECK(log.captures == 5);
  CHECK(cache.stats().evictions == 3);
}

TEST_CASE("a shape whose capture fails runs eagerly from then on, with one warning", "[graphs]") {
  torch::NoGradGuard no_grad;
  CaptureLog log;
  int64_t current_batch = 0;
  std::vector<std::string> warnings;
  UNetGraphCache cache(std::make_unique<FailingFor>(log, 3, &current_batch), 4,
                       weights_of(tiny_unet()),
                       [&](const std::string& w) { warnings.push_back(w); });
  const UNetEval eval = [](const UNetInputs& in) { return eager(in); };
  for (int round = 0; round < 3; ++round) {
    for (int64_t batch : {2, 3}) {
      current_batch = batch;
      const UNetInputs in = inputs(batch, 8, 77, static_cast<std::uint64_t>(10 * round + batch));
      CHECK(same_bits(cache.run(in, eval), eager(in)));
    }
  }
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Catch::Contains("[3, 4, 8, 8]"));
  CHECK_THAT(warnings[0], Catch::Contains("not permitted when stream is capturing"));
  CHECK_THAT(warnings[0], Catch::Contains("runs eagerly"));
  const auto stats = cache.stats();
  CHECK(stats.failures == 1);
  CHECK(stats.eager_runs == 3);  // the failed capture's own call, then two more
  CHECK(stats.captures == 1);    // batch 2 only
  CHECK(stats.replays == 3);
  CHECK(log.captures == 2);  // batch 3 was tried once
}

TEST_CASE("graphs are dropped when the UNet's weights move (a LoRA's set_data)", "[graphs]") {
  torch::NoGradGuard no_grad;
  auto unet = load_unet(resolve_model(kTiny), torch::kCPU, torch::kFloat32);
  unet->eval();
  CaptureLog log;
  UNetGraphCache cache(std::make_unique<RerunCapturer>(log), 4, weights_of(unet), {});
  const UNetEval eval = [&](const UNetInputs& in) {
    return unet->forward(in.sample, in.timestep, in.embeds, in.added);
  };
  const UNetInputs in = inputs(2, 8, 77, 5);
  (void)cache.run(in, eval);
  (void)cache.run(in, eval);
  CHECK(log.captures == 1);
  // Another tensor for one weight, as a LoRA merge does: the old graph would read the old one.
  auto params = unet->parameters();
  params.front().set_data(params.front().detach() * 1.5);
  const torch::Tensor got = cache.run(in, eval);
  CHECK(same_bits(got, eval(in)));
  CHECK(log.captures == 2);
  CHECK(cache.stats().invalidations == 1);
  (void)cache.run(in, eval);
  CHECK(log.captures == 2);  // the new graph stays
}

TEST_CASE("this build reports whether it has CUDA graphs, and a CPU replica ignores the tuning",
          "[graphs]") {
#if !defined(DIFFUSIOND_TORCH_CUDA)
  CHECK_FALSE(cuda_graphs_built());
  CHECK(make_cuda_graph_capturer(0) == nullptr);
#endif
  auto pipe = StableDiffusion::load(resolve_model(kTiny), torch::kCPU, torch::kFloat32);
  Txt2ImgParams p;
  p.prompts = {"a lighthouse"};
  p.steps = 3;
  p.width = p.height = 64;
  p.seed = 3;
  const auto before = pipe->generate(p).front();
  DeviceTuning tuning;
  tuning.channels_last = true;
  tuning.cudnn_benchmark = true;
  pipe->set_device_tuning(tuning);
  CHECK_FALSE(pipe->graph_stats().enabled);
  CHECK(pipe->generate(p).front().pixels == before.pixels);
}

TEST_CASE("the step fence and the host copy are no-ops on the CPU", "[graphs]") {
  StepFence fence(torch::kCPU, 2);
  for (int i = 0; i < 5; ++i) {
    fence.launched();
    fence.wait();
  }
  const torch::Tensor t = torch::arange(12, torch::kFloat32).view({3, 4});
  CHECK(same_bits(copy_to_host(t), t));
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3));
  use_channels_last(*conv);
  CHECK(conv->weight.is_contiguous(torch::MemoryFormat::ChannelsLast));
  CHECK_FALSE(conv->weight.is_contiguous());
}
