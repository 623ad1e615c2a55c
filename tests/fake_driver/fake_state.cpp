#include "fake_state.hpp"

#include <elf.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

namespace fake {
namespace {

constexpr unsigned kDefaultSharedLimit = 48 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kAllocationAlignment = 256;  // cuMemAlloc's and hipMalloc's guarantee

struct Module {
  std::string_view image;  // the caller's bytes, up to the ELF extent
};

struct Function {
  Module* module;
  std::string name;
  int max_dynamic_shared = 0;
};

struct Stream {
  bool capturing = false;
  std::vector<fake_gpu_launch> captured;
};

struct Graph {
  std::vector<fake_gpu_launch> launches;
};

struct State {
  std::mutex mutex;
  std::set<Module*> modules;
  std::set<Function*> functions;
  std::set<void*> allocations;
  std::set<Stream*> streams;
  std::map<void*, unsigned long> events;  // event -> stamp of its last record
  std::set<Graph*> graphs;
  std::set<Graph*> execs;
  std::vector<fake_gpu_launch> launches;
  std::vector<int> arg_sizes;
  std::map<std::string, std::vector<int>> function_arg_sizes;
  std::map<std::string, int> shared_optins;
  fake_gpu_stats stats{};
  int load_delay_ms = 0;
  unsigned long clock = 0;
};

State& state() {
  static State s;
  return s;
}

// The bytes an ELF image spans, read from its headers: the length a real
// driver infers from the image pointer alone.
size_t elf_extent(const unsigned char* image) {
  Elf64_Ehdr header;
  std::memcpy(&header, image, sizeof header);
  size_t extent = std::max<size_t>(header.e_ehsize, sizeof header);
  extent = std::max<size_t>(extent, header.e_phoff + size_t{header.e_phnum} * header.e_phentsize);
  extent = std::max<size_t>(extent, header.e_shoff + size_t{header.e_shnum} * header.e_shentsize);
  for (unsigned i = 0; i < header.e_shnum; ++i) {
    Elf64_Shdr section;
    std::memcpy(&section, image + header.e_shoff + size_t{i} * header.e_shentsize, sizeof section);
    if (section.sh_type != SHT_NOBITS) extent = std::max<size_t>(extent, section.sh_offset + section.sh_size);
  }
  return extent;
}

void copy_name(char (&to)[128], const std::string& from) {
  std::snprintf(to, sizeof to, "%s", from.c_str());
}

}  // namespace

int device_count() {
  const char* value = std::getenv("FAKE_GPU_COUNT");
  return value ? std::atoi(value) : 1;
}

bool valid_device(int device) { return device >= 0 && device < device_count(); }

std::string arch(const char* fallback) {
  const char* value = std::getenv("FAKE_GPU_ARCH");
  return value && value[0] ? value : fallback;
}

int load_module(const void* image, void** module) {
  State& s = state();
  int delay = 0;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    ++s.stats.load_calls;
    delay = s.load_delay_ms;
  }
  if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  const auto* bytes = static_cast<const unsigned char*>(image);
  if (bytes == nullptr || std::memcmp(bytes, ELFMAG, SELFMAG) != 0 || bytes[EI_CLASS] != ELFCLASS64) {
    return kInvalidImage;
  }
  size_t extent = elf_extent(bytes);
  auto* m = new Module{std::string_view(reinterpret_cast<const char*>(bytes), extent)};
  std::lock_guard<std::mutex> lock(s.mutex);
  s.modules.insert(m);
  ++s.stats.modules_live;
  s.stats.last_module_bytes = extent;
  *module = m;
  return kSuccess;
}

int get_function(void* module, const char* name, void** function) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* m = static_cast<Module*>(module);
  if (s.modules.count(m) == 0) return kInvalidHandle;
  copy_name(s.stats.last_function, name);
  if (m->image.find(name) == std::string_view::npos) return kNotFound;
  auto* f = new Function{m, name};
  s.functions.insert(f);
  *function = f;
  return kSuccess;
}

int unload_module(void* module) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* m = static_cast<Module*>(module);
  if (s.modules.erase(m) == 0) return kInvalidHandle;
  for (auto it = s.functions.begin(); it != s.functions.end();) {
    if ((*it)->module == m) {
      delete *it;
      it = s.functions.erase(it);
    } else {
      ++it;
    }
  }
  delete m;
  --s.stats.modules_live;
  return kSuccess;
}

int set_max_dynamic_shared(void* function, int bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* f = static_cast<Function*>(function);
  if (s.functions.count(f) == 0) return kInvalidHandle;
  if (bytes < 0) return kInvalidValue;
  f->max_dynamic_shared = bytes;
  s.shared_optins[f->name] = bytes;
  return kSuccess;
}

int launch(void* function, const unsigned grid[3], const unsigned block[3], unsigned shared, void* stream,
           void** params, void** extra, bool programmatic_dependent) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* f = static_cast<Function*>(function);
  if (s.functions.count(f) == 0) return kInvalidHandle;
  if (stream != nullptr && s.streams.count(static_cast<Stream*>(stream)) == 0) return kInvalidHandle;
  auto own_sizes = s.function_arg_sizes.find(f->name);
  const std::vector<int>& sizes = own_sizes != s.function_arg_sizes.end() ? own_sizes->second : s.arg_sizes;
  if (extra != nullptr || (params == nullptr && !sizes.empty())) return kInvalidValue;
  if (uint64_t{block[0]} * block[1] * block[2] > kMaxThreadsPerBlock) return kInvalidValue;
  // As on the real drivers: above 48 KiB, only what the function opted into.
  if (shared > kDefaultSharedLimit && shared > static_cast<unsigned>(f->max_dynamic_shared)) return kInvalidValue;
  fake_gpu_launch record{};
  copy_name(record.function, f->name);
  std::copy(grid, grid + 3, record.grid);
  std::copy(block, block + 3, record.block);
  record.shared = shared;
  record.stream = stream;
  record.image = f->module->image.data();
  record.programmatic_dependent = programmatic_dependent ? 1 : 0;
  record.arg_count = static_cast<int>(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) std::memcpy(&record.args[i], params[i], sizes[i]);
  auto* capturing = static_cast<Stream*>(stream);
  if (capturing != nullptr && capturing->capturing) {
    capturing->captured.push_back(record);
  } else {
    s.launches.push_back(record);
    ++s.stats.launches;
  }
  return kSuccess;
}

int allocate(size_t bytes, void** ptr) {
  State& s = state();
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAllocationAlignment - 1) / kAllocationAlignment *
                         kAllocationAlignment;
  void* p = std::aligned_alloc(kAllocationAlignment, rounded);
  if (p == nullptr) return kOutOfMemory;
  std::lock_guard<std::mutex> lock(s.mutex);
  s.allocations.insert(p);
  ++s.stats.live_allocations;
  *ptr = p;
  return kSuccess;
}

int release(void* ptr) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.allocations.erase(ptr) == 0) return kInvalidValue;
  std::free(ptr);
  --s.stats.live_allocations;
  return kSuccess;
}

int create_stream(void** stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* st = new Stream;
  s.streams.insert(st);
  *stream = st;
  return kSuccess;
}

int destroy_stream(void* stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* st = static_cast<Stream*>(stream);
  if (s.streams.erase(st) == 0) return kInvalidHandle;
  delete st;
  return kSuccess;
}

bool valid_stream(void* stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return stream == nullptr || s.streams.count(static_cast<Stream*>(stream)) != 0;
}

int create_event(void** event) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  void* e = new char;
  s.events[e] = 0;
  *event = e;
  return kSuccess;
}

int record_event(void* event, void* stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.events.find(event);
  if (it == s.events.end()) return kInvalidHandle;
  if (stream != nullptr && s.streams.count(static_cast<Stream*>(stream)) == 0) return kInvalidHandle;
  it->second = ++s.clock;
  return kSuccess;
}

int elapsed_ms(float* ms, void* start, void* end) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto a = s.events.find(start);
  auto b = s.events.find(end);
  if (a == s.events.end() || b == s.events.end()) return kInvalidHandle;
  // A quarter of a millisecond per record in between: deterministic for tests.
  *ms = 0.25f * static_cast<float>(b->second - a->second);
  return kSuccess;
}

int destroy_event(void* event) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.events.erase(event) == 0) return kInvalidHandle;
  delete static_cast<char*>(event);
  return kSuccess;
}

int begin_capture(void* stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* st = static_cast<Stream*>(stream);
  if (st == nullptr) return kCaptureUnsupported;  // the legacy default stream cannot be captured
  if (s.streams.count(st) == 0 || st->capturing) return kInvalidValue;
  st->capturing = true;
  st->captured.clear();
  return kSuccess;
}

int end_capture(void* stream, void** graph) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* st = static_cast<Stream*>(stream);
  if (st == nullptr || s.streams.count(st) == 0 || !st->capturing) return kInvalidValue;
  st->capturing = false;
  auto* g = new Graph{std::move(st->captured)};
  st->captured.clear();
  s.graphs.insert(g);
  *graph = g;
  return kSuccess;
}

int instantiate(void** exec, void* graph) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* g = static_cast<Graph*>(graph);
  if (s.graphs.count(g) == 0) return kInvalidHandle;
  auto* e = new Graph(*g);
  s.execs.insert(e);
  *exec = e;
  return kSuccess;
}

int launch_graph(void* exec, void* stream) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* e = static_cast<Graph*>(exec);
  if (s.execs.count(e) == 0) return kInvalidHandle;
  for (fake_gpu_launch record : e->launches) {
    record.stream = stream;
    s.launches.push_back(record);
    ++s.stats.launches;
  }
  return kSuccess;
}

int destroy_graph(void* graph) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* g = static_cast<Graph*>(graph);
  if (s.graphs.erase(g) == 0) return kInvalidHandle;
  delete g;
  return kSuccess;
}

int destroy_exec(void* exec) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto* e = static_cast<Graph*>(exec);
  if (s.execs.erase(e) == 0) return kInvalidHandle;
  delete e;
  return kSuccess;
}

void count_context_retain(int delta) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.stats.contexts_retained += delta;
}

}  // namespace fake

// ---- The control API the tests call.

FAKE_EXPORT void fake_gpu_reset(void) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  // Handles still owned by the library under test stay valid; only the record restarts.
  s.launches.clear();
  s.arg_sizes.clear();
  s.function_arg_sizes.clear();
  s.shared_optins.clear();
  s.load_delay_ms = 0;
  const fake_gpu_stats kept = s.stats;
  s.stats = fake_gpu_stats{};
  s.stats.modules_live = kept.modules_live;
  s.stats.live_allocations = kept.live_allocations;
  s.stats.contexts_retained = kept.contexts_retained;
}

FAKE_EXPORT void fake_gpu_get_stats(fake_gpu_stats* stats) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  *stats = s.stats;
}

FAKE_EXPORT int fake_gpu_get_launch(int index, fake_gpu_launch* launch) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (index < 0 || static_cast<size_t>(index) >= s.launches.size()) return -1;
  *launch = s.launches[index];
  return 0;
}

FAKE_EXPORT void fake_gpu_set_arg_sizes(const int* sizes, int count) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.arg_sizes.assign(sizes, sizes + std::min(count, FAKE_GPU_MAX_ARGS));
}

FAKE_EXPORT void fake_gpu_set_function_arg_sizes(const char* function, const int* sizes, int count) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.function_arg_sizes[function].assign(sizes, sizes + std::min(count, FAKE_GPU_MAX_ARGS));
}

FAKE_EXPORT int fake_gpu_shared_optin(const char* function) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.shared_optins.find(function);
  return it == s.shared_optins.end() ? -1 : it->second;
}

FAKE_EXPORT void fake_gpu_set_load_delay_ms(int ms) {
  fake::State& s = fake::state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.load_delay_ms = ms;
}
