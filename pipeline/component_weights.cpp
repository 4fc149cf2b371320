#include "pipeline/component_weights.h"

#include "pipeline/ldm_keys.h"

namespace diffusiond {

std::shared_ptr<const SafetensorsFile> open_component_weights(const ModelFolder& model,
                                                              const std::string& component) {
  if (!model.is_single_file()) return SafetensorsFile::open(model.weights_path(component));
  auto file = SafetensorsFile::open(model.checkpoint);
  LdmCheckpoint ckpt = map_ldm_checkpoint(file->tensors(), model.checkpoint.string());
  auto it = ckpt.components.find(component);
  if (it == ckpt.components.end()) {
    throw ModelNotFound(model.checkpoint.string() + ": this " + layout_name(ckpt.layout) +
                        " checkpoint has no weights for '" + component + "'");
  }
  return file->view(std::move(it->second), component + ", LDM keys mapped");
}

}  // namespace diffusiond
