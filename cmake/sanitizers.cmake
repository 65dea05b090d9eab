# Sanitizer and fuzzer builds (scripts/sanitize.sh, scripts/fuzz.sh). DTRAIN_SANITIZE is a
# -fsanitize= list applied to every target: "address,undefined" or "thread". DTRAIN_FUZZ builds the
# fuzz/ targets (clang's libFuzzer; fuzz/CMakeLists.txt adds coverage to the libraries they read
# with).
set(DTRAIN_SANITIZE "" CACHE STRING "Sanitizers for every target: address,undefined or thread")
option(DTRAIN_FUZZ "Build the libFuzzer targets in fuzz/ (clang; with DTRAIN_SANITIZE=address,undefined)" OFF)

if(DTRAIN_SANITIZE)
  if(DTRAIN_SANITIZE MATCHES "thread" AND DTRAIN_SANITIZE MATCHES "address")
    message(FATAL_ERROR "DTRAIN_SANITIZE: thread and address cannot be combined; got '${DTRAIN_SANITIZE}'")
  endif()
  # -O1 keeps compile times low on 2 cores and stacks readable; line tables name file:line in
  # reports without the cost of full debug info. Errors stop the test instead of scrolling by.
  add_compile_options(-fsanitize=${DTRAIN_SANITIZE} -fno-sanitize-recover=all
                      -fno-omit-frame-pointer -O1 -gline-tables-only)
  add_link_options(-fsanitize=${DTRAIN_SANITIZE})
  message(STATUS "dtrain: sanitizers ${DTRAIN_SANITIZE}")
endif()

if(DTRAIN_FUZZ AND NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "DTRAIN_FUZZ needs clang (libFuzzer); configure with CXX=clang++")
endif()

# GCC in ISO mode (-std=c++20) does not fuse a*b+c into an FMA; clang does by default, which moves
# the low bits that the golden-value and bit-for-bit tests compare.
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off>)
endif()
