// What the fake-driver suites share: Status assertions, scoped environment
// variables (the driver library to load is chosen through them) and the fakes'
// controls.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include <dlfcn.h>

#include "core/status.hpp"
#include "fake_control.h"
#include "gpu/driver.hpp"

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const ::tmoe::Status status_ = (expr);                 \
    ASSERT_TRUE(status_.is_ok()) << status_.message();     \
  } while (0)

namespace tmoe::testing {

// Sets environment variables for one test and puts the old values back after.
class ScopedEnv {
 public:
  ~ScopedEnv() {
    for (const auto& [name, old] : saved_) {
      if (old) {
        setenv(name.c_str(), old->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }
  void set(const std::string& name, const std::string& value) {
    remember(name);
    setenv(name.c_str(), value.c_str(), 1);
  }
  void unset(const std::string& name) {
    remember(name);
    unsetenv(name.c_str());
  }

 private:
  void remember(const std::string& name) {
    if (saved_.count(name)) return;
    const char* old = std::getenv(name.c_str());
    saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

// The controls one fake driver library exports (see fake_control.h).
struct FakeDriver {
  fake_gpu_reset_fn reset;
  fake_gpu_get_stats_fn get_stats;
  fake_gpu_get_launch_fn get_launch;
  fake_gpu_set_arg_sizes_fn set_arg_sizes;
  fake_gpu_set_function_arg_sizes_fn set_function_arg_sizes;
  fake_gpu_shared_optin_fn shared_optin;
  fake_gpu_set_load_delay_ms_fn set_load_delay_ms;
  void* library;  // for the fake's driver API itself (dlsym), as a caller would use it

  fake_gpu_stats stats() const {
    fake_gpu_stats s{};
    get_stats(&s);
    return s;
  }
  fake_gpu_launch launch(int index) const {
    fake_gpu_launch l{};
    EXPECT_EQ(get_launch(index, &l), 0) << "no launch " << index;
    return l;
  }

  static const FakeDriver& of(gpu::Api api) {
    static const FakeDriver cuda = load(TMOE_FAKE_CUDA_LIBRARY);
    static const FakeDriver hip = load(TMOE_FAKE_HIP_LIBRARY);
    return api == gpu::Api::cuda ? cuda : hip;
  }

 private:
  static FakeDriver load(const char* path) {
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    EXPECT_NE(handle, nullptr) << dlerror();
    FakeDriver f{};
    f.reset = reinterpret_cast<fake_gpu_reset_fn>(dlsym(handle, "fake_gpu_reset"));
    f.get_stats = reinterpret_cast<fake_gpu_get_stats_fn>(dlsym(handle, "fake_gpu_get_stats"));
    f.get_launch = reinterpret_cast<fake_gpu_get_launch_fn>(dlsym(handle, "fake_gpu_get_launch"));
    f.set_arg_sizes = reinterpret_cast<fake_gpu_set_arg_sizes_fn>(dlsym(handle, "fake_gpu_set_arg_sizes"));
    f.set_function_arg_sizes =
        reinterpret_cast<fake_gpu_set_function_arg_sizes_fn>(dlsym(handle, "fake_gpu_set_function_arg_sizes"));
    f.shared_optin = reinterpret_cast<fake_gpu_shared_optin_fn>(dlsym(handle, "fake_gpu_shared_optin"));
    f.set_load_delay_ms = reinterpret_cast<fake_gpu_set_load_delay_ms_fn>(dlsym(handle, "fake_gpu_set_load_delay_ms"));
    f.library = handle;
    return f;
  }
};

}  // namespace tmoe::testing
