// The thread-pool settings of a CPU inference process, which the libraries read from the
// environment once, when they are loaded (before main), so they can only be set by starting the
// process again.
//
// On the CPU two thread pools share the cores: LibTorch's OpenMP pool (every elementwise,
// normalisation and oneDNN convolution) and OpenBLAS's own pthreads (every linear and attention
// matmul). By default each pool's idle threads keep spinning after their work (OpenMP's
// "active" wait; OpenBLAS yields in a loop for up to 2^28 cycles), so while one pool works the
// other's spinners take its cores: on 2 cores an SD 1.5 image spent a quarter of its CPU time in
// the kernel (sched_yield, futex) and ran at half speed (bench/RESULTS.md). Idle threads that
// sleep at once (OMP_WAIT_POLICY=PASSIVE, OPENBLAS_THREAD_TIMEOUT=4, the shortest) give the
// cores back; the arithmetic and its split across threads are unchanged (same bits).
// Thread-safety: call first thing in main(), before any thread of the program's own.
#pragma once

namespace diffusiond {

// Where OMP_WAIT_POLICY or OPENBLAS_THREAD_TIMEOUT is not set, sets it as above and re-executes
// this program (/proc/self/exe, same argv and pid) so that the libraries read it; a variable
// the user set is left as it is (OMP_WAIT_POLICY=ACTIVE keeps the spinning). Returns when
// nothing needed changing, or when the re-exec failed (the program then runs with the
// libraries' defaults).
void restart_with_cpu_thread_env(char** argv);

}  // namespace diffusiond
