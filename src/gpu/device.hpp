// One GPU seen through one driver, and RAII owners of what lives on it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/status.hpp"
#include "gpu/driver.hpp"

namespace tmoe::gpu {

// Holds the device's context for its lifetime (the primary context on CUDA)
// and knows the properties that select kernels.
class Device {
 public:
  // GPU `index` of this machine's driver (machine_driver: CUDA, else HIP).
  static Status open(int index, std::shared_ptr<Device>* device);
  static Status open(std::shared_ptr<Driver> driver, int index, std::shared_ptr<Device>* device);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  Driver& driver() const { return *driver_; }
  Api api() const { return driver_->api(); }
  int index() const { return index_; }
  const std::string& name() const { return name_; }
  const std::string& arch() const { return arch_; }
  // The manifest's name for this device's own architecture: "cuda:90", "hip:gfx942".
  std::string target() const;
  int multiprocessor_count() const { return multiprocessors_; }
  int max_shared_per_block() const { return max_shared_per_block_; }

  // Every call that touches the device's memory, modules or streams needs it
  // current on the calling thread; cheap enough to do before each. `scope` puts
  // back what the caller had current when it goes out of scope.
  Status make_current(class ScopedCurrent* scope) const;

 private:
  Device(std::shared_ptr<Driver> driver, int index) : driver_(std::move(driver)), index_(index) {}

  std::shared_ptr<Driver> driver_;
  int index_;
  ContextHandle context_ = nullptr;
  bool context_retained_ = false;
  std::string name_;
  std::string arch_;
  int multiprocessors_ = 0;
  int max_shared_per_block_ = 0;
};

// What the calling thread had current before Device::make_current, put back on
// destruction: a library call must not leave the caller on another context or
// device (PyTorch, for one, reads its current device from it).
class ScopedCurrent {
 public:
  ScopedCurrent() = default;
  ~ScopedCurrent();
  ScopedCurrent(const ScopedCurrent&) = delete;
  ScopedCurrent& operator=(const ScopedCurrent&) = delete;

 private:
  friend class Device;
  Driver* driver_ = nullptr;  // null: nothing to put back
  int device_ = -1;
  ContextHandle context_ = nullptr;
};

// Device memory, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static Status allocate(std::shared_ptr<const Device> device, size_t bytes, DeviceBuffer* buffer);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;

  DevicePtr address() const { return address_; }
  size_t bytes() const { return bytes_; }

 private:
  void reset();

  std::shared_ptr<const Device> device_;
  DevicePtr address_ = 0;
  size_t bytes_ = 0;
};

// A non-blocking stream, destroyed on destruction.
class Stream {
 public:
  Stream() = default;
  static Status create(std::shared_ptr<const Device> device, Stream* stream);
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;

  StreamHandle handle() const { return handle_; }
  Status synchronize() const;

 private:
  void reset();

  std::shared_ptr<const Device> device_;
  StreamHandle handle_ = nullptr;
};

// A timing event, destroyed on destruction.
class Event {
 public:
  Event() = default;
  static Status create(std::shared_ptr<const Device> device, Event* event);
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;

  EventHandle handle() const { return handle_; }
  Status record(StreamHandle stream) const;
  // Waits for `end`, then the milliseconds between this event and it.
  Status elapsed_ms_until(const Event& end, float* ms) const;

 private:
  void reset();

  std::shared_ptr<const Device> device_;
  EventHandle handle_ = nullptr;
};

// A captured and instantiated graph: record the work once, replay it cheaply.
class Graph {
 public:
  Graph() = default;
  // Runs `enqueue` on `stream` under capture; the work is recorded, not run.
  template <typename Enqueue>
  static Status capture(std::shared_ptr<const Device> device, StreamHandle stream, Enqueue&& enqueue, Graph* graph);
  ~Graph();
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;

  Status launch(StreamHandle stream) const;

 private:
  static Status begin(const Device& device, StreamHandle stream);
  // Ends the capture even when enqueueing failed, so the stream is usable again.
  static Status finish(std::shared_ptr<const Device> device, StreamHandle stream, Status enqueued, Graph* graph);
  void reset();

  std::shared_ptr<const Device> device_;
  GraphHandle graph_ = nullptr;
  GraphExecHandle exec_ = nullptr;
};

template <typename Enqueue>
Status Graph::capture(std::shared_ptr<const Device> device, StreamHandle stream, Enqueue&& enqueue, Graph* graph) {
  TMOE_RETURN_IF_ERROR(begin(*device, stream));
  Status enqueued = enqueue();
  return finish(std::move(device), stream, std::move(enqueued), graph);
}

}  // namespace tmoe::gpu
