// Locating a diffusers model folder: a local path, or a Hugging Face repo id resolved offline in
// the HF cache exactly like diffusers with local_files_only=True.
// Thread-safety: free functions; ModelFolder is a value type.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {

class ModelNotFound : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ModelFolder {
  std::filesystem::path root;  // folder holding model_index.json
  std::string name;            // what the user gave (path or repo id)
  std::string variant;         // "" or "fp16"
  nlohmann::json model_index;  // parsed model_index.json

  // root/COMPONENT/config.json (scheduler: root/scheduler/scheduler_config.json).
  std::filesystem::path config_path(const std::string& component) const;
  // The component's weights: root/COMPONENT/<diffusion_pytorch_model|model>[.VARIANT].safetensors.
  // Throws ModelNotFound naming every file name tried.
  std::filesystem::path weights_path(const std::string& component) const;
};

// HF cache roots in diffusers' order: $HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub (only the first that is set is used, like huggingface_hub).
std::filesystem::path hf_hub_cache_dir();

// spec: a folder, or "org/name" looked up as <cache>/models--org--name/refs/main ->
// snapshots/<rev>/. Throws ModelNotFound listing every place it looked.
ModelFolder resolve_model(const std::string& spec, const std::string& variant = "");

}  // namespace diffusiond
