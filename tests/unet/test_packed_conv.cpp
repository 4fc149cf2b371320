// PackedConv2d against torch.nn.functional.conv2d: the same bits whole and in row slabs, with
// and without the fused nearest upsampling, and what it keeps packed.
#include <catch2/catch.hpp>

#include <tuple>
#include <vector>

#include "pipeline/packed_conv.h"
#include "test_util.h"

using namespace diffusiond;
namespace F = torch::nn::functional;

namespace {

// The policy for one test, restored after it.
class SlabPolicy {
 public:
  explicit SlabPolicy(ConvRowSlabPolicy p) : saved_(conv_row_slab_policy()) {
    set_conv_row_slab_policy(p);
  }
  ~SlabPolicy() { set_conv_row_slab_policy(saved_); }

 private:
  ConvRowSlabPolicy saved_;
};

// The intra-op thread count for one test (1x1 convolutions take oneDNN only above one thread).
class Threads {
 public:
  explicit Threads(int n) : saved_(at::get_num_threads()) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

PackedConv2d make_conv(int in, int out, int kernel, int padding) {
  PackedConv2d conv(torch::nn::Conv2dOptions(in, out, kernel).padding(padding));
  conv->eval();
  return conv;
}

torch::Tensor reference(PackedConv2d& conv, const torch::Tensor& x) {
  return F::conv2d(x, conv->weight,
                   F::Conv2dFuncOptions().bias(conv->bias).padding(conv->options.padding()));
}

}  // namespace

TEST_CASE("PackedConv2d in row slabs gives conv2d's bits, with and without upsampling",
          "[unet][conv]") {
  torch::NoGradGuard no_grad;
  if (!conv_packing_built()) {
    WARN("skipped: this build packs no convolution weights (LibTorch 1.x with oneDNN only)");
    return;
  }
  torch::manual_seed(11);
  if (!conv_row_slabs_exact_here())
    WARN("no row slabs on this CPU: only the whole path is checked");
  const Threads threads(2);
  // in, out, kernel, padding, batch, height, width (odd sizes: a last band of another height;
  // each large enough for LibTorch's own conv2d to take oneDNN too)
  for (auto [in, out, kernel, padding, batch, h, w] :
       std::vector<std::tuple<int, int, int, int, int, int, int>>{{16, 24, 3, 1, 1, 41, 37},
                                                                  {8, 16, 3, 1, 2, 20, 20},
                                                                  {32, 8, 1, 0, 1, 33, 25},
                                                                  {8, 8, 3, 0, 2, 25, 25}}) {
    INFO("conv " << in << "->" << out << " k" << kernel << " p" << padding << " x [" << batch << ","
                 << in << "," << h << "," << w << "]");
    auto conv = make_conv(in, out, kernel, padding);
    conv->prepack();
    REQUIRE(conv->holds_packed_weight());
    auto x = torch::randn({batch, in, h, w});
    const auto whole = reference(conv, x);
    const auto up = F::interpolate(x, F::InterpolateFuncOptions()
                                          .mode(torch::kNearest)
                                          .scale_factor(std::vector<double>{2.0, 2.0}));
    const auto whole_up = reference(conv, up);
    const int64_t row_bytes = batch * in * w * 4;
    for (int band_rows : {1, 2, 5, 8, 1000}) {
      INFO("band of " << band_rows << " rows");
      const SlabPolicy policy({0, band_rows * row_bytes});
      test::OpCalls calls("aten::mkldnn_convolution");
      const auto slabs = conv(x);
      const int64_t out_h = whole.size(2);
      // One oneDNN call per band (the whole tensor at once when one band holds it, and always
      // for a 1x1 kernel, whose oneDNN kernel rounds by the spatial size).
      const int64_t bands = (out_h + band_rows - 1) / band_rows;
      const bool whole_call = kernel == 1 || band_rows >= out_h || !conv_row_slabs_exact_here();
      CHECK(calls.take() == (whole_call ? 1 : bands));
      REQUIRE(slabs.sizes() == whole.sizes());
      CHECK(torch::equal(slabs, whole));

      const SlabPolicy up_policy({0, band_rows * row_bytes * 2});  // rows twice as wide
      const auto fused = conv->forward_upsampled2x(x);
      REQUIRE(fused.sizes() == whole_up.sizes());
      CHECK(torch::equal(fused, whole_up));
    }
    // Below the size threshold: one call, whatever the band.
    const SlabPolicy above({x.numel() * 4, row_bytes});
    test::OpCalls calls("aten::mkldnn_convolution");
    CHECK(torch::equal(conv(x), whole));
    CHECK(calls.take() == 1);
  }
}

TEST_CASE("A PackedConv2d on LibTorch's own kernel lets its unused packed copy go",
          "[unet][conv]") {
  torch::NoGradGuard no_grad;
  if (!conv_packing_built()) {
    WARN("skipped: this build packs no convolution weights (LibTorch 1.x with oneDNN only)");
    return;
  }
  torch::manual_seed(12);
  auto conv = make_conv(32, 16, 1, 0);
  auto x = torch::randn({1, 32, 40, 40});
  {
    const Threads one(1);  // a 1x1 conv on one thread: LibTorch's native kernel
    const auto expected = reference(conv, x);
    conv->prepack();
    REQUIRE(conv->holds_packed_weight());
    test::OpCalls calls("aten::mkldnn_convolution");
    CHECK(torch::equal(conv(x), expected));
    CHECK(calls.take() == 0);
    CHECK_FALSE(conv->holds_packed_weight());
  }
  {
    const Threads two(2);  // now oneDNN: packed again, and kept from then on
    const auto expected = reference(conv, x);
    test::OpCalls calls("aten::mkldnn_convolution");
    CHECK(torch::equal(conv(x), expected));
    CHECK(calls.take() == 1);
    CHECK(conv->holds_packed_weight());
  }
  {
    const Threads one(1);
    const auto expected = reference(conv, x);
    CHECK(torch::equal(conv(x), expected));
    CHECK(conv->holds_packed_weight());
  }
  // A 3x3 conv of this size takes oneDNN on one thread too: its copy stays.
  auto conv3 = make_conv(16, 8, 3, 1);
  conv3->prepack();
  auto y = torch::randn({1, 16, 40, 40});
  CHECK(torch::equal(conv3(y), reference(conv3, y)));
  CHECK(conv3->holds_packed_weight());
}
