// Status codes inside the library (FlashInfer's convention): every layer returns
// a Status; only the C++ wrapper at the public edge throws.
#pragma once

#include <tmoe/tmoe.h>

#include <string>
#include <utility>

namespace tmoe {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(tmoe_status code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  static Status invalid(std::string m) { return {TMOE_ERROR_INVALID_ARGUMENT, std::move(m)}; }
  static Status unsupported(std::string m) { return {TMOE_ERROR_UNSUPPORTED, std::move(m)}; }
  static Status no_device(std::string m) { return {TMOE_ERROR_NO_DEVICE, std::move(m)}; }
  static Status driver(std::string m) { return {TMOE_ERROR_DRIVER, std::move(m)}; }
  static Status out_of_memory(std::string m) { return {TMOE_ERROR_OUT_OF_MEMORY, std::move(m)}; }
  static Status internal(std::string m) { return {TMOE_ERROR_INTERNAL, std::move(m)}; }

  bool is_ok() const { return code_ == TMOE_SUCCESS; }
  tmoe_status code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  tmoe_status code_ = TMOE_SUCCESS;
  std::string message_;
};

#define TMOE_RETURN_IF_ERROR(expr)          \
  do {                                      \
    ::tmoe::Status tmoe_status_ = (expr);   \
    if (!tmoe_status_.is_ok()) return tmoe_status_; \
  } while (0)

}  // namespace tmoe
