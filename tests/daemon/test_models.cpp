// Several models in one daemon, over the fake backend: the resolver (find_model), per-model
// request defaults, unknown models, the per-device model cache (load on demand, LRU eviction),
// a model that fails to load, the dispatcher's preference for a device holding the model, and
// the model hasher.
#include <catch2/catch.hpp>

#include <openssl/evp.h>
#include <fstream>
#include <map>

#include "daemon/model_cache.h"
#include "daemon/model_hasher.h"
#include "service_harness.h"

using namespace diffusiond;
using namespace diffusiond::test;
using namespace std::chrono_literals;

namespace {

ModelInfo fake(const std::string& name, int width, int height, int steps,
               const std::string& file_name = {}) {
  ModelInfo m = FakeBackend::fake_model_info();
  m.name = name;
  m.file_name = file_name;
  m.path = "/models/" + (file_name.empty() ? name : file_name);
  m.default_width = width;
  m.default_height = height;
  m.default_steps = steps;
  return m;
}

// Three models: "alpha" (default, 16x8, 3 steps), "sub/beta" (a single file, 8x4, 2 steps),
// "gamma" (12x4, 4 steps).
std::vector<ModelInfo> three_models() {
  auto alpha = fake("alpha", 16, 8, 3, "alpha");
  alpha.is_default = true;
  auto beta = fake("sub/beta", 8, 4, 2, "sub/beta.safetensors");
  beta.format = "single_file";
  beta.sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  auto gamma = fake("gamma", 12, 4, 4, "gamma");
  return {alpha, beta, gamma};
}

GenerateRequest bare(const std::string& prompt, std::optional<std::string> model) {
  GenerateRequest r;
  r.prompts = {prompt};
  r.seed = 7;
  r.model = std::move(model);
  return r;
}

class FakeReplica : public ImageGenerator {
 public:
  explicit FakeReplica(int id, std::vector<int>* freed) : id_(id), freed_(freed) {}
  ~FakeReplica() override { freed_->push_back(id_); }
  RgbImage generate_one(const ImageSpec&, const StepProgress&) override { return {}; }
  std::string description() const override { return "replica " + std::to_string(id_); }

 private:
  int id_;
  std::vector<int>* freed_;
};

std::string sha256_of(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr);
  std::string out;
  char hex[3];
  for (unsigned i = 0; i < size; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", digest[i]);
    out += hex;
  }
  return out;
}

}  // namespace

TEST_CASE("find_model resolves names, A1111 titles, file names and hashes", "[models]") {
  const auto models = three_models();
  auto at = [&](const std::string& asked) -> std::string {
    const auto i = find_model(models, asked);
    return i ? models[*i].name : "<none>";
  };
  CHECK(at("") == "alpha");  // the default
  CHECK(at("alpha") == "alpha");
  CHECK(at("sub/beta") == "sub/beta");
  CHECK(at("beta") == "sub/beta");                               // without its sub-folder
  CHECK(at("sub/beta.safetensors") == "sub/beta");               // file name
  CHECK(at("beta.safetensors") == "sub/beta");                   // file name without sub-folder
  CHECK(at("sub/beta.safetensors [0123456789]") == "sub/beta");  // A1111's title
  CHECK(model_title(models[1]) == "sub/beta.safetensors [0123456789]");
  CHECK(at("sub/beta.safetensors [ffffffffff]") == "sub/beta");  // a stale hash: by file name
  CHECK(at("0123456789") == "sub/beta");                         // the short hash
  CHECK(at("GAMMA") == "gamma");                                 // case-insensitive if unique
  CHECK(at("/models/gamma") == "gamma");                         // its path
  CHECK(at("delta") == "<none>");
  CHECK(at("../alpha") == "<none>");
  CHECK(model_names(models, 2) == "alpha, sub/beta (and 1 more)");
}

TEST_CASE("a request's defaults come from the model it names", "[models]") {
  Harness h;
  h.backend.model_list = three_models();
  h.start("cpu");
  const auto a = h.service->submit(bare("x", std::nullopt));
  const auto b = h.service->submit(bare("x", "beta"));
  const auto g = h.service->submit(bare("x", "gamma"));
  CHECK(a.model == "alpha");
  CHECK(b.model == "sub/beta");
  CHECK(g.model == "gamma");
  CHECK(std::make_tuple(a.request.width, a.request.height, a.request.steps) ==
        std::make_tuple(16, 8, 3));
  CHECK(std::make_tuple(b.request.width, b.request.height, b.request.steps) ==
        std::make_tuple(8, 4, 2));
  CHECK(std::make_tuple(g.request.width, g.request.height, g.request.steps) ==
        std::make_tuple(12, 4, 4));
  for (const auto& id : {a.id, b.id, g.id}) CHECK(h.wait_finished(id).status == JobStatus::done);
  // Each ran on its own model (the generator saw the resolved name).
  std::map<std::string, std::string> model_of_size;
  for (const auto& call : h.backend.calls()) model_of_size[call.model] = call.prompt;
  CHECK(model_of_size.count("alpha") == 1);
  CHECK(model_of_size.count("sub/beta") == 1);
  CHECK(model_of_size.count("gamma") == 1);
  // PNG metadata names the model.
  const auto bytes = read_file(*h.service->image_path(b.id, 0));
  std::map<std::string, std::string> chunks;
  for (const auto& chunk : read_png_text_chunks(bytes)) chunks[chunk.keyword] = chunk.text;
  CHECK_THAT(chunks["parameters"], Catch::Contains("Model: sub/beta"));
}

TEST_CASE("an unknown model is refused with unknown_model listing the known ones", "[models]") {
  Harness h;
  h.backend.model_list = three_models();
  h.start("cpu");
  try {
    h.service->submit(bare("x", "nope"));
    FAIL("submitted");
  } catch (const ServiceError& e) {
    CHECK(e.code() == ErrorCode::invalid_request);
    CHECK(e.reason() == "unknown_model");
    CHECK(e.field() == "model");
    CHECK_THAT(e.what(), Catch::Contains("'nope'") && Catch::Contains("alpha, sub/beta, gamma"));
  }
}

TEST_CASE("models load on demand and the least recently used one is evicted", "[models]") {
  Harness h;
  h.backend.model_list = three_models();
  h.options.max_loaded_models = 2;
  h.start("cpu");
  auto run = [&](const std::string& model) {
    h.wait_finished(h.service->submit(bare("p", model)).id);
  };
  auto held = [&] { return h.service->devices().at(0).models; };
  CHECK(held() == std::vector<std::string>{"alpha"});  // the start-up load
  run("beta");
  CHECK(held() == std::vector<std::string>{"sub/beta", "alpha"});
  run("alpha");
  CHECK(held() == std::vector<std::string>{"alpha", "sub/beta"});
  run("gamma");  // evicts beta (least recently used), not alpha
  CHECK(held() == std::vector<std::string>{"gamma", "alpha"});
  const auto d = h.service->devices().at(0);
  CHECK(d.model_loads == 3);
  CHECK(d.model_evictions == 1);
  std::vector<int> loaded;
  for (const auto& l : h.backend.loads()) loaded.push_back(l.model);
  CHECK(loaded == std::vector<int>{0, 1, 2});
  // /models shows where each is loaded.
  std::map<std::string, std::vector<std::string>> where;
  for (const auto& m : h.service->models()) where[m.name] = m.loaded_on;
  CHECK(where["alpha"] == std::vector<std::string>{"cpu"});
  CHECK(where["sub/beta"].empty());
  CHECK(where["gamma"] == std::vector<std::string>{"cpu"});
  CHECK_THAT(h.service->metrics_text(),
             Catch::Contains("diffusiond_device_model_evictions_total{device=\"cpu\"} 1"));
}

TEST_CASE("a model that fails to load fails its job with the loader's message", "[models]") {
  Harness h;
  h.backend.model_list = three_models();
  h.backend.failing_models = {"gamma"};
  h.start("cpu*2");
  auto req = bare("p", "gamma");
  req.n = 4;
  const auto job = h.wait_finished(h.service->submit(req).id);
  CHECK(job.status == JobStatus::failed);
  for (const auto& image : job.images) {
    CHECK(image.status == ImageStatus::failed);
    CHECK_THAT(image.error, Catch::Contains("cannot load model 'gamma'") &&
                                Catch::Contains("fake load failure of model gamma: bad header"));
  }
  // The devices stay healthy and serve the other models.
  for (const auto& d : h.service->devices()) CHECK(d.healthy);
  CHECK(h.wait_finished(h.service->submit(bare("p", "beta")).id).status == JobStatus::done);
  CHECK(h.service->ready());
}

TEST_CASE("the dispatcher prefers a device that holds the task's model", "[models][dispatcher]") {
  SECTION("round robin") {
    Dispatcher d(2, DispatchPolicy::round_robin);
    d.set_models(0, {0});
    d.set_models(1, {1});
    for (int k = 0; k < 2; ++k) {
      TaskRef a{"a", k, 0, 1, -1};
      a.model = 1;
      d.enqueue(a);
    }
    CHECK(d.queued_for(1) == 2);  // both to the holder (its queue is not 2 longer)
    CHECK(d.queued_for(0) == 0);
    TaskRef b{"b", 0, 0, 2, -1};
    b.model = 1;
    d.enqueue(b);  // the holder's queue is now too long: the plain rotation
    CHECK(d.queued_for(0) == 1);
    // Every device holds it: the plain rotation, as with one model.
    Dispatcher all(2, DispatchPolicy::round_robin);
    all.set_models(0, {0});
    all.set_models(1, {0});
    for (int k = 0; k < 4; ++k) all.enqueue({"c", k, 0, 1, -1});
    CHECK(all.queued_for(0) == 2);
    CHECK(all.queued_for(1) == 2);
  }
  SECTION("least loaded") {
    Dispatcher d(2, DispatchPolicy::least_loaded);
    d.set_models(0, {0});
    d.set_models(1, {1});
    TaskRef first{"a", 0, 0, 1, -1};
    first.model = 0;
    TaskRef second{"b", 0, 0, 2, -1};
    second.model = 1;
    d.enqueue(first);
    d.enqueue(second);
    auto t = d.try_take(1);  // passes over "a" (device 0 holds its model)
    REQUIRE(t);
    CHECK(t->job_id == "b");
    t = d.try_take(1);  // nothing it holds left: it takes "a" (work-conserving)
    REQUIRE(t);
    CHECK(t->job_id == "a");
    // A task is passed over a bounded number of times.
    TaskRef starving{"s", 0, 0, 3, -1};
    starving.model = 0;
    d.enqueue(starving);
    for (int i = 0; i < 10; ++i) {
      TaskRef other{"o" + std::to_string(i), 0, 0, 4 + i, -1};
      other.model = 1;
      d.enqueue(other);
    }
    std::vector<std::string> order;
    for (int i = 0; i < 6; ++i) order.push_back(d.try_take(1)->job_id);
    CHECK(std::find(order.begin(), order.end(), "s") != order.end());
  }
}

TEST_CASE("the model cache evicts by count and by memory", "[models]") {
  std::vector<int> freed;
  bool out_of_memory_once = false;
  std::vector<std::vector<int>> changes;
  ModelCache cache(
      3,
      [&](int id) -> std::unique_ptr<ImageGenerator> {
        if (id == 9 && !out_of_memory_once) {
          out_of_memory_once = true;
          throw DeviceOutOfMemory("no room for 9");
        }
        if (id == 13) throw std::runtime_error("broken file");
        return std::make_unique<FakeReplica>(id, &freed);
      },
      [&](const std::vector<int>& held) { changes.push_back(held); });
  cache.acquire(1);
  cache.acquire(2);
  cache.acquire(3);
  cache.acquire(1);  // touch
  cache.acquire(4);  // count: evicts 2
  CHECK(cache.held() == std::vector<int>{4, 1, 3});
  CHECK(freed == std::vector<int>{2});
  cache.acquire(9);  // at the count: evicts 3; out of memory once: evicts 1 (then 9 fits)
  CHECK(cache.held() == std::vector<int>{9, 4});
  CHECK(freed == std::vector<int>{2, 3, 1});
  CHECK_THROWS_WITH(cache.acquire(13), "broken file");
  CHECK(cache.held() == std::vector<int>{9, 4});  // a failed load changes nothing else
  CHECK(cache.loads() == 5);
  CHECK(cache.evictions() == 3);
  CHECK(cache.load_failures() == 1);
  CHECK(changes.back() == std::vector<int>{9, 4});
}

TEST_CASE("the model hasher hashes once per file and caches by size and mtime", "[models]") {
  TempDir dir;
  const auto file = (dir.path() / "m.safetensors").string();
  const auto cache = dir.path() / "hashes.json";
  std::ofstream(file, std::ios::binary) << "weights v1";
  {
    ModelHasher hasher(cache);
    CHECK_FALSE(hasher.peek(file));
    CHECK(hasher.wait(file) == sha256_of("weights v1"));
    CHECK(hasher.peek(file) == sha256_of("weights v1"));
  }
  {
    ModelHasher again(cache);  // from the cache file, without reading the file
    CHECK(again.peek(file) == sha256_of("weights v1"));
  }
  std::ofstream(file, std::ios::binary | std::ios::trunc) << "weights v2, longer";
  ModelHasher changed(cache);
  CHECK_FALSE(changed.peek(file));  // a new size: hashed again
  CHECK(changed.wait(file) == sha256_of("weights v2, longer"));
  CHECK(changed.wait((dir.path() / "missing").string()).empty());
}
