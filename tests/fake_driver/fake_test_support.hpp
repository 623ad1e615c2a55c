// What the fake-driver suites share: Status assertions and scoped environment
// variables (the driver library to load is chosen through them).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "core/status.hpp"

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

}  // namespace tmoe::testing
