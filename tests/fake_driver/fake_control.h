/* What the fake GPU drivers (libfake_cuda.so, libfake_hip.so) let a test see
 * and steer. Both export these names; a test reaches each library's copy with
 * dlsym on that library's handle.
 *
 * The fakes pretend to have $FAKE_GPU_COUNT devices (default 1) of arch
 * $FAKE_GPU_ARCH (CUDA: compute capability as "90"; HIP: a gcnArchName such as
 * "gfx942:sramecc+:xnack-"). Device memory is host memory, 256-byte aligned like
 * the real drivers' allocations. Modules must be ELF images; a function exists
 * if its name occurs in its module's bytes. */
#ifndef TMOE_FAKE_CONTROL_H
#define TMOE_FAKE_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FAKE_GPU_MAX_ARGS 64

typedef struct fake_gpu_launch {
  char function[128];
  unsigned grid[3];
  unsigned block[3];
  unsigned shared;
  void* stream;
  int arg_count; /* as many as fake_gpu_set_arg_sizes announced */
  uint64_t args[FAKE_GPU_MAX_ARGS]; /* each zero-extended from its size */
  const void* image; /* the image the function's module was loaded from */
  int programmatic_dependent; /* cuLaunchKernelEx with programmatic stream serialization */
} fake_gpu_launch;

typedef struct fake_gpu_stats {
  int load_calls;             /* module loads attempted */
  int modules_live;           /* loaded and not yet unloaded */
  size_t last_module_bytes;   /* ELF extent of the last image loaded */
  char last_function[128];    /* last entry name looked up */
  int live_allocations;
  int contexts_retained;      /* CUDA primary-context retains minus releases */
  int launches;               /* kernels run (graph replays included) */
} fake_gpu_stats;

void fake_gpu_reset(void);
void fake_gpu_get_stats(fake_gpu_stats* stats);
/* 0 on success, -1 when index is out of range. */
int fake_gpu_get_launch(int index, fake_gpu_launch* launch);
/* Byte sizes of the parameters of the next launches (4 or 8 each). */
void fake_gpu_set_arg_sizes(const int* sizes, int count);
/* The same for launches of functions of this name only; these take precedence
 * over fake_gpu_set_arg_sizes. fake_gpu_reset forgets them. */
void fake_gpu_set_function_arg_sizes(const char* function, const int* sizes, int count);
/* The last MAX_DYNAMIC_SHARED value set on a function of this name, or -1. */
int fake_gpu_shared_optin(const char* function);
/* Each module load sleeps this long, so concurrent first uses overlap. */
void fake_gpu_set_load_delay_ms(int ms);

typedef void (*fake_gpu_reset_fn)(void);
typedef void (*fake_gpu_get_stats_fn)(fake_gpu_stats*);
typedef int (*fake_gpu_get_launch_fn)(int, fake_gpu_launch*);
typedef void (*fake_gpu_set_arg_sizes_fn)(const int*, int);
typedef void (*fake_gpu_set_function_arg_sizes_fn)(const char*, const int*, int);
typedef int (*fake_gpu_shared_optin_fn)(const char*);
typedef void (*fake_gpu_set_load_delay_ms_fn)(int);

#ifdef __cplusplus
}
#endif
#endif /* TMOE_FAKE_CONTROL_H */
