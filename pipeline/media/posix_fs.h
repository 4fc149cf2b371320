// Directory listing, walking and removal with POSIX calls instead of std::filesystem's
// directory iterators and remove_all.
//
// Why: PyTorch's wheels (2.5 and later, pytorch/pytorch#133437) export the std::filesystem
// symbols of the libstdc++ parts they link statically. A program linked with such a LibTorch
// binds its calls to those copies, which do not match the program's own <filesystem> headers:
// on LibTorch 2.11 (H100 check, bench/RESULTS.md) std::filesystem::remove_all segfaulted in
// every binary that links torch. Path arithmetic, create_directories, exists and the like were
// seen working; only iteration and removal go through here.
// Header-only and torch-free, so any library or test may use it. Thread-safe (no shared state).
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace diffusiond {

// The names in `dir` (without "." and ".."), in no particular order. On failure: empty, `ec`
// set (ENOENT for a missing folder).
inline std::vector<std::string> list_directory(const std::filesystem::path& dir,
                                               std::error_code& ec) {
  ec.clear();
  std::vector<std::string> names;
  DIR* handle = ::opendir(dir.c_str());
  if (!handle) {
    ec.assign(errno, std::generic_category());
    return names;
  }
  while (const dirent* entry = ::readdir(handle)) {
    if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
    names.emplace_back(entry->d_name);
  }
  ::closedir(handle);
  return names;
}

// True for a real folder (a symbolic link to one is not followed).
inline bool is_real_directory(const std::filesystem::path& path) {
  struct stat info {};
  return ::lstat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// Every regular file under `dir`, recursively, without following symbolic links.
inline std::vector<std::filesystem::path> list_files_recursive(const std::filesystem::path& dir,
                                                               std::error_code& ec) {
  std::vector<std::filesystem::path> files;
  const auto names = list_directory(dir, ec);
  if (ec) return files;
  for (const auto& name : names) {
    const auto path = dir / name;
    struct stat info {};
    if (::lstat(path.c_str(), &info) != 0) continue;  // vanished meanwhile
    if (S_ISDIR(info.st_mode)) {
      std::error_code inner;
      auto below = list_files_recursive(path, inner);
      files.insert(files.end(), below.begin(), below.end());
    } else if (S_ISREG(info.st_mode)) {
      files.push_back(path);
    }
  }
  return files;
}

// `rm -rf path`: removes it and everything below it (links themselves, never their targets).
// A missing path is not an error. On failure `ec` names the first error; removal goes on.
inline void remove_tree(const std::filesystem::path& path, std::error_code& ec) {
  ec.clear();
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) {
    if (errno != ENOENT) ec.assign(errno, std::generic_category());
    return;
  }
  if (S_ISDIR(info.st_mode)) {
    std::error_code list_error;
    for (const auto& name : list_directory(path, list_error)) {
      std::error_code child_error;
      remove_tree(path / name, child_error);
      if (child_error && !ec) ec = child_error;
    }
    if (list_error && !ec) ec = list_error;
    if (::rmdir(path.c_str()) != 0 && !ec) ec.assign(errno, std::generic_category());
  } else if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    ec.assign(errno, std::generic_category());
  }
}

// remove_tree that throws std::filesystem::filesystem_error naming the path.
inline void remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  remove_tree(path, ec);
  if (ec) throw std::filesystem::filesystem_error("cannot remove", path, ec);
}

}  // namespace diffusiond
