// Choosing and sharing driver libraries.
#include "gpu/driver.hpp"

#include <cstdlib>
#include <map>
#include <mutex>

#include "gpu/driver_impls.hpp"

namespace tmoe::gpu {

const char* api_name(Api api) { return api == Api::cuda ? "cuda" : "hip"; }

std::string driver_library(Api api) {
  const char* variable = api == Api::cuda ? "TMOE_CUDA_DRIVER" : "TMOE_HIP_RUNTIME";
  const char* value = std::getenv(variable);
  if (value != nullptr && value[0] != '\0') return value;
  return api == Api::cuda ? "libcuda.so.1" : "libamdhip64.so";
}

Status open_driver(Api api, const std::string& library, std::unique_ptr<Driver>* driver) {
  return api == Api::cuda ? open_cuda_driver(library, driver) : open_hip_driver(library, driver);
}

Status shared_driver(Api api, std::shared_ptr<Driver>* driver) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<Driver>> opened;
  const std::string library = driver_library(api);
  const std::string key = std::string(api_name(api)) + ":" + library;

  std::lock_guard<std::mutex> lock(mutex);
  auto found = opened.find(key);
  if (found != opened.end()) {
    *driver = found->second;
    return Status::ok();
  }
  // Failures are not cached: a later call may find a library installed since.
  std::unique_ptr<Driver> fresh;
  TMOE_RETURN_IF_ERROR(open_driver(api, library, &fresh));
  *driver = opened[key] = std::move(fresh);
  return Status::ok();
}

Status machine_driver(std::shared_ptr<Driver>* driver) {
  std::string tried;
  tmoe_status code = TMOE_ERROR_NO_DEVICE;
  for (Api api : {Api::cuda, Api::hip}) {
    std::shared_ptr<Driver> candidate;
    Status status = shared_driver(api, &candidate);
    int count = 0;
    if (status.is_ok()) status = candidate->device_count(&count);
    if (status.is_ok() && count > 0) {
      *driver = std::move(candidate);
      return Status::ok();
    }
    if (status.is_ok()) status = Status::no_device(candidate->library() + " sees no device");
    // A driver that is present but broken outranks one that is simply absent.
    if (status.code() != TMOE_ERROR_NO_DEVICE) code = status.code();
    tried += (tried.empty() ? "" : "; ") + status.message();
  }
  return Status(code, "no usable GPU: " + tried);
}

}  // namespace tmoe::gpu
