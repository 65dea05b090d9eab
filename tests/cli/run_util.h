// Runs the real dtrain executable for end-to-end tests: exit code and combined output.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "dtrain/distributed/store.h"
#include "dtrain/tensor/check.h"

namespace dtrain::testutil {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

/// Runs a shell command line in `cwd`, capturing stdout and stderr together.
inline CommandResult run_shell(const std::string& line, const std::string& cwd = ".") {
  const std::string command = "cd '" + cwd + "' && " + line + " 2>&1";
  CommandResult r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

/// Runs `dtrain <args>` through the shell in `cwd` (arguments are passed as written: quote them).
inline CommandResult run_dtrain(const std::string& args, const std::string& cwd = ".") {
  return run_shell("OMP_NUM_THREADS=1 '" + std::string(DTRAIN_EXECUTABLE) + "' " + args, cwd);
}

/// Runs `dtrain <args>` in `cwd` like run_dtrain, but killed (with everything it started) after
/// `seconds`; a run killed so exits with 124.
inline CommandResult run_dtrain_bounded(int seconds, const std::string& args,
                                        const std::string& cwd = ".") {
  return run_shell("OMP_NUM_THREADS=1 timeout -k 10 " + std::to_string(seconds) + " '" +
                       std::string(DTRAIN_EXECUTABLE) + "' " + args,
                   cwd);
}

/// True when Open MPI's mpirun is on PATH (scripts/setup.sh installs openmpi-bin).
inline bool mpirun_available() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

/// The shell prefix that runs what follows as an Open MPI job of `ranks` processes here: as root,
/// more ranks than cores, one kernel thread each, bounded in time.
inline std::string mpirun_prefix(int ranks) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 timeout 600 "
         "mpirun --oversubscribe -n " +
         std::to_string(ranks) + " ";
}

/// Runs `dtrain <args>` as an mpirun job of `ranks` processes in `cwd`.
inline CommandResult run_dtrain_mpirun(int ranks, const std::string& args,
                                       const std::string& cwd = ".") {
  return run_shell(mpirun_prefix(ranks) + "'" + std::string(DTRAIN_EXECUTABLE) + "' " + args, cwd);
}

/// The raw tensor bytes of a safetensors file: what follows the 8-byte little-endian header
/// length and the JSON header.
inline std::string safetensors_data(const std::string& file) {
  EXPECT_GE(file.size(), 8u);
  if (file.size() < 8) return "";
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<unsigned char>(file[i]);
  EXPECT_LE(8 + header, file.size());
  return file.substr(std::min<size_t>(file.size(), 8 + header));
}

/// A free port for a store, below Linux's ephemeral range (32768 and up): a port the kernel
/// handed out could be given again, as a client's source port, to a test running beside this one
/// before the store binds it. Bound once to check it is free, then released.
inline uint16_t free_port() {
  std::random_device random;
  for (int attempt = 0; attempt < 100; ++attempt) {
    dist::StoreServerOptions so;
    so.token = "probe";
    so.port = static_cast<uint16_t>(20000 + random() % 12000);
    try {
      return dist::StoreServer(so).port();
    } catch (const Error&) {
    }
  }
  ADD_FAILURE() << "no free port in 20000..31999 after 100 tries";
  return 0;
}

inline std::string source_path(const std::string& relative) {
  return std::string(DTRAIN_SOURCE_DIR) + "/" + relative;
}

}  // namespace dtrain::testutil
