// Loaded kernel modules: one RAII Module per (device, compiled variant), loaded
// on first use and unloaded with its cache.
#pragma once

#include <memory>
#include <mutex>
#include <unordered_map>

#include "core/status.hpp"
#include "gpu/bundle.hpp"
#include "gpu/device.hpp"

namespace tmoe::gpu {

// One loaded binary and its entry point, ready to launch: the shared-memory
// opt-in is done at load, once.
class Module {
 public:
  static Status load(std::shared_ptr<const Device> device, const Bundle& bundle, const KernelEntry& entry,
                     std::unique_ptr<Module>* module);
  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const KernelEntry& entry() const { return entry_; }
  FunctionHandle function() const { return function_; }

 private:
  Module(std::shared_ptr<const Device> device, const KernelEntry& entry) : device_(std::move(device)), entry_(entry) {}

  std::shared_ptr<const Device> device_;
  const KernelEntry& entry_;
  ModuleHandle handle_ = nullptr;
  FunctionHandle function_ = nullptr;
};

// The modules of one device, keyed by the bundle's entries. Thread-safe: threads
// asking for the same variant at once load it once.
class ModuleCache {
 public:
  ModuleCache(std::shared_ptr<const Device> device, const Bundle& bundle);

  // `entry` must be a record of the cache's bundle.
  Status get(const KernelEntry& entry, const Module** module);
  size_t loaded_count() const;

  const Device& device() const { return *device_; }

 private:
  std::shared_ptr<const Device> device_;
  const Bundle& bundle_;
  mutable std::mutex mutex_;
  std::unordered_map<const KernelEntry*, std::unique_ptr<Module>> modules_;
};

}  // namespace tmoe::gpu
