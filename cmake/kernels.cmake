# The GPU kernel bundle: tools/aot/build_bundle.py compiles every Triton kernel
# variant for every target (no GPU needed) into
#   ${CMAKE_BINARY_DIR}/kernels/bundle.bin and ${CMAKE_BINARY_DIR}/kernels/manifest.json
# Exposes the target tmoe_kernel_bundle and the variables TMOE_BUNDLE_BIN and
# TMOE_MANIFEST_JSON. TMOE_BUILD_KERNELS=OFF builds the library without GPU kernels.
option(TMOE_BUILD_KERNELS "Compile the Triton GPU kernels into a bundle (needs Python 3 with the Triton of tools/aot/requirements.txt)" ON)
set(TMOE_KERNEL_JOBS "" CACHE STRING "Parallel kernel compiler processes (empty: CMAKE_BUILD_PARALLEL_LEVEL, else every core)")

if(NOT TMOE_BUILD_KERNELS)
  message(STATUS "GPU kernels: not built (TMOE_BUILD_KERNELS=OFF)")
  return()
endif()

get_filename_component(tmoe_root ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)
file(STRINGS ${tmoe_root}/tools/aot/requirements.txt tmoe_triton_pin REGEX "^triton==")
string(REPLACE "triton==" "" TMOE_PINNED_TRITON "${tmoe_triton_pin}")
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import triton; print(triton.__version__)"
                  RESULT_VARIABLE tmoe_triton_result OUTPUT_VARIABLE tmoe_triton_version
                  ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT Python3_Interpreter_FOUND OR NOT tmoe_triton_result EQUAL 0)
  message(FATAL_ERROR "GPU kernels: building them needs Python 3 with Triton ${TMOE_PINNED_TRITON}, and "
                      "'${Python3_EXECUTABLE}' cannot import triton. Install it "
                      "(python3 -m pip install -r tools/aot/requirements.txt), point -DPython3_EXECUTABLE at a "
                      "Python that has it, or configure with -DTMOE_BUILD_KERNELS=OFF to build without GPU kernels.")
endif()
if(NOT tmoe_triton_version STREQUAL TMOE_PINNED_TRITON)
  message(FATAL_ERROR "GPU kernels: Triton ${TMOE_PINNED_TRITON} is pinned, ${Python3_EXECUTABLE} has "
                      "${tmoe_triton_version} (python3 -m pip install -r tools/aot/requirements.txt, "
                      "or -DTMOE_BUILD_KERNELS=OFF)")
endif()
message(STATUS "GPU kernels: Triton ${tmoe_triton_version} (${Python3_EXECUTABLE})")

set(TMOE_BUNDLE_DIR ${CMAKE_BINARY_DIR}/kernels)
set(TMOE_BUNDLE_BIN ${TMOE_BUNDLE_DIR}/bundle.bin)
set(TMOE_MANIFEST_JSON ${TMOE_BUNDLE_DIR}/manifest.json)
file(GLOB TMOE_KERNEL_SOURCES CONFIGURE_DEPENDS ${tmoe_root}/kernels/*.py ${tmoe_root}/tools/aot/*.py
     ${tmoe_root}/tools/aot/requirements.txt)

if(TMOE_KERNEL_JOBS)
  set(tmoe_kernel_jobs --jobs ${TMOE_KERNEL_JOBS})
elseif(DEFINED ENV{CMAKE_BUILD_PARALLEL_LEVEL})
  set(tmoe_kernel_jobs --jobs $ENV{CMAKE_BUILD_PARALLEL_LEVEL})
endif()

add_custom_command(
  OUTPUT ${TMOE_BUNDLE_BIN} ${TMOE_MANIFEST_JSON}
  COMMAND ${CMAKE_COMMAND} -E env CUDA_VISIBLE_DEVICES= HIP_VISIBLE_DEVICES=
          ${Python3_EXECUTABLE} ${tmoe_root}/tools/aot/build_bundle.py
          --out ${TMOE_BUNDLE_DIR} ${tmoe_kernel_jobs}
  DEPENDS ${TMOE_KERNEL_SOURCES}
  COMMENT "Compiling the Triton kernel bundle (every variant for every target)"
  USES_TERMINAL
  VERBATIM)
add_custom_target(tmoe_kernel_bundle ALL DEPENDS ${TMOE_BUNDLE_BIN} ${TMOE_MANIFEST_JSON})
