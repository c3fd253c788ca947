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

}  // namespace
}  // namespace mgm
