#include "common/files.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "common/error.h"
#include "common/json.h"

namespace mgm {
namespace {

std::string tmpdir(const char* tag) {
  std::string d = std::string(std::getenv("MGM_TEST_TMP") ? std::getenv("MGM_TEST_TMP") : "/tmp/mgm_tests") +
                  "/" + tag + "." + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

size_t count_entries(const std::string& dir) {
  size_t n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) (void)e, ++n;
  return n;
}

TEST(AtomicFileWriter, CommitReplacesAndAbandonLeavesOriginal) {
  std::string d = tmpdir("atomic");
  std::string p = d + "/f.txt";
  write_file_atomic(p, "first");
  EXPECT_EQ(read_file(p), "first");
  {
    AtomicFileWriter w(p);
    w.write("second, never committed");
    // destroyed without commit (as when an exception unwinds)
  }
  EXPECT_EQ(read_file(p), "first");
  EXPECT_EQ(count_entries(d), 1u) << "temp file left behind";
  write_file_atomic(p, "third");
  EXPECT_EQ(read_file(p), "third");
}

TEST(AtomicFileWriter, LargeWritesAreComplete) {
  std::string d = tmpdir("atomic_big");
  std::string p = d + "/big.bin";
  std::string chunk(3 << 20, 'x');
  AtomicFileWriter w(p);
  w.write(chunk);
  w.write("tail", 4);
  w.write(chunk);
  EXPECT_EQ(w.bytes_written(), 2 * chunk.size() + 4);
  w.commit();
  EXPECT_EQ(file_size(p), 2 * chunk.size() + 4);
}

TEST(AtomicFileWriter, KilledWriterNeverLeavesPartialFileUnderFinalName) {
  std::string d = tmpdir("atomic_kill");
  std::string p = d + "/model.bin";
  write_file_atomic(p, "old complete content");
  pid_t pid = ::fork();
  if (pid == 0) {
    AtomicFileWriter w(p);
    std::string chunk(1 << 20, 'y');
    for (int i = 0; i < 4; ++i) w.write(chunk);
    ::_exit(0);  // dies before commit, like a crash: no destructor runs
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_EQ(read_file(p), "old complete content");
}

TEST(MappedFile, MapsAndReportsErrorsWithPath) {
  std::string d = tmpdir("map");
  write_file_atomic(d + "/a", "hello");
  auto m = MappedFile::open(d + "/a");
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), 5), "hello");
  try {
    MappedFile::open(d + "/missing");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d + "/missing"), std::string::npos);
  }
  write_file_atomic(d + "/empty", "");
  EXPECT_EQ(MappedFile::open(d + "/empty")->size(), 0u);
}

TEST(Json, ErrorsNameFileAndKey) {
  std::string d = tmpdir("json");
  write_file_atomic(d + "/bad.json", "{\"a\": 1,");
  try {
    read_json_file(d + "/bad.json");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: invalid JSON"), std::string::npos) << e.what();
  }
  Json j = Json::parse(R"({"a": "x", "n": 3})");
  EXPECT_EQ(json_string(j, "a", "cfg"), "x");
  EXPECT_EQ(json_int(j, "n", "cfg"), 3);
  EXPECT_THROW(json_int(j, "a", "cfg"), FormatError);
  try {
    json_at(j, "missing", "cfg.json");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_STREQ(e.what(), "cfg.json: missing key 'missing'");
  }
}

// flock: a second holder (another open file description, as another process has) is refused
// naming the first; a child that dies holding it (as kill -9 would) leaves it free.
TEST(FileLock, RefusesASecondHolderAndIsFreedWithItsProcess) {
  const std::string d = tmpdir("lock");
  const std::string p = d + "/x.lock";
  {
    const auto a = FileLock::acquire(p, "the folder X");
    try {
      FileLock::acquire(p, "the folder X");
      ADD_FAILURE() << "a second lock was granted";
    } catch (const UsageError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("the folder X is in use by host "), std::string::npos) << m;
      EXPECT_NE(m.find(" pid " + std::to_string(::getpid()) + " since "), std::string::npos) << m;
      EXPECT_NE(m.find("(lock file " + p + ")"), std::string::npos) << m;
    }
  }
  // Released with the object.
  { const auto again = FileLock::acquire(p, "the folder X"); }
  // A child takes it and exits without releasing anything: the kernel drops it.
  const pid_t child = ::fork();
  if (child == 0) {
    auto l = FileLock::acquire(p, "x");
    (void)l.release();  // never unlocked by the program
    ::_exit(0);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_NO_THROW(FileLock::acquire(p, "x"));
}

// The fallback for filesystems without flock: exclusive creation, removed on release; a leftover
// of a dead pid on this host is taken over; a live holder is named.
TEST(FileLock, ExclusiveFileFallback) {
  const std::string d = tmpdir("lock_excl");
  const std::string p = d + "/x.lock.excl";
  {
    const auto a = FileLock::acquire_exclusive_file(p, "the answers file");
    EXPECT_TRUE(path_exists(p));
    try {
      FileLock::acquire_exclusive_file(p, "the answers file");
      ADD_FAILURE() << "a second lock was granted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(" pid " + std::to_string(::getpid()) + " since "), std::string::npos)
          << e.what();
    }
  }
  EXPECT_FALSE(path_exists(p));
  // A dead process's leftover (a child that has exited and been reaped).
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  write_file_atomic(p, "host " + std::string(host) + " pid " + std::to_string(child) + " since 2026-01-01T00:00:00Z\n");
  EXPECT_NO_THROW(FileLock::acquire_exclusive_file(p, "x"));
  // Another host's record is never taken over.
  write_file_atomic(p, "host some-other-host pid 1 since 2026-01-01T00:00:00Z\n");
  try {
    FileLock::acquire_exclusive_file(p, "x");
    ADD_FAILURE() << "another host's lock was taken over";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("in use by host some-other-host pid 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mgm
