// Test helper: a diffusers folder's weights written back under the original CompVis/LDM key
// names, the way diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py and
// convert_diffusers_to_original_sdxl.py go (diffusers -> LDM), written independently of
// pipeline/ldm_keys.cpp (LDM -> diffusers) so that a round trip checks the forward map.
// OpenCLIP towers get their q/k/v fused into attn.in_proj_* and text_projection transposed.
// Thread-safety: free functions.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace diffusiond::testing {

using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

enum class LdmTarget { kSD1, kSD2, kSDXL };

// The whole checkpoint of `folder` (a diffusers folder) in the layout of `target`. kSD2 also
// writes what SD 2.x files carry but no model reads: one more OpenCLIP block after the last and
// a text_projection (random values: if either were read, outputs would change).
StateDict ldm_state_dict(const std::filesystem::path& folder, LdmTarget target);

}  // namespace diffusiond::testing
