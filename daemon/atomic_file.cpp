#include "daemon/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include "pipeline/media/posix_fs.h"

namespace diffusiond {

namespace {
[[noreturn]] void fail(const std::string& what, const std::filesystem::path& path, int err) {
  // system_error keeps errno: a full disk (ENOSPC, EDQUOT) is told apart from other failures.
  // what(): "<what> <path>: <errno text>".
  throw std::system_error(err, std::generic_category(), what + " " + path.string());
}

void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open folder", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail("cannot fsync folder", dir, err);
}

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(rng() % 1000000000ULL);
}
}  // namespace

void write_file_atomically(const std::filesystem::path& target, std::string_view bytes) {
  const auto dir = target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
  const auto temp = dir / (target.filename().string() + ".tmp-" + random_suffix());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create", temp, errno);
  std::size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      fail("cannot write", temp, err);
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    fail("cannot fsync", temp, err);
  }
  ::close(fd);
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    fail("cannot rename a temporary file onto", target, err);
  }
  fsync_dir(dir);
}

int remove_stale_temp_files(const std::filesystem::path& dir) {
  int removed = 0;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return 0;
  for (const auto& file : list_files_recursive(dir, ec)) {
    if (file.filename().string().find(".tmp-") != std::string::npos && ::unlink(file.c_str()) == 0)
      ++removed;
  }
  return removed;
}

}  // namespace diffusiond
