// The GPU backend, with what `tmoe tune` and the tests of every tuned choice
// need beyond the Backend interface: the choices it could make for a problem
// and a forward with a given one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "gpu/tuning.hpp"

namespace tmoe::gpu {

class TunableBackend : public Backend {
 public:
  // Every choice the bundle can run for the problem (tile variants of both paths
  // where its hints allow them); the one choice of an unhinted problem.
  virtual std::vector<KernelChoice> candidates(const MoeProblem& problem) const = 0;
  // The heuristic's choice (what forward() runs where the device's tuned table lacks the shape).
  virtual KernelChoice heuristic_choice(const MoeProblem& problem) const = 0;
  // The device as a tuned table names it: "NVIDIA H100 80GB HBM3", "cuda:90".
  virtual const std::string& device_model() const = 0;
  virtual const std::string& target() const = 0;
  // Whether this target's variants can be launched as programmatic dependents
  // (KernelChoice::dependent_launch; the candidates leave it off).
  virtual bool offers_dependent_launch() const = 0;
  // forward() with `choice` in place of the table's or the heuristic's.
  virtual Status forward_with(const MoeProblem& problem, const ExecContext& exec, const KernelChoice& choice) = 0;
};

Status make_tunable_backend(int device, std::unique_ptr<TunableBackend>* backend);

}  // namespace tmoe::gpu
