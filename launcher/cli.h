// The dtrain command line as a function: a program that registers its own models and datasets
// (train/registry.h) gets train, eval, export, config check/reference and launch from
// `int main(int argc, char** argv) { return dtrain::cli_main(argc, argv); }`.
#pragma once

namespace dtrain {

/// Runs the command line and returns the exit status: 0 success, 2 usage or config error, 1
/// run-time failure (launch: 130/143 when interrupted). Catches every error and prints it.
int cli_main(int argc, char** argv);

}  // namespace dtrain
