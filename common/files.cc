#include "common/files.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <vector>

#include "common/error.h"
#include "common/log.h"

namespace mgm {
namespace {

std::string errno_text() { return std::strerror(errno); }

constexpr size_t kWriteBuffer = 1 << 20;

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path, ": cannot open: ", errno_text()));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    throw Error(str_cat(path, ": cannot stat: ", e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str_cat(path, ": not a regular file"));
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ > 0) {
    // Copy-on-write: tensors viewing the map may be modified in place without touching the file.
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string e = errno_text();
      ::close(fd);
      throw Error(str_cat(path, ": cannot mmap: ", e));
    }
    m->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  static std::atomic<int> counter{0};
  tmp_path_ = str_cat(path_, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  std::string dir = parent_dir(path_);
  if (!dir.empty() && !is_directory(dir)) throw Error(str_cat(path_, ": folder does not exist"));
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(str_cat(tmp_path_, ": cannot create: ", errno_text()));
  buf_.reserve(kWriteBuffer);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_) ::unlink(tmp_path_.c_str());
}

void AtomicFileWriter::flush_buffer() {
  const char* p = buf_.data();
  size_t n = buf_.size();
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(str_cat(tmp_path_, ": write failed: ", errno_text()));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  buf_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
  MGM_CHECK(fd_ >= 0, path_, ": write after commit");
  const char* p = static_cast<const char*>(data);
  written_ += n;
  if (buf_.size() + n <= kWriteBuffer) {
    buf_.insert(buf_.end(), p, p + n);
    return;
  }
  flush_buffer();
  if (n >= kWriteBuffer) {
    buf_.assign(p, p + n);  // large tensor: one write call
    flush_buffer();
    buf_.shrink_to_fit();
    buf_.reserve(kWriteBuffer);
  } else {
    buf_.insert(buf_.end(), p, p + n);
  }
}

std::string AtomicFileWriter::finish_temp() {
  MGM_CHECK(fd_ >= 0, path_, ": already finished");
  flush_buffer();
  if (::fsync(fd_) != 0) throw Error(str_cat(tmp_path_, ": fsync failed: ", errno_text()));
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw Error(str_cat(tmp_path_, ": close failed: ", errno_text()));
  }
  fd_ = -1;
  done_ = true;  // the caller owns the temp file now
  return tmp_path_;
}

void AtomicFileWriter::commit() {
  std::string tmp = finish_temp();
  try {
    rename_into_place(tmp, path_);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

void rename_into_place(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw Error(str_cat("cannot rename ", from, " to ", to, ": ", errno_text()));
  fsync_dir(parent_dir(to));
}

namespace {
int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 || errno == ENOENT ? 0 : -1;
}
}  // namespace

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw Error(str_cat("cannot remove ", path, ": ", errno_text()));
  }
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    throw Error(str_cat("cannot remove ", path, ": ", errno_text()));
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems refuse to open folders
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFileWriter w(path);
  w.write(content);
  w.commit();
}

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw Error(str_cat(path, ": cannot open: ", errno_text()));
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) throw Error(str_cat(path, ": read failed"));
  return out;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(str_cat(path, ": cannot stat: ", errno_text()));
  return static_cast<uint64_t>(st.st_size);
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw Error(str_cat(path, ": cannot create folder: ", ec.message()));
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!b.empty() && b[0] == '/') return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string parent_dir(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string base_name(const std::string& path) {
  auto pos = path.find_last_of('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

std::string resolved_path(const std::string& path) {
  std::string p = path;
  if (p.empty() || p[0] != '/') {
    char cwd[4096];
    MGM_CHECK(::getcwd(cwd, sizeof cwd) != nullptr, "cannot read the current folder: ", std::strerror(errno));
    p = std::string(cwd) + "/" + p;
  }
  // The components as written: "x/link/../y" must resolve "link" before "..", as the kernel does.
  std::vector<std::string> parts;
  for (size_t i = 0; i <= p.size();) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    if (j > i) parts.push_back(p.substr(i, j - i));
    i = j + 1;
  }
  // realpath() of the longest prefix that exists; the missing rest is folded onto it.
  for (size_t keep = parts.size() + 1; keep-- > 0;) {
    std::string prefix;
    for (size_t k = 0; k < keep; ++k) prefix += "/" + parts[k];
    if (prefix.empty()) prefix = "/";
    char buf[PATH_MAX];
    if (::realpath(prefix.c_str(), buf) == nullptr) continue;
    std::string out = buf;
    for (size_t k = keep; k < parts.size(); ++k) {
      if (parts[k] == ".") continue;
      if (parts[k] == "..") {
        const size_t slash = out.rfind('/');
        out = slash == 0 || slash == std::string::npos ? "/" : out.substr(0, slash);
        continue;
      }
      out += (out == "/" ? "" : "/") + parts[k];
    }
    return out;
  }
  return p;
}

bool path_within(const std::string& inner, const std::string& outer) {
  const std::string a = resolved_path(inner), b = resolved_path(outer);
  return a == b || (a.size() > b.size() && a.compare(0, b.size(), b) == 0 && (b == "/" || a[b.size()] == '/'));
}

// ---- FileLock --------------------------------------------------------------------------------

namespace {

std::string this_host() {
  char h[256] = {0};
  if (::gethostname(h, sizeof h - 1) != 0) return "unknown";
  return h;
}

std::string holder_record() {
  char when[64] = {0};
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return str_cat("host ", this_host(), " pid ", ::getpid(), " since ", when, "\n");
}

// "host H pid P since T" from a lock file, or a placeholder when it is not written yet.
std::string describe_holder(const std::string& path) {
  std::string rec;
  try {
    rec = read_file(path);
  } catch (const Error&) {
  }
  while (!rec.empty() && (rec.back() == '\n' || rec.back() == ' ')) rec.pop_back();
  return rec.empty() ? std::string("another process (it has not written its name yet)") : rec;
}

bool parse_holder(const std::string& rec, std::string* host, long* pid) {
  char h[256] = {0};
  long p = 0;
  if (std::sscanf(rec.c_str(), "host %255s pid %ld", h, &p) != 2) return false;
  *host = h;
  *pid = p;
  return true;
}

}  // namespace

std::unique_ptr<FileLock> FileLock::acquire(const std::string& path, const std::string& what) {
  std::unique_ptr<FileLock> lock(new FileLock());
  lock->path_ = path;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(str_cat(path, ": cannot create the lock file for ", what, ": ", std::strerror(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
    lock->fd_ = fd;
    const std::string rec = holder_record();
    if (::ftruncate(fd, 0) == 0 && ::pwrite(fd, rec.data(), rec.size(), 0) == static_cast<ssize_t>(rec.size()))
      ::fsync(fd);
    return lock;
  }
  const int err = errno;
  ::close(fd);
  if (err == EWOULDBLOCK || err == EINTR)
    throw UsageError(str_cat(what, " is in use by ", describe_holder(path), " (lock file ", path,
                             "); wait for it to finish or stop it first"));
  if (err != ENOLCK && err != EOPNOTSUPP && err != ENOSYS && err != EINVAL)
    throw Error(str_cat(path, ": cannot lock ", what, ": ", std::strerror(err)));
  // No flock on this filesystem: an exclusively created lock file instead.
  log::warn(path, ": the filesystem does not support flock (", std::strerror(err),
            "); locking by exclusive creation of ", path, ".excl instead (a crash leaves it behind)");
  return acquire_exclusive_file(path + ".excl", what);
}

std::unique_ptr<FileLock> FileLock::acquire_exclusive_file(const std::string& excl, const std::string& what) {
  std::unique_ptr<FileLock> lock(new FileLock());
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int xfd = ::open(excl.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (xfd >= 0) {
      const std::string rec = holder_record();
      const bool ok = ::write(xfd, rec.data(), rec.size()) == static_cast<ssize_t>(rec.size());
      ::fsync(xfd);
      ::close(xfd);
      if (!ok) {
        ::unlink(excl.c_str());
        throw Error(str_cat(excl, ": cannot write the lock file for ", what));
      }
      lock->path_ = excl;
      lock->exclusive_file_ = true;
      return lock;
    }
    if (errno != EEXIST) throw Error(str_cat(excl, ": cannot create the lock file for ", what, ": ", std::strerror(errno)));
    const std::string rec = describe_holder(excl);
    std::string host;
    long pid = 0;
    // A leftover of a dead process on this host is taken over; anything else is in use.
    if (attempt == 0 && parse_holder(rec, &host, &pid) && host == this_host() && pid > 0 &&
        ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      log::warn(excl, ": taking over the lock left by ", rec, ", which is no longer running");
      ::unlink(excl.c_str());
      continue;
    }
    throw UsageError(str_cat(what, " is in use by ", rec, " (lock file ", excl,
                             "); if that process is gone, remove the lock file"));
  }
  throw UsageError(str_cat(what, " is in use (lock file ", excl, ")"));
}

FileLock::~FileLock() {
  if (exclusive_file_) {
    ::unlink(path_.c_str());
  } else if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace mgm
