// A dlopen'ed library owned by one object, and typed symbol lookup.
#pragma once

#include <dlfcn.h>

#include <string>
#include <utility>

#include "core/status.hpp"

namespace tmoe::gpu {

class SharedLibrary {
 public:
  SharedLibrary() = default;
  ~SharedLibrary() {
    if (handle_ != nullptr) dlclose(handle_);
  }
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;
  SharedLibrary(SharedLibrary&& other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)), name_(std::move(other.name_)) {}
  SharedLibrary& operator=(SharedLibrary&&) = delete;

  // Absent or unloadable: Status::no_device with dlerror's reason.
  static Status open(const std::string& name, SharedLibrary* library) {
    // RTLD_NODELETE: driver libraries keep threads and exit handlers that must
    // outlive our handle, so dlclose only drops the reference.
    void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (handle == nullptr) {
      const char* why = dlerror();
      return Status::no_device("cannot load " + name + ": " + (why ? why : "unknown dlopen error"));
    }
    if (library->handle_ != nullptr) dlclose(library->handle_);
    library->handle_ = handle;
    library->name_ = name;
    return Status::ok();
  }

  const std::string& name() const { return name_; }

  // Fills `fn` with the first of `names` the library exports (newer drivers
  // version some entry points: cuEventElapsedTime_v2 before cuEventElapsedTime).
  template <typename Fn, typename... Names>
  Status symbol(Fn* fn, const char* first, Names... others) const {
    for (const char* name : {first, others...}) {
      if (void* address = dlsym(handle_, name)) {
        *fn = reinterpret_cast<Fn>(address);
        return Status::ok();
      }
    }
    return Status::driver(name_ + " does not export " + first + ": the driver is older than tritonmoe needs");
  }

 private:
  void* handle_ = nullptr;
  std::string name_;
};

}  // namespace tmoe::gpu
