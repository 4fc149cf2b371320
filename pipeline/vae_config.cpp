#include "pipeline/vae_config.h"

#include "pipeline/media/config_util.h"

namespace diffusiond {

VaeConfig VaeConfig::from_json(const nlohmann::json& j, const std::string& file) {
  if (!j.is_object()) throw ConfigError(file + ": not a JSON object");
  VaeConfig c;
  c.in_channels = require_key<int>(j, "in_channels", file);
  c.out_channels = require_key<int>(j, "out_channels", file);
  c.latent_channels = require_key<int>(j, "latent_channels", file);
  c.down_block_types = require_key<std::vector<std::string>>(j, "down_block_types", file);
  c.up_block_types = require_key<std::vector<std::string>>(j, "up_block_types", file);
  c.block_out_channels = require_key<std::vector<int>>(j, "block_out_channels", file);
  c.layers_per_block = require_key<int>(j, "layers_per_block", file);
  c.act_fn = key_or<std::string>(j, "act_fn", "silu", file);
  c.norm_num_groups = key_or<int>(j, "norm_num_groups", 32, file);
  c.sample_size = key_or<int>(j, "sample_size", 32, file);
  // SD 1.x VAE configs predate the key; diffusers' default is SD's 0.18215.
  c.scaling_factor = key_or<double>(j, "scaling_factor", 0.18215, file);
  c.force_upcast = key_or<bool>(j, "force_upcast", true, file);
  c.mid_block_add_attention = key_or<bool>(j, "mid_block_add_attention", true, file);
  c.use_quant_conv = key_or<bool>(j, "use_quant_conv", true, file);
  c.use_post_quant_conv = key_or<bool>(j, "use_post_quant_conv", true, file);

  const std::size_t n = c.block_out_channels.size();
  if (n == 0) throw ConfigError(file + ": key 'block_out_channels' is empty");
  if (c.down_block_types.size() != n || c.up_block_types.size() != n) {
    throw ConfigError(file + ": 'down_block_types', 'up_block_types' and 'block_out_channels' " +
                      "must have the same length");
  }
  for (const auto& t : c.down_block_types) {
    if (t != "DownEncoderBlock2D") {
      throw ConfigError(file + ": down block type '" + t +
                        "' is not supported (DownEncoderBlock2D)");
    }
  }
  for (const auto& t : c.up_block_types) {
    if (t != "UpDecoderBlock2D") {
      throw ConfigError(file + ": up block type '" + t + "' is not supported (UpDecoderBlock2D)");
    }
  }
  if (c.act_fn != "silu" && c.act_fn != "swish" && c.act_fn != "mish" && c.act_fn != "gelu" &&
      c.act_fn != "relu") {
    throw ConfigError(file + ": key 'act_fn' = '" + c.act_fn +
                      "' is not one of silu, swish, mish, gelu, relu");
  }
  for (int ch : c.block_out_channels) {
    if (ch % c.norm_num_groups != 0) {
      throw ConfigError(file + ": " + std::to_string(ch) +
                        " channels are not divisible by norm_num_groups " +
                        std::to_string(c.norm_num_groups));
    }
  }
  const auto norm_type = key_or<std::string>(j, "norm_type", "group", file);
  if (norm_type != "group") {
    throw ConfigError(file + ": key 'norm_type' = '" + norm_type + "' is not supported (group)");
  }
  return c;
}

}  // namespace diffusiond
