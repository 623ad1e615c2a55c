#include "gpu/module_cache.hpp"

#include <string>

namespace tmoe::gpu {
namespace {

// Dynamic shared memory up to this size needs no opt-in on either vendor.
constexpr uint32_t kDefaultSharedLimit = 48 * 1024;

Status with_context(const Status& status, const KernelEntry& entry) {
  if (status.is_ok()) return status;
  return Status(status.code(), status.message() + " [loading " + entry.describe() + ", entry " + entry.entry +
                                   ", " + std::to_string(entry.size) + " bytes]");
}

}  // namespace

Status Module::load(std::shared_ptr<const Device> device, const Bundle& bundle, const KernelEntry& entry,
                    std::unique_ptr<Module>* module) {
  if (entry.backend != api_name(device->api())) {
    return Status::invalid(entry.describe() + " is a " + entry.format + " for " + entry.backend + "; device " +
                           std::to_string(device->index()) + " (" + device->name() + ") is " + device->target());
  }
  if (entry.shared > static_cast<uint32_t>(device->max_shared_per_block())) {
    return Status::unsupported(entry.describe() + " needs " + std::to_string(entry.shared) +
                               " bytes of shared memory per block; " + device->name() + " allows " +
                               std::to_string(device->max_shared_per_block()));
  }
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device->make_current(&current));
  std::unique_ptr<Module> loaded(new Module(device, entry));
  Driver& driver = device->driver();
  TMOE_RETURN_IF_ERROR(with_context(driver.load_module(bundle.image(entry).data(), &loaded->handle_), entry));
  TMOE_RETURN_IF_ERROR(
      with_context(driver.get_function(loaded->handle_, entry.entry.c_str(), &loaded->function_), entry));
  if (entry.shared > kDefaultSharedLimit) {
    TMOE_RETURN_IF_ERROR(
        with_context(driver.set_max_dynamic_shared(loaded->function_, static_cast<int>(entry.shared)), entry));
  }
  *module = std::move(loaded);
  return Status::ok();
}

Module::~Module() {
  // Errors cannot be reported from a destructor; the unload is best effort.
  ScopedCurrent current;
  if (handle_ != nullptr && device_->make_current(&current).is_ok()) (void)device_->driver().unload_module(handle_);
}

ModuleCache::ModuleCache(std::shared_ptr<const Device> device, const Bundle& bundle)
    : device_(std::move(device)), bundle_(bundle) {}

Status ModuleCache::get(const KernelEntry& entry, const Module** module) {
  if (!bundle_.owns(entry)) {
    return Status::internal(entry.describe() + " is not a record of this module cache's bundle");
  }
  // Loading under the lock keeps it to once per variant; it happens once per
  // variant per device, so serialising it costs nothing that matters.
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Module>& slot = modules_[&entry];
  if (!slot) {
    std::unique_ptr<Module> loaded;
    Status status = Module::load(device_, bundle_, entry, &loaded);
    if (!status.is_ok()) {
      modules_.erase(&entry);
      return status;
    }
    slot = std::move(loaded);
  }
  *module = slot.get();
  return Status::ok();
}

size_t ModuleCache::loaded_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return modules_.size();
}

}  // namespace tmoe::gpu
