// The HTTP side of bench_serve: N client threads submit one-image jobs to a running daemon and
// follow each over its event stream until done.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace diffusiond::bench {

struct WorkSpec {
  int images = 32;
  int steps = 10;
  int size = 64;
  std::string scheduler = "pndm";  // "": the model's own
  double guidance_scale = -1;      // < 0: the model family's default (as the daemon's)
};

struct ClientRun {
  double wall_s = 0;                  // first submit to last done
  std::vector<double> submit_ms;      // POST /generate -> 202
  std::vector<double> end_to_end_ms;  // POST sent -> "done" event received
  std::vector<double> device_ms;      // per image: started_ms -> finished_ms from the job JSON
  std::vector<double> queue_wait_ms;  // per job: created -> started
  std::vector<std::string> devices;   // which device made each image
  int failures = 0;
};

// Prompt of image i of the workload (the in-process run uses the same ones).
std::string bench_prompt(int i);

ClientRun run_clients(std::uint16_t port, int clients, const WorkSpec& work);
// Client c talks to ports[c % ports.size()] (a fleet: every daemon answers for every job).
ClientRun run_clients(const std::vector<std::uint16_t>& ports, int clients, const WorkSpec& work);

// The p-th percentile (0-100, linear between ranks) and the mean of `v`; 0 when empty.
double percentile(std::vector<double> v, double p);
double mean(const std::vector<double>& v);

}  // namespace diffusiond::bench
