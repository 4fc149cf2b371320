// Building a model whose every parameter the weights file then replaces, without first filling
// the parameters with random numbers.
//
// torch::nn modules initialise their parameters in their constructors (kaiming_uniform_,
// uniform_, normal_). The loaders replace each one with the file's tensor right after, so that
// work is thrown away, and it is not small: every page of a model-sized set of tensors is
// written (SD 1.5: 4.3 GB and seconds of CPU at every load), and on the CPU, while another
// replica already holds its packed weights, that transient decides the process's peak RSS.
// While a SkipRandomInit lives, uniform_ and normal_ on CPU tensors leave them as they are (the
// memory is allocated but never touched, so never resident). Everything else runs as always.
//
// How: a kernel for aten::uniform_ and aten::normal_ under the AutocastCPU dispatch key (every
// CPU tensor carries it; LibTorch excludes it per thread unless CPU autocast is on), which the
// guard lets through on its own thread only; with the guard off the kernel forwards to the real
// one, so code that turns CPU autocast on still draws its random numbers.
// Thread-safety: the guard acts on the constructing thread only; nest freely.
#pragma once

namespace diffusiond {

class SkipRandomInit {
 public:
  SkipRandomInit();
  ~SkipRandomInit();
  SkipRandomInit(const SkipRandomInit&) = delete;
  SkipRandomInit& operator=(const SkipRandomInit&) = delete;

 private:
  bool was_skipping_;
  bool was_excluded_;
};

}  // namespace diffusiond
