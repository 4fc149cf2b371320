#include "pipeline/step_graphs.h"

#include <sstream>

namespace diffusiond {

// A captured graph and the buffers it reads. The static inputs are allocated before the capture
// (outside the graph's pool) with the inputs' layout; the graph's output is what the captured
// run allocated (in its pool): every replay rewrites that memory.
struct UNetGraphCache::Entry {
  std::vector<std::int64_t> key;
  UNetInputs in;
  std::unique_ptr<ReplayableGraph> graph;
};

namespace {

torch::Tensor static_like(const torch::Tensor& t) {
  if (!t.defined()) return t;
  // The input's layout (channels_last stays channels_last), unless it overlaps (an expanded
  // view): then a dense copy.
  torch::Tensor s = t.is_non_overlapping_and_dense()
                        ? torch::empty_strided(t.sizes(), t.strides(), t.options())
                        : torch::empty(t.sizes(), t.options());
  s.copy_(t);
  return s;
}

void copy_into(torch::Tensor& dst, const torch::Tensor& src) {
  if (dst.defined()) dst.copy_(src);
}

void append_key(std::vector<std::int64_t>& key, const torch::Tensor& t) {
  if (!t.defined()) {
    key.push_back(-1);
    return;
  }
  key.push_back(static_cast<std::int64_t>(t.scalar_type()));
  key.push_back(static_cast<std::int64_t>(t.device().type()));
  key.push_back(static_cast<std::int64_t>(t.device().index()));
  key.push_back(t.dim());
  for (auto s : t.sizes()) key.push_back(s);
  for (auto s : t.strides()) key.push_back(s);
}

std::string describe(const UNetInputs& in) {
  std::ostringstream s;
  s << "sample " << in.sample.sizes() << " " << in.sample.scalar_type() << ", text "
    << in.embeds.sizes();
  if (in.added.text_embeds.defined()) s << ", added " << in.added.text_embeds.sizes();
  return s.str();
}

}  // namespace

UNetGraphCache::UNetGraphCache(std::unique_ptr<GraphCapturer> capturer, int capacity,
                               std::vector<torch::Tensor> weights, WarningSink warn)
    : capturer_(std::move(capturer)),
      capacity_(static_cast<std::size_t>(std::max(capacity, 1))),
      weights_(std::move(weights)),
      warn_(std::move(warn)) {
  fingerprint_ = weights_fingerprint();
  stats_.enabled = true;
}

UNetGraphCache::~UNetGraphCache() = default;

std::vector<std::int64_t> UNetGraphCache::key_of(const UNetInputs& in) {
  std::vector<std::int64_t> key;
  for (const auto* t :
       {&in.sample, &in.timestep, &in.embeds, &in.added.text_embeds, &in.added.time_ids})
    append_key(key, *t);
  return key;
}

std::uint64_t UNetGraphCache::weights_fingerprint() const {
  // FNV-1a over the storage addresses: a graph reads its weights where they were at capture.
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& w : weights_) {
    h ^= reinterpret_cast<std::uintptr_t>(w.data_ptr());
    h *= 1099511628211ull;
  }
  return h;
}

void UNetGraphCache::clear() {
  lru_.clear();
  index_.clear();
  stats_.size = 0;
}

GraphCacheStats UNetGraphCache::stats() const {
  return stats_;
}

UNetGraphCache::Entry* UNetGraphCache::find(const std::vector<std::int64_t>& key) {
  const auto at = index_.find(key);
  if (at == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, at->second);  // most recently used first; iterators stay valid
  return lru_.front().get();
}

UNetGraphCache::Entry* UNetGraphCache::capture(const std::vector<std::int64_t>& key,
                                               const UNetInputs& inputs, const UNetEval& eager) {
  if (lru_.size() >= capacity_) {  // make room first: the evicted graph's memory goes back
    index_.erase(lru_.back()->key);
    lru_.pop_back();
    ++stats_.evictions;
    stats_.size = static_cast<std::int64_t>(lru_.size());
  }
  auto entry = std::make_unique<Entry>();
  entry->key = key;
  entry->in.sample = static_like(inputs.sample);
  entry->in.timestep = static_like(inputs.timestep);
  entry->in.embeds = static_like(inputs.embeds);
  entry->in.added.text_embeds = static_like(inputs.added.text_embeds);
  entry->in.added.time_ids = static_like(inputs.added.time_ids);
  Entry* e = entry.get();
  try {
    // By value: a capturer may keep the body (the CPU stand-in of the tests replays it).
    e->graph = capturer_->capture([e, eager] { return eager(e->in); });
  } catch (const std::exception& error) {
    ++stats_.failures;
    failed_.insert(key);
    if (warn_)
      warn_("CUDA graph capture failed for " + describe(inputs) + ": " + error.what() +
            "; this shape runs eagerly from now on");
    return nullptr;
  }
  ++stats_.captures;
  lru_.push_front(std::move(entry));
  index_[key] = lru_.begin();
  stats_.size = static_cast<std::int64_t>(lru_.size());
  return e;
}

torch::Tensor UNetGraphCache::run(const UNetInputs& inputs, const UNetEval& eager) {
  const std::uint64_t fingerprint = weights_fingerprint();
  if (fingerprint != fingerprint_) {
    if (!lru_.empty()) ++stats_.invalidations;
    clear();
    fingerprint_ = fingerprint;
  }
  const auto key = key_of(inputs);
  if (failed_.count(key)) {
    ++stats_.eager_runs;
    return eager(inputs);
  }
  Entry* e = find(key);
  if (e) {
    copy_into(e->in.sample, inputs.sample);
    copy_into(e->in.timestep, inputs.timestep);
    copy_into(e->in.embeds, inputs.embeds);
    copy_into(e->in.added.text_embeds, inputs.added.text_embeds);
    copy_into(e->in.added.time_ids, inputs.added.time_ids);
  } else {
    e = capture(key, inputs, eager);  // its static inputs already hold these inputs
    if (!e) {
      ++stats_.eager_runs;
      return eager(inputs);
    }
  }
  e->graph->replay();
  ++stats_.replays;
  // The next replay rewrites the static output; samplers keep model outputs across steps.
  return e->graph->output().clone();
}

}  // namespace diffusiond
