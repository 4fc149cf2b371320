// Ref: diffusers v0.27.2 loaders/single_file_utils.py (see ldm_keys.h). Each function below maps
// one key with its prefix removed; an empty optional means "no such name in that layout".
#include "pipeline/ldm_keys.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <set>
#include <sstream>

namespace diffusiond {
namespace {

using Op = TensorAlias::Op;

const std::string kUnet = "model.diffusion_model.";
const std::string kVae = "first_stage_model.";
const std::string kSd1Clip = "cond_stage_model.transformer.";
const std::string kSd2Clip = "cond_stage_model.model.";
const std::string kXlClipL = "conditioner.embedders.0.transformer.";
const std::string kXlClipG = "conditioner.embedders.1.model.";
const std::string kRefinerClipG = "conditioner.embedders.0.model.";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t dot = s.find('.'); dot != std::string::npos; dot = s.find('.', start)) {
    out.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

std::string join(const std::vector<std::string>& parts, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < parts.size(); ++i) out += (i > from ? "." : "") + parts[i];
  return out;
}

std::optional<int> number(const std::string& s) {
  if (s.empty() || s.size() > 6 ||
      !std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; }))
    return {};
  return std::stoi(s);
}

// LDM's known strays: the EMA copy, the noise-schedule buffers of LatentDiffusion and sgm's
// denoiser, the VAE's training loss, CLIP's position_ids buffer.
bool is_known_stray(const std::string& key) {
  static const std::set<std::string> buffers = {"betas",
                                                "alphas_cumprod",
                                                "alphas_cumprod_prev",
                                                "sqrt_alphas_cumprod",
                                                "sqrt_one_minus_alphas_cumprod",
                                                "log_one_minus_alphas_cumprod",
                                                "sqrt_recip_alphas_cumprod",
                                                "sqrt_recipm1_alphas_cumprod",
                                                "posterior_variance",
                                                "posterior_log_variance_clipped",
                                                "posterior_mean_coef1",
                                                "posterior_mean_coef2",
                                                "logvar",
                                                "lvlb_weights",
                                                "global_step",
                                                "epoch"};
  if (buffers.count(key)) return true;
  for (const char* prefix : {"model_ema.", "denoiser.", "first_stage_model.loss."})
    if (starts_with(key, prefix)) return true;
  const auto ends = [&](const std::string& suffix) {
    return key.size() >= suffix.size() &&
           key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends("embeddings.position_ids") || ends(".logit_scale");
}

// ---- UNet: openaimodel.UNetModel -> UNet2DConditionModel ---------------------------------

struct UNetShape {
  int layers_per_block = 1;
};

// The first downsampler sits at input_blocks.(layers_per_block + 1).0.op.
UNetShape unet_shape(const std::vector<StTensorInfo>& index) {
  int first_op = -1, last_input = 0;
  for (const auto& info : index) {
    if (!starts_with(info.name, kUnet + "input_blocks.")) continue;
    const auto parts = split(info.name.substr(kUnet.size()));
    const auto i = parts.size() > 2 ? number(parts[1]) : std::nullopt;
    if (!i) continue;
    last_input = std::max(last_input, *i);
    if (parts.size() > 3 && parts[2] == "0" && parts[3] == "op" && (first_op < 0 || *i < first_op))
      first_op = *i;
  }
  UNetShape shape;
  shape.layers_per_block = first_op > 0 ? first_op - 1 : std::max(1, last_input);
  return shape;
}

std::optional<std::string> unet_resnet(const std::vector<std::string>& p, std::size_t at) {
  if (p.size() < at + 2) return {};
  static const std::map<std::string, std::string> two = {{"in_layers.0", "norm1"},
                                                         {"in_layers.2", "conv1"},
                                                         {"out_layers.0", "norm2"},
                                                         {"out_layers.3", "conv2"},
                                                         {"emb_layers.1", "time_emb_proj"}};
  if (p[at] == "skip_connection") return "conv_shortcut." + join(p, at + 1);
  if (p.size() < at + 3) return {};
  const auto it = two.find(p[at] + "." + p[at + 1]);
  if (it == two.end()) return {};
  return it->second + "." + join(p, at + 2);
}

std::optional<std::string> unet_name(const std::string& key, const UNetShape& shape) {
  const auto p = split(key);
  const int per_level = shape.layers_per_block + 1;
  auto sub = [&](std::size_t at, const std::string& name) -> std::optional<std::string> {
    if (p.size() <= at) return {};
    return name + "." + join(p, at);
  };
  if (p.size() < 3) return {};
  const auto i = number(p[1]);
  if (p[0] == "time_embed" && (p[1] == "0" || p[1] == "2"))
    return sub(2, p[1] == "0" ? "time_embedding.linear_1" : "time_embedding.linear_2");
  if (p[0] == "label_emb" && p[1] == "0" && (p[2] == "0" || p[2] == "2"))
    return sub(3, p[2] == "0" ? "add_embedding.linear_1" : "add_embedding.linear_2");
  if (p[0] == "out" && (p[1] == "0" || p[1] == "2"))
    return sub(2, p[1] == "0" ? "conv_norm_out" : "conv_out");
  if (!i) return {};
  if (p[0] == "input_blocks") {
    if (*i == 0) return p[2] == "0" ? sub(3, "conv_in") : std::nullopt;
    const int level = (*i - 1) / per_level, j = (*i - 1) % per_level;
    const std::string block = "down_blocks." + std::to_string(level);
    if (j == shape.layers_per_block) {
      if (p[2] != "0" || p.size() < 5 || p[3] != "op") return {};
      return sub(4, block + ".downsamplers.0.conv");
    }
    if (p[2] == "0") {
      auto r = unet_resnet(p, 3);
      return r ? std::optional(block + ".resnets." + std::to_string(j) + "." + *r) : r;
    }
    if (p[2] == "1") return sub(3, block + ".attentions." + std::to_string(j));
    return {};
  }
  if (p[0] == "middle_block") {
    if (*i == 1) return sub(2, "mid_block.attentions.0");
    if (*i != 0 && *i != 2) return {};
    auto r = unet_resnet(p, 2);
    return r ? std::optional("mid_block.resnets." + std::to_string(*i / 2) + "." + *r) : r;
  }
  if (p[0] == "output_blocks") {
    const int level = *i / per_level, j = *i % per_level;
    const std::string block = "up_blocks." + std::to_string(level);
    if (p[2] == "0") {
      auto r = unet_resnet(p, 3);
      return r ? std::optional(block + ".resnets." + std::to_string(j) + "." + *r) : r;
    }
    if ((p[2] == "1" || p[2] == "2") && p.size() > 3 && p[3] == "conv")
      return sub(4, block + ".upsamplers.0.conv");
    if (p[2] == "1") return sub(3, block + ".attentions." + std::to_string(j));
    return {};
  }
  return {};
}

// ---- VAE: ldm AutoencoderKL -> diffusers AutoencoderKL -----------------------------------

std::optional<std::string> vae_resnet(const std::vector<std::string>& p, std::size_t at) {
  if (p.size() != at + 2) return {};
  static const std::set<std::string> same = {"norm1", "conv1", "norm2", "conv2"};
  if (p[at] == "nin_shortcut") return "conv_shortcut." + p[at + 1];
  if (!same.count(p[at])) return {};
  return p[at] + "." + p[at + 1];
}

// `up_levels`: how many decoder.up.N there are (decoder.up.N is up_blocks.(up_levels-1-N)).
std::optional<TensorAlias> vae_alias(const std::string& key, const std::vector<int64_t>& shape,
                                     int up_levels) {
  const auto p = split(key);
  TensorAlias a;
  auto named = [&](std::string name) -> std::optional<TensorAlias> {
    a.name = std::move(name);
    return a;
  };
  if (p.size() == 2 && (p[0] == "quant_conv" || p[0] == "post_quant_conv")) return named(key);
  if (p.size() < 3 || (p[0] != "encoder" && p[0] != "decoder")) return {};
  const std::string& side = p[0];
  if (p.size() == 3) {
    if (p[1] == "conv_in" || p[1] == "conv_out") return named(key);
    if (p[1] == "norm_out") return named(side + ".conv_norm_out." + p[2]);
    return {};
  }
  if (p[1] == "mid") {
    if ((p[2] == "block_1" || p[2] == "block_2")) {
      auto r = vae_resnet(p, 3);
      if (!r) return {};
      return named(side + ".mid_block.resnets." + (p[2] == "block_1" ? "0." : "1.") + *r);
    }
    if (p[2] != "attn_1" || p.size() != 5) return {};
    static const std::map<std::string, std::string> attn = {{"norm", "group_norm"},
                                                            {"q", "to_q"},
                                                            {"k", "to_k"},
                                                            {"v", "to_v"},
                                                            {"proj_out", "to_out.0"}};
    const auto it = attn.find(p[3]);
    if (it == attn.end()) return {};
    if (p[3] != "norm" && shape.size() > 2) a.op = Op::kAs2d;  // 1x1 conv -> linear
    return named(side + ".mid_block.attentions.0." + it->second + "." + p[4]);
  }
  const auto level = number(p[2]);
  const bool down = side == "encoder" && p[1] == "down", up = side == "decoder" && p[1] == "up";
  if (!level || (!down && !up) || p.size() < 5) return {};
  const int block = up ? up_levels - 1 - *level : *level;
  if (block < 0) return {};
  const std::string base =
      side + (down ? ".down_blocks." : ".up_blocks.") + std::to_string(block) + ".";
  if (p[3] == "block" && p.size() > 5 && number(p[4])) {
    auto r = vae_resnet(p, 5);
    if (!r) return {};
    return named(base + "resnets." + p[4] + "." + *r);
  }
  if (p[3] == (down ? "downsample" : "upsample") && p.size() == 6 && p[4] == "conv")
    return named(base + (down ? "downsamplers.0.conv." : "upsamplers.0.conv.") + p[5]);
  return {};
}

// ---- text encoders -------------------------------------------------------------------------

// HF CLIPTextModel keys kept verbatim; an old-transformers file without "text_model." gets it.
std::string clip_l_name(const std::string& key) {
  return starts_with(key, "text_model.") ? key : "text_model." + key;
}

// OpenCLIP's text tower -> CLIPTextModel(WithProjection). `skip_block`: a resblock index that is
// not used (SD 2.x: the last one; -1: none). `projection`: keep text_projection (transposed).
std::vector<TensorAlias> open_clip_aliases(const std::string& key, int skip_block, bool projection,
                                           bool& stray) {
  stray = false;
  auto one = [](std::string name, Op op = Op::kWhole) {
    TensorAlias a;
    a.name = std::move(name);
    a.op = op;
    return std::vector<TensorAlias>{a};
  };
  if (key == "positional_embedding") return one("text_model.embeddings.position_embedding.weight");
  if (key == "token_embedding.weight") return one("text_model.embeddings.token_embedding.weight");
  if (key == "ln_final.weight" || key == "ln_final.bias")
    return one("text_model.final_layer_norm." + key.substr(9));
  if (key == "text_projection") {
    if (projection) return one("text_projection.weight", Op::kTransposed);
    stray = true;
    return {};
  }
  const auto p = split(key);
  if (p.size() < 5 || p[0] != "transformer" || p[1] != "resblocks") return {};
  const auto block = number(p[2]);
  if (!block) return {};
  if (*block == skip_block) {
    stray = true;
    return {};
  }
  const std::string layer = "text_model.encoder.layers." + p[2] + ".";
  const std::string rest = join(p, 3);
  static const std::map<std::string, std::string> renamed = {
      {"ln_1.weight", "layer_norm1.weight"},
      {"ln_1.bias", "layer_norm1.bias"},
      {"ln_2.weight", "layer_norm2.weight"},
      {"ln_2.bias", "layer_norm2.bias"},
      {"mlp.c_fc.weight", "mlp.fc1.weight"},
      {"mlp.c_fc.bias", "mlp.fc1.bias"},
      {"mlp.c_proj.weight", "mlp.fc2.weight"},
      {"mlp.c_proj.bias", "mlp.fc2.bias"},
      {"attn.out_proj.weight", "self_attn.out_proj.weight"},
      {"attn.out_proj.bias", "self_attn.out_proj.bias"}};
  if (const auto it = renamed.find(rest); it != renamed.end()) return one(layer + it->second);
  if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
    const std::string what = rest == "attn.in_proj_weight" ? "weight" : "bias";
    std::vector<TensorAlias> out;
    const char* names[] = {"q_proj", "k_proj", "v_proj"};
    for (int part = 0; part < 3; ++part) {
      TensorAlias a;
      a.name = layer + "self_attn." + names[part] + "." + what;
      a.op = Op::kRows;
      a.part = part;
      a.parts = 3;
      out.push_back(a);
    }
    return out;
  }
  return {};
}

int last_resblock(const std::vector<StTensorInfo>& index, const std::string& prefix) {
  int last = -1;
  const std::string blocks = prefix + "transformer.resblocks.";
  for (const auto& info : index) {
    if (!starts_with(info.name, blocks)) continue;
    const auto p = split(info.name.substr(blocks.size()));
    if (auto n = number(p[0])) last = std::max(last, *n);
  }
  return last;
}

bool has_prefix(const std::vector<StTensorInfo>& index, const std::string& prefix) {
  return std::any_of(index.begin(), index.end(),
                     [&](const StTensorInfo& i) { return starts_with(i.name, prefix); });
}

std::string first_keys(const std::vector<std::string>& keys, std::size_t n = 5) {
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < n; ++i) out += (i ? ", " : "") + keys[i];
  if (keys.size() > n) out += ", ... (" + std::to_string(keys.size()) + " in all)";
  return out;
}

}  // namespace

const char* layout_name(LdmLayout layout) {
  switch (layout) {
    case LdmLayout::kSD2:
      return "SD 2.x";
    case LdmLayout::kSDXL:
      return "SDXL";
    case LdmLayout::kSDXLRefiner:
      return "SDXL refiner";
    case LdmLayout::kSD1:
      break;
  }
  return "SD 1.x";
}

std::string understood_layouts() {
  return "single-file layouts understood (original CompVis/LDM key names, model.diffusion_model.* "
         "and first_stage_model.* with): SD 1.x cond_stage_model.transformer.*; SD 2.x "
         "cond_stage_model.model.*; SDXL conditioner.embedders.0.transformer.* + "
         "conditioner.embedders.1.model.*; SDXL refiner conditioner.embedders.0.model.*";
}

LdmCheckpoint map_ldm_checkpoint(const std::vector<StTensorInfo>& index, const std::string& path) {
  LdmCheckpoint out;
  const bool xl_g = has_prefix(index, kXlClipG), refiner_g = has_prefix(index, kRefinerClipG);
  if (xl_g) {
    out.layout = LdmLayout::kSDXL;
  } else if (refiner_g) {
    out.layout = LdmLayout::kSDXLRefiner;
  } else if (has_prefix(index, kSd2Clip)) {
    out.layout = LdmLayout::kSD2;
  } else if (has_prefix(index, kSd1Clip)) {
    out.layout = LdmLayout::kSD1;
  } else {
    std::vector<std::string> names;
    for (const auto& i : index) names.push_back(i.name);
    std::string hint;
    if (has_prefix(index, "lora_") || has_prefix(index, "lora_unet_"))
      hint = " (it looks like a LoRA file, not a checkpoint)";
    else if (has_prefix(index, "down_blocks.") || has_prefix(index, "text_model."))
      hint = " (it looks like one diffusers component; give the diffusers folder instead)";
    throw LdmLayoutError(path +
                         ": not a single-file Stable Diffusion checkpoint diffusiond "
                         "understands: no text encoder keys" +
                         hint + "; its first keys: " + first_keys(names) + ". " +
                         understood_layouts());
  }
  const UNetShape unet = unet_shape(index);
  int up_levels = 0;
  for (const auto& info : index) {
    const std::string up = kVae + "decoder.up.";
    if (!starts_with(info.name, up)) continue;
    if (auto n = number(split(info.name.substr(up.size()))[0]))
      up_levels = std::max(up_levels, *n + 1);
  }
  const std::string clip_g = out.layout == LdmLayout::kSDXL ? kXlClipG : kRefinerClipG;
  const int sd2_skip = out.layout == LdmLayout::kSD2 ? last_resblock(index, kSd2Clip) : -1;

  std::vector<std::string> unknown;
  std::map<std::string, std::map<std::string, TensorAlias>> by_name;
  std::vector<std::string> duplicates;
  auto add = [&](const std::string& component, TensorAlias a, const std::string& source) {
    a.source = source;
    auto& names = by_name[component];
    if (names.count(a.name)) duplicates.push_back(source + " and " + names[a.name].source);
    names[a.name] = std::move(a);
  };
  for (const auto& info : index) {
    const std::string& key = info.name;
    bool stray = is_known_stray(key);
    bool mapped = false;
    if (!stray && starts_with(key, kUnet)) {
      if (auto name = unet_name(key.substr(kUnet.size()), unet)) {
        TensorAlias a;
        a.name = *name;
        add("unet", a, key);
        mapped = true;
      }
    } else if (!stray && starts_with(key, kVae)) {
      if (auto a = vae_alias(key.substr(kVae.size()), info.shape, up_levels)) {
        add("vae", *a, key);
        mapped = true;
      }
    } else if (!stray && ((out.layout == LdmLayout::kSD1 && starts_with(key, kSd1Clip)) ||
                          (out.layout == LdmLayout::kSDXL && starts_with(key, kXlClipL)))) {
      const std::string& prefix = out.layout == LdmLayout::kSD1 ? kSd1Clip : kXlClipL;
      TensorAlias a;
      a.name = clip_l_name(key.substr(prefix.size()));
      add("text_encoder", a, key);
      mapped = true;
    } else if (!stray && ((out.layout == LdmLayout::kSD2 && starts_with(key, kSd2Clip)) ||
                          (out.layout != LdmLayout::kSD2 && out.layout != LdmLayout::kSD1 &&
                           starts_with(key, clip_g)))) {
      const bool sd2 = out.layout == LdmLayout::kSD2;
      const std::string& prefix = sd2 ? kSd2Clip : clip_g;
      for (auto& a : open_clip_aliases(key.substr(prefix.size()), sd2_skip, !sd2, stray)) {
        add(sd2 ? "text_encoder" : "text_encoder_2", a, key);
        mapped = true;
      }
    }
    if (stray) {
      out.ignored.push_back(key);
    } else if (!mapped) {
      unknown.push_back(key);
    }
  }
  if (!unknown.empty()) {
    throw LdmLayoutError(path + ": " + std::to_string(unknown.size()) + " key(s) of no known " +
                         layout_name(out.layout) + " checkpoint layout: " + first_keys(unknown) +
                         ". " + understood_layouts());
  }
  if (!duplicates.empty()) {
    throw LdmLayoutError(path + ": keys that name the same tensor: " + first_keys(duplicates));
  }
  for (const char* component : {"unet", "vae"}) {
    if (!by_name.count(component)) {
      throw LdmLayoutError(path + ": a " + layout_name(out.layout) + " checkpoint without " +
                           (std::string(component) == "unet" ? "a UNet (model.diffusion_model.*)"
                                                             : "a VAE (first_stage_model.*)"));
    }
  }
  for (auto& [component, names] : by_name) {
    auto& list = out.components[component];
    for (auto& [name, alias] : names) list.push_back(std::move(alias));
  }
  return out;
}

std::vector<std::int64_t> alias_shape(const TensorAlias& alias,
                                      const std::vector<std::int64_t>& shape) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("tensor '" + alias.source + "' (for '" + alias.name + "'): " + why);
  };
  switch (alias.op) {
    case TensorAlias::Op::kWhole:
      return shape;
    case TensorAlias::Op::kRows: {
      if (shape.empty() || alias.parts < 1 || shape[0] % alias.parts != 0)
        fail("dim 0 does not split into " + std::to_string(alias.parts) + " equal parts");
      auto out = shape;
      out[0] /= alias.parts;
      return out;
    }
    case TensorAlias::Op::kAs2d:
      if (shape.size() < 2 ||
          std::any_of(shape.begin() + 2, shape.end(), [](std::int64_t d) { return d != 1; }))
        fail("not a 1x1 convolution kernel");
      return {shape[0], shape[1]};
    case TensorAlias::Op::kTransposed:
      if (shape.size() != 2) fail("not 2-D");
      return {shape[1], shape[0]};
  }
  return shape;
}

}  // namespace diffusiond
