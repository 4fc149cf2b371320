// Writing a file so that readers (and a crash) only ever see the old state or the complete new
// file: write to a temporary name in the same folder, fsync it, rename over the target, fsync
// the folder. Thread-safety: free functions, safe from any thread for different targets.
#pragma once

#include <filesystem>
#include <string_view>

namespace diffusiond {

// Throws std::system_error (code: the errno) naming the file and the errno text.
void write_file_atomically(const std::filesystem::path& target, std::string_view bytes);

// Temporary files left by a crash inside write_file_atomically ("*.tmp-*"), removed under dir.
int remove_stale_temp_files(const std::filesystem::path& dir);

}  // namespace diffusiond
