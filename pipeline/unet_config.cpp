#include "pipeline/unet_config.h"

#include <algorithm>

#include "pipeline/media/config_util.h"

namespace diffusiond {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw ConfigError(file + ": " + what);
}

bool present(const json& j, const std::string& key) {
  auto it = j.find(key);
  return it != j.end() && !it->is_null();
}

// A value that diffusers accepts either as one scalar for every down block or as a per-block
// list (int, float or bool). Returns one value per down block.
template <typename T>
std::vector<T> per_block(const json& j, const std::string& key, const T& fallback, bool required,
                         std::size_t blocks, const std::string& file) {
  if (!present(j, key)) {
    if (required) fail(file, "missing required key '" + key + "'");
    return std::vector<T>(blocks, fallback);
  }
  const json& v = j.at(key);
  try {
    if (v.is_array()) {
      if (v.size() != blocks) {
        fail(file, "key '" + key + "' has " + std::to_string(v.size()) + " entries but there are " +
                       std::to_string(blocks) + " down blocks");
      }
      std::vector<T> out;
      for (const auto& e : v) out.push_back(e.get<T>());
      return out;
    }
    return std::vector<T>(blocks, v.get<T>());
  } catch (const json::exception&) {
    fail(file, "key '" + key + "' has the wrong type (" + v.type_name() + ")");
  }
}

// One entry of transformer_layers_per_block: an int for every layer, or a per-layer list.
std::vector<int> layer_counts(const json& entry, int layers, const std::string& key,
                              const std::string& file) {
  try {
    if (entry.is_array()) {
      if (static_cast<int>(entry.size()) < layers) {
        fail(file, "key '" + key + "' lists " + std::to_string(entry.size()) +
                       " layer counts for a block of " + std::to_string(layers) + " layers");
      }
      std::vector<int> out;
      for (int i = 0; i < layers; ++i) out.push_back(entry[i].get<int>());
      return out;
    }
    return std::vector<int>(layers, entry.get<int>());
  } catch (const json::exception&) {
    fail(file, "key '" + key + "' has the wrong type (" + entry.type_name() + ")");
  }
}

// Keys that enable features this implementation does not have: must be absent or null.
void require_null(const json& j, const std::string& key, const std::string& file,
                  const std::string& why) {
  if (present(j, key)) {
    fail(file, "key '" + key + "' = " + j.at(key).dump() + " is not supported (" + why + ")");
  }
}

std::string strip_unetres(const std::string& type) {
  // get_down_block/get_up_block accept a "UNetRes" prefix and drop it.
  return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type;
}

void check_activation(const std::string& act, const std::string& key, const std::string& file) {
  static const char* known[] = {"silu", "swish", "mish", "gelu", "relu"};
  if (std::find(std::begin(known), std::end(known), act) == std::end(known)) {
    fail(file, "key '" + key + "' = '" + act + "' is not one of silu, swish, mish, gelu, relu");
  }
}

}  // namespace

int UNetConfig::up_num_attention_heads(std::size_t i) const {
  return num_attention_heads[num_blocks() - 1 - i];
}
int UNetConfig::up_cross_attention_dim(std::size_t i) const {
  return cross_attention_dim[num_blocks() - 1 - i];
}
bool UNetConfig::up_only_cross_attention(std::size_t i) const {
  return only_cross_attention[num_blocks() - 1 - i];
}
int UNetConfig::up_layers(std::size_t i) const {
  return layers_per_block[num_blocks() - 1 - i] + 1;
}

UNetConfig UNetConfig::from_json(const json& j, const std::string& file) {
  if (!j.is_object()) fail(file, "not a JSON object");
  UNetConfig c;

  // Structural keys every diffusers UNet config carries (SD 1.x configs included).
  c.sample_size = require_key<int>(j, "sample_size", file);
  c.in_channels = require_key<int>(j, "in_channels", file);
  c.out_channels = require_key<int>(j, "out_channels", file);
  c.down_block_types = require_key<std::vector<std::string>>(j, "down_block_types", file);
  c.up_block_types = require_key<std::vector<std::string>>(j, "up_block_types", file);
  c.block_out_channels = require_key<std::vector<int>>(j, "block_out_channels", file);
  if (!present(j, "cross_attention_dim")) fail(file, "missing required key 'cross_attention_dim'");
  if (!present(j, "layers_per_block")) fail(file, "missing required key 'layers_per_block'");
  if (!present(j, "attention_head_dim") && !present(j, "num_attention_heads")) {
    fail(file, "missing required key 'attention_head_dim'");
  }

  const std::size_t n = c.down_block_types.size();
  if (n == 0) fail(file, "key 'down_block_types' is empty");
  if (c.up_block_types.size() != n) {
    fail(file, "'down_block_types' has " + std::to_string(n) +
                   " entries but 'up_block_types' has " + std::to_string(c.up_block_types.size()));
  }
  if (c.block_out_channels.size() != n) {
    fail(file, "'block_out_channels' has " + std::to_string(c.block_out_channels.size()) +
                   " entries but 'down_block_types' has " + std::to_string(n));
  }
  for (auto& t : c.down_block_types) {
    t = strip_unetres(t);
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") {
      fail(file,
           "down block type '" + t + "' is not supported (CrossAttnDownBlock2D, DownBlock2D)");
    }
  }
  for (auto& t : c.up_block_types) {
    t = strip_unetres(t);
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") {
      fail(file, "up block type '" + t + "' is not supported (CrossAttnUpBlock2D, UpBlock2D)");
    }
  }
  if (j.contains("mid_block_type") && j.at("mid_block_type").is_null()) {
    c.mid_block_type.clear();  // explicit null: diffusers skips the mid block
  } else {
    c.mid_block_type =
        strip_unetres(key_or<std::string>(j, "mid_block_type", "UNetMidBlock2DCrossAttn", file));
    if (c.mid_block_type != "UNetMidBlock2DCrossAttn") {
      fail(file, "mid block type '" + c.mid_block_type +
                     "' is not supported (UNetMidBlock2DCrossAttn or null)");
    }
  }

  c.center_input_sample = key_or<bool>(j, "center_input_sample", false, file);
  c.flip_sin_to_cos = key_or<bool>(j, "flip_sin_to_cos", true, file);
  c.freq_shift = key_or<double>(j, "freq_shift", 0.0, file);
  c.downsample_padding = key_or<int>(j, "downsample_padding", 1, file);
  c.mid_block_scale_factor = key_or<double>(j, "mid_block_scale_factor", 1.0, file);
  c.act_fn = key_or<std::string>(j, "act_fn", "silu", file);
  check_activation(c.act_fn, "act_fn", file);
  if (j.contains("norm_num_groups") && j.at("norm_num_groups").is_null()) {
    fail(file, "key 'norm_num_groups' = null is not supported (ResnetBlock2D needs groups)");
  }
  c.norm_num_groups = key_or<int>(j, "norm_num_groups", 32, file);
  c.norm_eps = key_or<double>(j, "norm_eps", 1e-5, file);
  c.use_linear_projection = key_or<bool>(j, "use_linear_projection", false, file);
  c.upcast_attention = key_or<bool>(j, "upcast_attention", false, file);
  c.resnet_time_scale_shift = key_or<std::string>(j, "resnet_time_scale_shift", "default", file);
  if (c.resnet_time_scale_shift != "default" && c.resnet_time_scale_shift != "scale_shift") {
    fail(file, "key 'resnet_time_scale_shift' = '" + c.resnet_time_scale_shift +
                   "' is not supported (default, scale_shift)");
  }
  c.conv_in_kernel = key_or<int>(j, "conv_in_kernel", 3, file);
  c.conv_out_kernel = key_or<int>(j, "conv_out_kernel", 3, file);

  // Features outside SD 1.x / 2.x: refuse clearly rather than compute something else.
  if (key_or<bool>(j, "dual_cross_attention", false, file)) {
    fail(file, "key 'dual_cross_attention' = true is not supported");
  }
  const auto time_type = key_or<std::string>(j, "time_embedding_type", "positional", file);
  if (time_type != "positional") {
    fail(file, "key 'time_embedding_type' = '" + time_type + "' is not supported (positional)");
  }
  const auto attention_type = key_or<std::string>(j, "attention_type", "default", file);
  if (attention_type != "default") {
    fail(file, "key 'attention_type' = '" + attention_type + "' is not supported (default)");
  }
  // Features of other UNet families (out of scope: diffusiond serves SD 1.x/2.x and SDXL);
  // refused by name so such a model fails at load instead of giving wrong images.
  const std::string class_cond =
      "class-conditioned UNets such as the x4 upscaler are not SD 1.x/2.x";
  require_null(j, "class_embed_type", file, class_cond);
  require_null(j, "num_class_embeds", file, class_cond);
  // addition_embed_type: only SDXL's "text_time"; text / text_image / image / image_hint belong
  // to Kandinsky and IP-adapter style UNets.
  if (present(j, "addition_embed_type")) {
    c.addition_embed_type = key_or<std::string>(j, "addition_embed_type", "", file);
    if (c.addition_embed_type != "text_time") {
      fail(file, "key 'addition_embed_type' = '" + c.addition_embed_type +
                     "' is not supported (text_time, as SDXL, or null)");
    }
    c.addition_time_embed_dim = require_key<int>(j, "addition_time_embed_dim", file);
    c.projection_class_embeddings_input_dim =
        require_key<int>(j, "projection_class_embeddings_input_dim", file);
    if (c.addition_time_embed_dim <= 0 ||
        c.projection_class_embeddings_input_dim <= c.addition_time_embed_dim) {
      fail(file,
           "'addition_time_embed_dim' and 'projection_class_embeddings_input_dim' must be "
           "positive, the second larger (it holds the pooled text embedding and the time ids)");
    }
  }
  const std::string hid_proj = "an encoder_hid_proj (Kandinsky, DeepFloyd IF) is not SD 1.x/2.x";
  require_null(j, "encoder_hid_dim", file, hid_proj);
  require_null(j, "encoder_hid_dim_type", file, hid_proj);
  require_null(j, "time_cond_proj_dim", file, "guidance-distilled (LCM) UNets are not SD 1.x/2.x");
  const std::string none_in_sd = "SD 1.x/2.x UNets have none";
  require_null(j, "time_embedding_act_fn", file, none_in_sd);
  require_null(j, "timestep_post_act", file, none_in_sd);
  require_null(j, "cross_attention_norm", file, none_in_sd);

  c.time_embedding_dim = key_or<int>(j, "time_embedding_dim", 0, file);
  if (c.time_embedding_dim == 0) c.time_embedding_dim = c.block_out_channels[0] * 4;

  // Per-block values. "attention_head_dim" historically holds the NUMBER of heads; diffusers
  // resolves num_attention_heads = num_attention_heads or attention_head_dim.
  c.num_attention_heads = present(j, "num_attention_heads")
                              ? per_block<int>(j, "num_attention_heads", 0, true, n, file)
                              : per_block<int>(j, "attention_head_dim", 8, true, n, file);
  c.cross_attention_dim = per_block<int>(j, "cross_attention_dim", 1280, true, n, file);
  c.layers_per_block = per_block<int>(j, "layers_per_block", 2, true, n, file);
  c.only_cross_attention = per_block<bool>(j, "only_cross_attention", false, false, n, file);
  {
    const json oca = j.value("only_cross_attention", json(false));
    const bool scalar = !oca.is_array();
    c.mid_block_only_cross_attention = key_or<bool>(
        j, "mid_block_only_cross_attention", scalar ? c.only_cross_attention[0] : false, file);
  }

  // transformer_layers_per_block: int, per-block list, or per-block per-layer lists.
  {
    const json t = j.value("transformer_layers_per_block", json(1));
    const json tv = t.is_null() ? json(1) : t;
    if (tv.is_array() && tv.size() != n) {
      fail(file, "key 'transformer_layers_per_block' has " + std::to_string(tv.size()) +
                     " entries but there are " + std::to_string(n) + " down blocks");
    }
    bool nested = false;
    for (std::size_t i = 0; i < n; ++i) {
      const json& entry = tv.is_array() ? tv[i] : tv;
      nested = nested || entry.is_array();
      c.down_transformer_layers.push_back(
          layer_counts(entry, c.layers_per_block[i], "transformer_layers_per_block", file));
    }
    // UNetMidBlock2DCrossAttn has one attention: it takes entry [0] of the last block's counts.
    c.mid_transformer_layers =
        layer_counts(tv.is_array() ? tv[n - 1] : tv, 1, "transformer_layers_per_block", file)[0];
    const json r = j.value("reverse_transformer_layers_per_block", json());
    if (!r.is_null()) {
      if (!r.is_array() || r.size() != n) {
        fail(file, "key 'reverse_transformer_layers_per_block' must list one entry per up block");
      }
      for (std::size_t i = 0; i < n; ++i) {
        c.up_transformer_layers.push_back(
            layer_counts(r[i], c.up_layers(i), "reverse_transformer_layers_per_block", file));
      }
    } else {
      if (nested) {
        fail(file,
             "key 'transformer_layers_per_block' has per-layer lists, which needs "
             "'reverse_transformer_layers_per_block'");
      }
      for (std::size_t i = 0; i < n; ++i) {
        const json& entry = tv.is_array() ? tv[n - 1 - i] : tv;
        c.up_transformer_layers.push_back(
            layer_counts(entry, c.up_layers(i), "transformer_layers_per_block", file));
      }
    }
  }

  // Shape sanity that diffusers would only discover as a weight mismatch.
  for (std::size_t i = 0; i < n; ++i) {
    const bool cross = c.down_block_types[i] == "CrossAttnDownBlock2D" ||
                       c.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D" ||
                       (i == n - 1 && !c.mid_block_type.empty());
    const int heads = c.num_attention_heads[i];
    if (cross && (heads <= 0 || c.block_out_channels[i] % heads != 0)) {
      fail(file, "block " + std::to_string(i) + ": " + std::to_string(c.block_out_channels[i]) +
                     " channels cannot be split into " + std::to_string(heads) +
                     " attention heads");
    }
    if (c.block_out_channels[i] % c.norm_num_groups != 0) {
      fail(file, "block " + std::to_string(i) + ": " + std::to_string(c.block_out_channels[i]) +
                     " channels are not divisible by norm_num_groups " +
                     std::to_string(c.norm_num_groups));
    }
  }
  return c;
}

}  // namespace diffusiond
