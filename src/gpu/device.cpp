// Devices, their resources, and the GPU count the C ABI reports.
#include "gpu/device.hpp"

#include <utility>

#include "core/backend.hpp"

namespace tmoe {

// Counts the devices of this machine's driver; no driver library, or one that
// sees no device, is 0 devices, not an error.
Status gpu_device_count(int* count) {
  *count = 0;
  std::shared_ptr<gpu::Driver> driver;
  Status status = gpu::machine_driver(&driver);
  if (status.code() == TMOE_ERROR_NO_DEVICE) return Status::ok();
  TMOE_RETURN_IF_ERROR(status);
  return driver->device_count(count);
}

}  // namespace tmoe

namespace tmoe::gpu {

Status Device::open(int index, std::shared_ptr<Device>* device) {
  std::shared_ptr<Driver> driver;
  TMOE_RETURN_IF_ERROR(machine_driver(&driver));
  return open(std::move(driver), index, device);
}

Status Device::open(std::shared_ptr<Driver> driver, int index, std::shared_ptr<Device>* device) {
  int count = 0;
  TMOE_RETURN_IF_ERROR(driver->device_count(&count));
  if (index < 0 || index >= count) {
    return Status::no_device("device: " + driver->library() + " sees " + std::to_string(count) +
                             " device(s), got index " + std::to_string(index));
  }
  std::shared_ptr<Device> d(new Device(std::move(driver), index));
  Driver& drv = *d->driver_;
  TMOE_RETURN_IF_ERROR(drv.retain_context(index, &d->context_));
  d->context_retained_ = true;
  TMOE_RETURN_IF_ERROR(drv.device_name(index, &d->name_));
  TMOE_RETURN_IF_ERROR(drv.device_arch(index, &d->arch_));
  TMOE_RETURN_IF_ERROR(drv.multiprocessor_count(index, &d->multiprocessors_));
  TMOE_RETURN_IF_ERROR(drv.max_shared_per_block(index, &d->max_shared_per_block_));
  *device = std::move(d);
  return Status::ok();
}

Device::~Device() {
  // Errors cannot be reported from a destructor; the release is best effort.
  if (context_retained_) (void)driver_->release_context(index_);
}

std::string Device::target() const { return std::string(api_name(api())) + ":" + arch_; }

Status Device::make_current(ScopedCurrent* scope) const {
  if (scope->driver_ == nullptr) {
    int device = -1;
    ContextHandle context = nullptr;
    TMOE_RETURN_IF_ERROR(driver_->current(&device, &context));
    // Already current (a launch inside a forward): nothing to set, nothing to put back.
    if (device == index_ || (context != nullptr && context == context_)) return Status::ok();
    scope->driver_ = driver_.get();
    scope->device_ = device;
    scope->context_ = context;
  }
  return driver_->make_current(index_, context_);
}

// ---- ScopedCurrent

ScopedCurrent::~ScopedCurrent() {
  // Best effort: a destructor cannot report an error.
  if (driver_ != nullptr) (void)driver_->make_current(device_, context_);
}

// ---- DeviceBuffer

Status DeviceBuffer::allocate(std::shared_ptr<const Device> device, size_t bytes, DeviceBuffer* buffer) {
  buffer->reset();
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device->make_current(&current));
  DevicePtr address = 0;
  TMOE_RETURN_IF_ERROR(device->driver().allocate(bytes, &address));
  buffer->device_ = std::move(device);
  buffer->address_ = address;
  buffer->bytes_ = bytes;
  return Status::ok();
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(std::move(other.device_)),
      address_(std::exchange(other.address_, 0)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::move(other.device_);
    address_ = std::exchange(other.address_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reset() {
  ScopedCurrent current;
  if (address_ != 0 && device_->make_current(&current).is_ok()) (void)device_->driver().release(address_);
  device_.reset();
  address_ = 0;
  bytes_ = 0;
}

// ---- Stream

Status Stream::create(std::shared_ptr<const Device> device, Stream* stream) {
  stream->reset();
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device->make_current(&current));
  StreamHandle handle = nullptr;
  TMOE_RETURN_IF_ERROR(device->driver().create_stream(&handle));
  stream->device_ = std::move(device);
  stream->handle_ = handle;
  return Status::ok();
}

Stream::~Stream() { reset(); }

Stream::Stream(Stream&& other) noexcept
    : device_(std::move(other.device_)), handle_(std::exchange(other.handle_, nullptr)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::move(other.device_);
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

Status Stream::synchronize() const {
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device_->make_current(&current));
  return device_->driver().synchronize_stream(handle_);
}

void Stream::reset() {
  ScopedCurrent current;
  if (handle_ != nullptr && device_->make_current(&current).is_ok()) (void)device_->driver().destroy_stream(handle_);
  device_.reset();
  handle_ = nullptr;
}

// ---- Event

Status Event::create(std::shared_ptr<const Device> device, Event* event) {
  event->reset();
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device->make_current(&current));
  EventHandle handle = nullptr;
  TMOE_RETURN_IF_ERROR(device->driver().create_event(&handle));
  event->device_ = std::move(device);
  event->handle_ = handle;
  return Status::ok();
}

Event::~Event() { reset(); }

Event::Event(Event&& other) noexcept
    : device_(std::move(other.device_)), handle_(std::exchange(other.handle_, nullptr)) {}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::move(other.device_);
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

Status Event::record(StreamHandle stream) const {
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device_->make_current(&current));
  return device_->driver().record_event(handle_, stream);
}

Status Event::elapsed_ms_until(const Event& end, float* ms) const {
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device_->make_current(&current));
  TMOE_RETURN_IF_ERROR(device_->driver().synchronize_event(end.handle_));
  return device_->driver().elapsed_ms(handle_, end.handle_, ms);
}

void Event::reset() {
  ScopedCurrent current;
  if (handle_ != nullptr && device_->make_current(&current).is_ok()) (void)device_->driver().destroy_event(handle_);
  device_.reset();
  handle_ = nullptr;
}

// ---- Graph

Status Graph::begin(const Device& device, StreamHandle stream) {
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device.make_current(&current));
  return device.driver().begin_capture(stream);
}

Status Graph::finish(std::shared_ptr<const Device> device, StreamHandle stream, Status enqueued, Graph* graph) {
  graph->reset();
  ScopedCurrent current;
  const Status made_current = device->make_current(&current);
  Driver& driver = device->driver();
  GraphHandle captured = nullptr;
  Status ended = driver.end_capture(stream, &captured);
  graph->device_ = std::move(device);
  graph->graph_ = captured;
  TMOE_RETURN_IF_ERROR(enqueued);
  TMOE_RETURN_IF_ERROR(made_current);
  TMOE_RETURN_IF_ERROR(ended);
  return driver.instantiate_graph(graph->graph_, &graph->exec_);
}

Graph::~Graph() { reset(); }

Graph::Graph(Graph&& other) noexcept
    : device_(std::move(other.device_)),
      graph_(std::exchange(other.graph_, nullptr)),
      exec_(std::exchange(other.exec_, nullptr)) {}

Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::move(other.device_);
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

Status Graph::launch(StreamHandle stream) const {
  if (exec_ == nullptr) return Status::invalid("graph: nothing was captured and instantiated");
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device_->make_current(&current));
  return device_->driver().launch_graph(exec_, stream);
}

void Graph::reset() {
  ScopedCurrent current;
  if (device_ && device_->make_current(&current).is_ok()) {
    if (exec_ != nullptr) (void)device_->driver().destroy_graph_exec(exec_);
    if (graph_ != nullptr) (void)device_->driver().destroy_graph(graph_);
  }
  device_.reset();
  graph_ = nullptr;
  exec_ = nullptr;
}

}  // namespace tmoe::gpu
