// Stopping on a signal: SIGTERM (a launcher's or scheduler's stop, Slurm preemption) and SIGUSR1
// (Slurm's `--signal` before the time limit) ask the training loop to write a checkpoint and end.
// The handler only records the signal; the loop acts on it at a step that every replica agrees on
// (Trainer::run), so that the checkpoint holds one consistent step.
#pragma once

namespace dtrain::train {

/// Installs the SIGTERM and SIGUSR1 handlers (once per process; later calls do nothing). A signal
/// that arrives again before the loop acts changes nothing. Also blocks both signals on the calling
/// thread, and so on the threads it starts afterwards, and starts one thread that takes them: call
/// it before the threads that compute (stop_signal.cpp says why).
void install_stop_signal_handlers();

/// The first signal that asked to stop, or 0.
int stop_signal();

/// Asks the training loop to stop as if `signo` had arrived (for programs that embed a Trainer).
void request_stop(int signo);

/// Forgets a stop request: the next run in this process trains again.
void clear_stop_request();

/// The exit status of a process that stopped on `signo` after its checkpoint: 128 + signo, as a
/// shell reports a process ended by that signal.
inline int exit_status_after_signal(int signo) { return 128 + signo; }

}  // namespace dtrain::train
