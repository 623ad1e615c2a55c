# `tmoe tune` end to end on the fake CUDA driver (tests/fake_driver), whose kernels
# compute nothing: tune must sweep (the staged search, and with --exhaustive every
# pair, which times more), refuse the winner for its error against the float64
# reference (exit non-zero, no bucket written: a fast wrong kernel never enters a
# table), and still leave --sweep's record of every candidate it timed.
# Run by ctest with TMOE, FAKE_CUDA, MODELS and OUT set (cmake/gpu.cmake).

# Runs one tune into ${OUT}/<name>, checks it, and sets <result> to how many
# candidates its sweep timed.
function(tune_refusing_the_winner name mode result)
  set(dir "${OUT}/${name}")
  file(REMOVE_RECURSE "${dir}")
  file(MAKE_DIRECTORY "${dir}")
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env "TMOE_CUDA_DRIVER=${FAKE_CUDA}"
            "${TMOE}" tune --models-file "${MODELS}" --model tiny-softmax-topk --tokens 4
            --out "${dir}/table.json" --sweep "${dir}/sweep.json" ${mode}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "tmoe tune accepted a winner whose output is wrong:\n${out}")
  endif()
  if(NOT out MATCHES "FAILED: the winner's error exceeds its bound")
    message(FATAL_ERROR "tmoe tune failed for another reason (exit ${rc}):\n${out}\n${err}")
  endif()
  if(EXISTS "${dir}/table.json")
    message(FATAL_ERROR "tmoe tune wrote a table although its only bucket failed its check")
  endif()

  file(READ "${dir}/sweep.json" sweep)
  string(JSON entries LENGTH "${sweep}")
  string(JSON model GET "${sweep}" 0 model)
  string(JSON tokens GET "${sweep}" 0 T)
  string(JSON winner GET "${sweep}" 0 winner)
  string(JSON swept LENGTH "${sweep}" 0 sweep)
  string(JSON finalists LENGTH "${sweep}" 0 final)
  if(NOT entries EQUAL 1 OR NOT model STREQUAL "tiny-softmax-topk" OR NOT tokens EQUAL 4)
    message(FATAL_ERROR "--sweep should hold one entry, tiny-softmax-topk at T = 4: ${sweep}")
  endif()
  # The progress line's last count is how many candidates the sweep timed.
  string(REGEX MATCHALL "[0-9]+/[0-9]+ +best" progress "${err}")
  list(GET progress -1 last_progress)
  string(REGEX REPLACE "/([0-9]+) +best" "" done "${last_progress}")
  if(NOT swept EQUAL done OR swept LESS 2 OR finalists LESS 2)
    message(FATAL_ERROR "--sweep holds ${swept} candidates of the ${done} swept, and ${finalists} finalists")
  endif()
  # Fastest first, and the winner among the finalists.
  set(previous 0)
  math(EXPR last "${swept} - 1")
  foreach(i RANGE ${last})
    string(JSON ms GET "${sweep}" 0 sweep ${i} ms)
    if(ms LESS previous)
      message(FATAL_ERROR "--sweep's candidates are not fastest first at ${i}: ${ms} after ${previous}")
    endif()
    set(previous ${ms})
  endforeach()
  set(winner_in_final FALSE)
  math(EXPR last "${finalists} - 1")
  foreach(i RANGE ${last})
    string(JSON choice GET "${sweep}" 0 final ${i} choice)
    if(choice STREQUAL winner)
      set(winner_in_final TRUE)
    endif()
  endforeach()
  if(NOT winner_in_final)
    message(FATAL_ERROR "the winner ${winner} is not among --sweep's finalists")
  endif()
  set(${result} ${swept} PARENT_SCOPE)
endfunction()

tune_refusing_the_winner(staged "" staged_swept)
tune_refusing_the_winner(exhaustive --exhaustive exhaustive_swept)
if(NOT exhaustive_swept GREATER staged_swept)
  message(FATAL_ERROR "--exhaustive timed ${exhaustive_swept} candidates, the staged search ${staged_swept}")
endif()
