// The whole dtrain command line (train, eval, export, config, launch) over the built-in models and
// datasets plus the ones spirals.cpp registers.
#include "dtrain_example.h"

int main(int argc, char** argv) { return dtrain::cli_main(argc, argv); }
