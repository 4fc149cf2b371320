#include "pipeline/latent_preview.h"

#include <cstring>
#include <stdexcept>

namespace diffusiond {

RgbImage cheap_latent_preview(const torch::Tensor& latents, bool xl) {
  torch::Tensor x = latents.dim() == 4 && latents.size(0) == 1 ? latents[0] : latents;
  if (x.dim() != 3 || x.size(0) != 4)
    throw std::invalid_argument("cheap_latent_preview: expected latents [4, h, w], got " +
                                c10::str(latents.sizes()));
  // [latent channel l, rgb r]: rgb[r] = sum_l latent[l] * coefs[l][r]
  static const float sd[4][3] = {{0.298f, 0.207f, 0.208f},
                                 {0.187f, 0.286f, 0.173f},
                                 {-0.158f, 0.189f, 0.264f},
                                 {-0.184f, -0.271f, -0.473f}};
  static const float sdxl[4][3] = {{0.3448f, 0.4168f, 0.4395f},
                                   {-0.1953f, -0.0290f, 0.0250f},
                                   {0.1074f, 0.0886f, -0.0163f},
                                   {-0.3730f, -0.2499f, -0.2088f}};
  const torch::Tensor coefs =
      torch::from_blob(const_cast<float*>(&(xl ? sdxl : sd)[0][0]), {4, 3}, torch::kFloat32)
          .to(x.device());
  torch::Tensor rgb = torch::einsum("lhw,lr->hwr", {x.to(torch::kFloat32), coefs});  // [h, w, 3]
  rgb = ((rgb + 1.0) / 2.0)
            .clamp(0, 1)
            .mul(255)
            .round()
            .to(torch::kUInt8)
            .to(torch::kCPU)
            .contiguous();
  RgbImage image;
  image.height = static_cast<int>(rgb.size(0));
  image.width = static_cast<int>(rgb.size(1));
  image.pixels.resize(static_cast<std::size_t>(rgb.numel()));
  std::memcpy(image.pixels.data(), rgb.data_ptr<std::uint8_t>(), image.pixels.size());
  return image;
}

}  // namespace diffusiond
