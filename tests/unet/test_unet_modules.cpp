// Building blocks checked against independent computations written out in the test.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/record_function.h>

#include "pipeline/attention_block.h"
#include "pipeline/attention_ops.h"
#include "pipeline/embeddings.h"
#include "test_util.h"

using namespace diffusiond;
using diffusiond::test::relative_l2;

TEST_CASE("Sinusoidal timestep embedding follows the formula", "[unet][embeddings]") {
  const int dim = 32, half = 16;
  for (bool flip : {true, false}) {
    for (double shift : {0.0, 1.0}) {
      auto t = torch::tensor({0.0f, 1.0f, 37.5f});
      auto emb = timestep_embedding(t, dim, flip, shift);
      REQUIRE(emb.sizes() == torch::IntArrayRef({3, dim}));
      REQUIRE(emb.scalar_type() == torch::kFloat32);
      for (int b = 0; b < 3; ++b) {
        for (int j = 0; j < half; ++j) {
          const double freq = std::exp(-std::log(10000.0) * j / (half - shift));
          const double arg = t[b].item<double>() * freq;
          const double first = flip ? std::cos(arg) : std::sin(arg);
          const double second = flip ? std::sin(arg) : std::cos(arg);
          CHECK(emb[b][j].item<double>() == Approx(first).margin(1e-5));
          CHECK(emb[b][half + j].item<double>() == Approx(second).margin(1e-5));
        }
      }
    }
  }
  // Odd sizes get a zero column.
  auto odd = timestep_embedding(torch::tensor({5.0f}), 7, true, 0.0);
  CHECK(odd.sizes() == torch::IntArrayRef({1, 7}));
  CHECK(odd[0][6].item<double>() == 0.0);
}

namespace {

// Multi-head attention written out head by head.
torch::Tensor reference_attention(AttentionImpl& attn, const torch::Tensor& x,
                                  const torch::Tensor& context) {
  auto p = attn.named_parameters();
  const int heads = attn.options().heads, dh = attn.options().dim_head;
  auto ctx = context.defined() ? context : x;
  auto q = torch::matmul(x, p["to_q.weight"].t());
  auto k = torch::matmul(ctx, p["to_k.weight"].t());
  auto v = torch::matmul(ctx, p["to_v.weight"].t());
  std::vector<torch::Tensor> outs;
  for (int h = 0; h < heads; ++h) {
    auto qh = q.slice(-1, h * dh, (h + 1) * dh);
    auto kh = k.slice(-1, h * dh, (h + 1) * dh);
    auto vh = v.slice(-1, h * dh, (h + 1) * dh);
    auto scores = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(double(dh));
    outs.push_back(torch::matmul(torch::softmax(scores, -1), vh));
  }
  auto o = torch::cat(outs, -1);
  return torch::matmul(o, p["to_out.0.weight"].t()) + p["to_out.0.bias"];
}

}  // namespace

TEST_CASE("Attention splits heads like diffusers", "[unet][attention]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (bool upcast : {false, true}) {
    AttentionOptions o;
    o.query_dim = 16;
    o.cross_attention_dim = 12;
    o.heads = 4;
    o.dim_head = 4;
    o.upcast_attention = upcast;
    Attention attn(o);
    auto x = torch::randn({2, 9, 16});
    auto context = torch::randn({2, 5, 12});
    auto out = attn(x, context);
    CHECK(out.sizes() == torch::IntArrayRef({2, 9, 16}));
    CHECK(relative_l2(out, reference_attention(*attn, x, context)) <= 1e-6);
  }
  // Self-attention over a feature map with GroupNorm and residual (the VAE's form).
  AttentionOptions o;
  o.query_dim = 8;
  o.heads = 1;
  o.dim_head = 8;
  o.bias = true;
  o.upcast_softmax = true;
  o.norm_num_groups = 2;
  o.eps = 1e-6;
  o.residual_connection = true;
  Attention attn(o);
  auto x = torch::randn({1, 8, 3, 5});
  auto out = attn(x);
  auto p = attn->named_parameters();
  auto normed = torch::group_norm(x, 2, p["group_norm.weight"], p["group_norm.bias"], 1e-6);
  auto seq = normed.flatten(2).transpose(1, 2);  // [1,15,8]
  auto q = torch::matmul(seq, p["to_q.weight"].t()) + p["to_q.bias"];
  auto k = torch::matmul(seq, p["to_k.weight"].t()) + p["to_k.bias"];
  auto v = torch::matmul(seq, p["to_v.weight"].t()) + p["to_v.bias"];
  auto probs = torch::softmax(torch::matmul(q, k.transpose(1, 2)) / std::sqrt(8.0), -1);
  auto o2 = torch::matmul(torch::matmul(probs, v), p["to_out.0.weight"].t()) + p["to_out.0.bias"];
  auto expected = o2.transpose(1, 2).reshape({1, 8, 3, 5}) + x;
  CHECK(relative_l2(out, expected) <= 1e-6);
}

TEST_CASE("Cross-attention reuses a context's keys and values only while nothing changed",
          "[unet][attention]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  AttentionOptions o;
  o.query_dim = 16;
  o.cross_attention_dim = 12;
  o.heads = 2;
  o.dim_head = 8;
  Attention attn(o);
  auto x = torch::randn({2, 9, 16});
  auto context = torch::randn({2, 5, 12});
  auto fresh = [&] { return reference_attention(*attn, x, context); };
  test::OpCalls calls("aten::linear");
  calls.take();

  auto first = attn(x, context);
  CHECK(calls.take() == 4);  // to_q, to_k, to_v, to_out.0
  CHECK(relative_l2(first, fresh()) <= 1e-6);
  calls.take();
  auto again = attn(x, context);  // the same context: keys and values kept
  CHECK(calls.take() == 2);       // to_q, to_out.0
  CHECK(torch::equal(again, first));

  auto copy = context.clone();  // equal values, another tensor: computed again
  auto from_copy = attn(x, copy);
  CHECK(calls.take() == 4);
  CHECK(torch::equal(from_copy, first));

  context.mul_(-0.5);  // changed in place: computed again
  auto changed = attn(x, context);
  CHECK(calls.take() == 4);
  CHECK(relative_l2(changed, fresh()) <= 1e-6);
  CHECK_FALSE(torch::allclose(changed, first));

  auto p = attn->named_parameters();
  p["to_k.weight"].set_data(torch::randn_like(p["to_k.weight"]));  // a LoRA merge's swap
  auto swapped = attn(x, context);
  CHECK(calls.take() == 4);
  CHECK(relative_l2(swapped, fresh()) <= 1e-6);
  CHECK_FALSE(torch::allclose(swapped, changed));

  p["to_v.weight"].mul_(3);  // an in-place weight change
  auto scaled = attn(x, context);
  CHECK(calls.take() == 4);
  CHECK(relative_l2(scaled, fresh()) <= 1e-6);

  // Two contexts in turn (two prompt lengths in one UNet batch) both stay cached.
  auto other = torch::randn({2, 7, 12});
  attn(x, other);
  CHECK(calls.take() == 4);
  CHECK(torch::equal(attn(x, context), scaled));
  CHECK(relative_l2(attn(x, other), reference_attention(*attn, x, other)) <= 1e-6);
  calls.take();
  attn(x, context);
  attn(x, other);
  CHECK(calls.take() == 4);         // 2 per call: both hit
  attn->drop_cached_keys_values();  // as the pipeline does after its denoising loop
  attn(x, context);
  CHECK(calls.take() == 4);

  // Self-attention never caches (its keys come from the input).
  AttentionOptions self_o;
  self_o.query_dim = 16;
  self_o.heads = 2;
  self_o.dim_head = 8;
  Attention self_attn(self_o);
  calls.take();
  self_attn(x);
  self_attn(x);
  CHECK(calls.take() == 8);
}

TEST_CASE("CPU attention in bands of query rows gives the same bits", "[unet][attention]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(9);
  const int64_t saved = attention_scores_band_bytes();
  // Runs `attend` with the scores budget at `bytes`, restoring it after.
  auto with_budget = [saved](int64_t bytes, const std::function<torch::Tensor()>& attend) {
    set_attention_scores_band_bytes(bytes);
    auto r = attend();
    set_attention_scores_band_bytes(saved);
    return r;
  };
  const int64_t unbounded = int64_t{1} << 40;
  // [B, heads, L, d] as the UNet passes them: strided views of [B, L, heads, d].
  auto view = [](int64_t b, int64_t l, int64_t heads, int64_t d) {
    return torch::randn({b, l, heads, d}).transpose(1, 2);
  };
  // 509 queries: bands of 128 rows and a last one of 125; 300 keys (cross-attention shape).
  auto q = view(2, 509, 2, 40), k = view(2, 300, 2, 40), v = view(2, 300, 2, 40);
  auto self_q = view(1, 509, 2, 40);
  auto mask = torch::rand({2, 1, 509, 300}) > 0.2;
  struct Case {
    const char* name;
    std::function<torch::Tensor()> attend;
    int bmm_calls;  // two per band per batch element
  };
  const std::vector<Case> cases{
      // 509 x [2, 300] scores in a budget of 128 rows: 4 bands (3 of 128, one of 125), 2 elements.
      {"cross", [&] { return dot_product_attention_math(q, k, v, {}, false, false, {}); }, 16},
      {"bool mask", [&] { return dot_product_attention_math(q, k, v, mask, false, false, {}); },
       16},
      // 509 x [2, 509] scores in the same budget: 7 bands of 73 rows (the last 71), 1 element.
      {"causal",
       [&] { return dot_product_attention_math(self_q, self_q, self_q, {}, true, false, {}); },
       14}};
  for (const auto& c : cases) {
    INFO(c.name);
    const auto expected = with_budget(unbounded, c.attend);
    test::OpCalls calls("aten::bmm");
    const auto banded = with_budget(128 * 2 * 300 * 4, c.attend);
    CHECK(calls.take() == c.bmm_calls);
    REQUIRE(banded.sizes() == expected.sizes());
    CHECK(torch::equal(banded, expected));
  }
  // The default budget on SD 1.5 512²-like rows (2 heads x 2048 x 2048 scores: 2 bands).
  auto big = view(1, 2048, 2, 40);
  auto attend_big = [&] { return dot_product_attention_math(big, big, big, {}, false, false, {}); };
  test::OpCalls calls("aten::bmm");
  const auto banded = attend_big();
  CHECK(calls.take() == 2 * 2);
  CHECK(torch::equal(banded, with_budget(unbounded, attend_big)));
}
