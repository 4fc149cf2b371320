// Ref: diffusers scripts/convert_diffusers_to_original_stable_diffusion.py (unet_conversion_map*,
// vae_conversion_map*, convert_openclip_text_enc_state_dict), the other direction of ldm_keys.
#include "ldm_inverse.h"

#include <map>
#include <stdexcept>

#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"

namespace diffusiond::testing {
namespace fs = std::filesystem;
namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0, dot;
  while ((dot = s.find('.', start)) != std::string::npos) {
    out.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

std::string tail(const std::vector<std::string>& p, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < p.size(); ++i) out += (i > from ? "." : "") + p[i];
  return out;
}

std::string resnet_to_ldm(const std::string& rest) {
  static const std::map<std::string, std::string> map = {
      {"norm1", "in_layers.0"},          {"conv1", "in_layers.2"},
      {"norm2", "out_layers.0"},         {"conv2", "out_layers.3"},
      {"time_emb_proj", "emb_layers.1"}, {"conv_shortcut", "skip_connection"}};
  const auto dot = rest.find('.');
  return map.at(rest.substr(0, dot)) + rest.substr(dot);
}

std::string unet_to_ldm(const std::string& name, int lpb,
                        const std::vector<std::string>& up_types) {
  const auto p = split(name);
  const int per = lpb + 1;
  if (p[0] == "conv_in") return "input_blocks.0.0." + tail(p, 1);
  if (p[0] == "conv_norm_out") return "out.0." + tail(p, 1);
  if (p[0] == "conv_out") return "out.2." + tail(p, 1);
  if (p[0] == "time_embedding")
    return (p[1] == "linear_1" ? "time_embed.0." : "time_embed.2.") + tail(p, 2);
  if (p[0] == "add_embedding")
    return (p[1] == "linear_1" ? "label_emb.0.0." : "label_emb.0.2.") + tail(p, 2);
  if (p[0] == "mid_block") {
    if (p[1] == "attentions") return "middle_block.1." + tail(p, 3);
    return "middle_block." + std::to_string(2 * std::stoi(p[2])) + "." + resnet_to_ldm(tail(p, 3));
  }
  const int level = std::stoi(p[1]);
  if (p[0] == "down_blocks") {
    if (p[2] == "downsamplers")
      return "input_blocks." + std::to_string((level + 1) * per) + ".0.op." + tail(p, 5);
    const int i = 1 + level * per + std::stoi(p[3]);
    if (p[2] == "resnets")
      return "input_blocks." + std::to_string(i) + ".0." + resnet_to_ldm(tail(p, 4));
    return "input_blocks." + std::to_string(i) + ".1." + tail(p, 4);
  }
  if (p[0] == "up_blocks") {
    if (p[2] == "upsamplers") {
      const bool attn = up_types.at(static_cast<std::size_t>(level)).rfind("CrossAttn", 0) == 0;
      return "output_blocks." + std::to_string(level * per + lpb) +
             (attn ? ".2.conv." : ".1.conv.") + tail(p, 5);
    }
    const int i = level * per + std::stoi(p[3]);
    if (p[2] == "resnets")
      return "output_blocks." + std::to_string(i) + ".0." + resnet_to_ldm(tail(p, 4));
    return "output_blocks." + std::to_string(i) + ".1." + tail(p, 4);
  }
  throw std::runtime_error("ldm_inverse: unexpected UNet key " + name);
}

std::pair<std::string, bool> vae_to_ldm(const std::string& name, int levels) {
  auto p = split(name);
  auto resnet = [](std::string r) {
    if (r.rfind("conv_shortcut", 0) == 0) r = "nin_shortcut" + r.substr(13);
    return r;
  };
  if (p.size() == 2) return {name, false};  // quant_conv, post_quant_conv
  const std::string side = p[0];
  if (p[1] == "conv_norm_out") return {side + ".norm_out." + p[2], false};
  if (p[1] == "conv_in" || p[1] == "conv_out") return {name, false};
  if (p[1] == "mid_block") {
    if (p[2] == "resnets")
      return {side + ".mid.block_" + std::to_string(std::stoi(p[3]) + 1) + "." + resnet(tail(p, 4)),
              false};
    static const std::map<std::string, std::string> attn = {{"group_norm", "norm"},
                                                            {"to_q", "q"},
                                                            {"to_k", "k"},
                                                            {"to_v", "v"},
                                                            {"to_out", "proj_out"}};
    const std::string what = attn.at(p[4]);
    return {side + ".mid.attn_1." + what + "." + p.back(), what != "norm" && p.back() == "weight"};
  }
  const int level = std::stoi(p[2]);
  const bool down = p[1] == "down_blocks";
  const std::string base =
      side + (down ? ".down." : ".up.") + std::to_string(down ? level : levels - 1 - level) + ".";
  if (p[3] == "resnets") return {base + "block." + p[4] + "." + resnet(tail(p, 5)), false};
  return {base + (down ? "downsample.conv." : "upsample.conv.") + p.back(), false};
}

// CLIPTextModel(WithProjection) -> OpenCLIP names under `prefix`; q/k/v fused.
void open_clip(const SafetensorsFile& file, const std::string& prefix, bool projection, int layers,
               StateDict& out) {
  auto t = [&](const std::string& n) { return file.tensor(n).clone(); };
  out.emplace_back(prefix + "positional_embedding",
                   t("text_model.embeddings.position_embedding.weight"));
  out.emplace_back(prefix + "token_embedding.weight",
                   t("text_model.embeddings.token_embedding.weight"));
  out.emplace_back(prefix + "ln_final.weight", t("text_model.final_layer_norm.weight"));
  out.emplace_back(prefix + "ln_final.bias", t("text_model.final_layer_norm.bias"));
  if (projection)
    out.emplace_back(prefix + "text_projection", t("text_projection.weight").t().contiguous());
  static const std::map<std::string, std::string> renamed = {
      {"layer_norm1", "ln_1"},
      {"layer_norm2", "ln_2"},
      {"mlp.fc1", "mlp.c_fc"},
      {"mlp.fc2", "mlp.c_proj"},
      {"self_attn.out_proj", "attn.out_proj"}};
  for (int i = 0; i < layers; ++i) {
    const std::string from = "text_model.encoder.layers." + std::to_string(i) + ".";
    const std::string to = prefix + "transformer.resblocks." + std::to_string(i) + ".";
    for (const auto& [d, l] : renamed)
      for (const char* wb : {"weight", "bias"})
        out.emplace_back(to + l + "." + wb, t(from + d + "." + wb));
    for (const char* wb : {"weight", "bias"}) {
      const std::string w = wb;
      out.emplace_back(to + "attn.in_proj_" + w, torch::cat({t(from + "self_attn.q_proj." + w),
                                                             t(from + "self_attn.k_proj." + w),
                                                             t(from + "self_attn.v_proj." + w)},
                                                            0));
    }
  }
}

int clip_layers(const fs::path& config) {
  return read_json_file(config).at("num_hidden_layers").get<int>();
}

}  // namespace

StateDict ldm_state_dict(const fs::path& folder, LdmTarget target) {
  StateDict out;
  const auto unet_cfg = read_json_file(folder / "unet" / "config.json");
  const int lpb = unet_cfg.at("layers_per_block").get<int>();
  const auto up_types = unet_cfg.at("up_block_types").get<std::vector<std::string>>();
  auto unet = SafetensorsFile::open(folder / "unet" / "diffusion_pytorch_model.safetensors");
  for (const auto& info : unet->tensors())
    out.emplace_back("model.diffusion_model." + unet_to_ldm(info.name, lpb, up_types),
                     unet->tensor(info.name).clone());

  const int levels = static_cast<int>(
      read_json_file(folder / "vae" / "config.json").at("block_out_channels").size());
  auto vae = SafetensorsFile::open(folder / "vae" / "diffusion_pytorch_model.safetensors");
  for (const auto& info : vae->tensors()) {
    auto [name, conv] = vae_to_ldm(info.name, levels);
    torch::Tensor v = vae->tensor(info.name).clone();
    if (conv) v = v.reshape({v.size(0), v.size(1), 1, 1});
    out.emplace_back("first_stage_model." + name, v);
  }

  auto te = SafetensorsFile::open(folder / "text_encoder" / "model.safetensors");
  if (target == LdmTarget::kSD2) {
    const int layers = clip_layers(folder / "text_encoder" / "config.json");
    open_clip(*te, "cond_stage_model.model.", false, layers, out);
    // What an SD 2.x file carries that nothing reads: the 24th block and text_projection.
    const std::string extra =
        "cond_stage_model.model.transformer.resblocks." + std::to_string(layers) + ".";
    const auto hidden = te->tensor("text_model.final_layer_norm.weight").size(0);
    const auto inter = te->tensor("text_model.encoder.layers.0.mlp.fc1.weight").size(0);
    auto gen = at::detail::createCPUGenerator(99);
    auto r = [&](std::vector<int64_t> shape) { return torch::randn(shape, gen); };
    out.emplace_back(extra + "attn.in_proj_weight", r({3 * hidden, hidden}));
    out.emplace_back(extra + "attn.in_proj_bias", r({3 * hidden}));
    out.emplace_back(extra + "attn.out_proj.weight", r({hidden, hidden}));
    out.emplace_back(extra + "attn.out_proj.bias", r({hidden}));
    for (const char* n : {"ln_1", "ln_2"}) {
      out.emplace_back(extra + n + ".weight", r({hidden}));
      out.emplace_back(extra + n + ".bias", r({hidden}));
    }
    out.emplace_back(extra + "mlp.c_fc.weight", r({inter, hidden}));
    out.emplace_back(extra + "mlp.c_fc.bias", r({inter}));
    out.emplace_back(extra + "mlp.c_proj.weight", r({hidden, inter}));
    out.emplace_back(extra + "mlp.c_proj.bias", r({hidden}));
    out.emplace_back("cond_stage_model.model.text_projection", r({hidden, hidden}));
  } else {
    const std::string prefix = target == LdmTarget::kSD1 ? "cond_stage_model.transformer."
                                                         : "conditioner.embedders.0.transformer.";
    for (const auto& info : te->tensors())
      out.emplace_back(prefix + info.name, te->tensor(info.name).clone());
  }
  if (target == LdmTarget::kSDXL) {
    auto te2 = SafetensorsFile::open(folder / "text_encoder_2" / "model.safetensors");
    open_clip(*te2, "conditioner.embedders.1.model.", true,
              clip_layers(folder / "text_encoder_2" / "config.json"), out);
  }
  return out;
}

}  // namespace diffusiond::testing
