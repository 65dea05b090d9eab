// The dtrain executable: the command line of launcher/cli.h and the built-in models and datasets.
#include "dtrain/launcher/cli.h"

int main(int argc, char** argv) { return dtrain::cli_main(argc, argv); }
