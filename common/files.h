// File utilities: read-only memory maps (zero-copy tensor loading) and atomic writes
// (temp file in the same folder, fsync, rename, fsync of the folder), so a crash never leaves
// a half-written file under its final name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mgm {

// A whole file mapped read-only. Shared ownership lets tensors keep the mapping alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes a file atomically. Data goes to "<path>.tmp.<pid>.<n>"; commit() fsyncs it, renames
// it over `path` and fsyncs the folder. If the object is destroyed without commit() (an
// exception, an early return), the temp file is removed and `path` is untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  uint64_t bytes_written() const { return written_; }
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_path_; }
  // Flushes, fsyncs and renames into place. After this the writer is closed.
  void commit();
  // Flushes and fsyncs the temp file but leaves it under its temp name (for multi-file
  // commits); the caller renames it with rename_into_place().
  std::string finish_temp();

 private:
  void flush_buffer();
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  std::vector<char> buf_;
  bool done_ = false;
};

// Renames `from` over `to` and fsyncs the destination folder.
void rename_into_place(const std::string& from, const std::string& to);

// Convenience: atomically replaces `path` with `content`.
void write_file_atomic(const std::string& path, std::string_view content);

// Reads a whole (small) file; throws Error naming the path on failure.
std::string read_file(const std::string& path);

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
uint64_t file_size(const std::string& path);
void make_dirs(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);
std::string parent_dir(const std::string& path);
std::string base_name(const std::string& path);
void fsync_dir(const std::string& dir);
// `path` made absolute with every symlink resolved (realpath(3)) as far as it exists; the
// components that do not exist yet are appended as given ("." and ".." folded). For comparing
// where two paths point, e.g. an output against the inputs.
std::string resolved_path(const std::string& path);
// True when `inner` is `outer` or lies inside it (both resolved_path()s).
bool path_within(const std::string& inner, const std::string& outer);
// Removes a file or a folder tree (symlinks are removed, not followed); a missing path is fine.
// POSIX nftw rather than std::filesystem::remove_all: libtorch.so exports its own copy of the
// std::filesystem symbols, and calls can bind to it and crash.
void remove_tree(const std::string& path);

// An exclusive lock on `path` (created when missing) held for the object's lifetime, so two
// processes never write one output (a training run's folder, an answers file) at once.
// flock(2): the kernel releases it when the process dies, so kill -9 leaves no stale lock. The
// holder writes "host <name> pid <pid> since <UTC time>" into the file, so a refused process can
// name it. Where the filesystem has no flock (some NFS mounts: ENOLCK, EOPNOTSUPP) a warning
// says so and the lock falls back to creating the file exclusively (O_EXCL) with the same
// record, removed on release; a leftover whose holder is this host's dead pid is taken over,
// one from another host names itself and must be removed by hand.
class FileLock {
 public:
  // Throws UsageError "<what> is in use by <holder> (lock file <path>) ..." when held elsewhere.
  static std::unique_ptr<FileLock> acquire(const std::string& path, const std::string& what);
  // The fallback alone (what acquire() uses where flock is missing), on the file `path` itself.
  static std::unique_ptr<FileLock> acquire_exclusive_file(const std::string& path, const std::string& what);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  FileLock() = default;
  std::string path_;
  int fd_ = -1;
  bool exclusive_file_ = false;  // the O_EXCL fallback: the file is removed on release
};

}  // namespace mgm
