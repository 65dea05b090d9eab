// The reference Python readers of dtrain's files: the venv of scripts/python_readers.sh, named by
// DTRAIN_PYREADERS (tests that need it skip without it), and onnxruntime on an ONNX export
// (tests/train/onnx_run.py).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dtrain/tensor/tensor.h"
#include "train/scratch_dir.h"

namespace dtrain::testutil {

inline const std::string kOnnxRun = std::string(DTRAIN_FIXTURE_DIR) + "/../train/onnx_run.py";

/// The venv's python, or "" with the reason in `why`.
inline std::string reader_python(std::string& why) {
  const char* env = std::getenv("DTRAIN_PYREADERS");
  if (env == nullptr || *env == '\0') {
    why =
        "DTRAIN_PYREADERS is unset; run scripts/python_readers.sh and export DTRAIN_PYREADERS "
        "as the python path it prints";
    return "";
  }
  if (!std::filesystem::exists(env)) {
    why = std::string("DTRAIN_PYREADERS=") + env + " does not exist; run scripts/python_readers.sh";
    return "";
  }
  return env;
}

inline std::string shell_quote(const std::string& text) {
  std::string q = "'";
  for (const char c : text) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// onnxruntime's output for `input` through the file at `model_path` (scratch files in `work_dir`);
/// `report` gets the script's JSON line (names, opset, initializers, metadata).
inline Tensor run_onnxruntime(const std::string& python, const std::string& model_path,
                              const Tensor& input, const std::string& work_dir,
                              std::string& report) {
  const std::string in = work_dir + "/input.raw", out = work_dir + "/output.raw",
                    err = work_dir + "/onnx.stderr";
  {
    std::ofstream f(in, std::ios::binary);
    f.write(static_cast<const char*>(input.data_ptr()),
            static_cast<std::streamsize>(input.numel() * dtype_size(input.dtype())));
  }
  std::string dims;
  for (int64_t d : input.shape()) dims += (dims.empty() ? "" : ",") + std::to_string(d);
  const std::string command = shell_quote(python) + " " + shell_quote(kOnnxRun) + " " +
                              shell_quote(model_path) + " " + shell_quote(in) + " " +
                              (input.dtype() == DType::kInt64 ? "int64" : "float32") + " " + dims +
                              " " + shell_quote(out) + " 2>" + shell_quote(err);
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return {};
  }
  report.clear();
  char buffer[4096];
  for (size_t got; (got = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;)
    report.append(buffer, got);
  const int status = ::pclose(pipe);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << command << " failed:\n" << read_bytes(err);
    return {};
  }
  const std::string bytes = read_bytes(out);
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  return from_vector<float>(values, {static_cast<int64_t>(values.size())});
}

}  // namespace dtrain::testutil
