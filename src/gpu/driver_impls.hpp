// The two Driver implementations, each in its own file.
#pragma once

#include <memory>
#include <string>

#include "gpu/driver.hpp"

namespace tmoe::gpu {

Status open_cuda_driver(const std::string& library, std::unique_ptr<Driver>* driver);
Status open_hip_driver(const std::string& library, std::unique_ptr<Driver>* driver);

}  // namespace tmoe::gpu
