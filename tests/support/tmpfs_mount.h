// A real size-limited tmpfs for disk-full tests, mounted for the test's lifetime, and a filler
// that uses up its space. Mounting needs the right to (root or CAP_SYS_ADMIN): without it the
// test process prints why and exits with kSkipExitCode, which ctest shows as skipped when the
// test is registered with SKIP_RETURN_CODE 77.
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>

namespace diffusiond::testing {

constexpr int kSkipExitCode = 77;

struct TmpfsMount {
  TmpfsMount(const std::filesystem::path& dir, const std::string& size) : path(dir) {
    std::filesystem::create_directories(path);
    const std::string opts = "size=" + size + ",mode=0700";
    if (::mount("tmpfs", path.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      std::cout << "cannot mount a tmpfs at " << path << " (" << std::strerror(errno)
                << "): disk-full tests need the right to mount; skipped (exit code "
                << kSkipExitCode << ")" << std::endl;
      std::fflush(nullptr);
      std::_Exit(kSkipExitCode);
    }
  }
  ~TmpfsMount() { ::umount2(path.c_str(), MNT_DETACH); }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  std::filesystem::path path;
};

// Writes zeros into `file` until the file system says ENOSPC; returns the bytes written.
inline std::size_t fill_disk(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + file.string());
  const std::string chunk(4096, '\0');
  std::size_t total = 0;
  int err = 0;
  for (;;) {
    const ssize_t n = ::write(fd, chunk.data(), chunk.size());
    if (n <= 0) {
      err = errno;
      break;
    }
    total += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (err != ENOSPC)
    throw std::runtime_error("filling " + file.string() + " stopped with " + std::strerror(err));
  return total;
}

}  // namespace diffusiond::testing
