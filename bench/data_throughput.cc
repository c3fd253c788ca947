// Data throughput benchmark: the 768-px image pipeline as training runs it (decode, `pad` to
// square, PIL-exact antialiased bicubic resize to 768, centre crop, rescale/normalise, then the
// 336 bilinear downsample of the normalised tensor), in samples/s for 1..N worker threads, with
// the Python reference (PIL + transformers' CLIPImageProcessor + F.interpolate, as MGM's
// LazySupervisedDataset does it) timed on the same images in the same run. Also checks that both
// sides produced the same tensors, so the comparison is of equal work.
#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/cli.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "data/collator.h"
#include "data/image.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBIW_WINDOWS_UTF8
#include <stb/stb_image_write.h>

namespace mgm::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct ImageSpec {
  int w, h;
  bool jpeg;
};

// Sizes and aspect ratios of typical training images (COCO-like 640x480 JPEGs dominate LLaVA
// data; screenshots, charts and phone photos add large, tall and wide ones), PNG and JPEG.
const ImageSpec kSpecs[] = {
    {640, 480, true},   {480, 640, true},   {1024, 768, false}, {800, 800, true},
    {1280, 720, false}, {333, 1000, true},  {640, 427, true},   {1600, 1200, false},
    {500, 375, true},   {2048, 1536, true}, {768, 1366, false}, {1920, 1080, true},
};
const ImageSpec kSmokeSpecs[] = {
    {160, 120, true}, {96, 200, false}, {256, 256, true}, {300, 100, false}};

// Smooth gradients, noise and flat blocks: compresses like photos rather than like noise.
std::vector<uint8_t> synth_pixels(int w, int h, std::mt19937& rng) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  std::normal_distribution<double> noise(0.0, 18.0);
  std::uniform_int_distribution<int> pos_x(0, w - 1), pos_y(0, h - 1), col(0, 255);
  const double fx = 255.0 / std::max(w - 1, 1), fy = 255.0 / std::max(h - 1, 1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double base[3] = {x * fx, y * fy, (x * fx + y * fy) / 2};
      for (int c = 0; c < 3; ++c) {
        const double v = base[c] + noise(rng);
        px[(static_cast<size_t>(y) * w + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
      }
    }
  for (int b = 0; b < 6; ++b) {
    const int x0 = pos_x(rng), y0 = pos_y(rng), c[3] = {col(rng), col(rng), col(rng)};
    for (int y = y0; y < std::min(h, y0 + h / 5); ++y)
      for (int x = x0; x < std::min(w, x0 + w / 5); ++x)
        for (int k = 0; k < 3; ++k)
          px[(static_cast<size_t>(y) * w + x) * 3 + k] = static_cast<uint8_t>(c[k]);
  }
  return px;
}

std::vector<std::string> generate_images(const std::string& dir, int count, bool smoke,
                                         uint32_t seed) {
  make_dirs(dir);
  std::mt19937 rng(seed);
  std::vector<std::string> files;
  const ImageSpec* specs = smoke ? kSmokeSpecs : kSpecs;
  const int n_specs = smoke ? 4 : 12;
  for (int i = 0; i < count; ++i) {
    const ImageSpec& s = specs[i % n_specs];
    const std::string path =
        path_join(dir, str_cat("img_", i, "_", s.w, "x", s.h, s.jpeg ? ".jpg" : ".png"));
    files.push_back(path);
    if (path_exists(path)) continue;  // same seed and name: same content
    const auto px = synth_pixels(s.w, s.h, rng);
    const std::string tmp = path + ".tmp";
    const int ok = s.jpeg ? stbi_write_jpg(tmp.c_str(), s.w, s.h, 3, px.data(), 90)
                          : stbi_write_png(tmp.c_str(), s.w, s.h, 3, px.data(), s.w * 3);
    MGM_CHECK(ok != 0, tmp, ": cannot write image");
    rename_into_place(tmp, path);
  }
  return files;
}

std::vector<std::string> list_images(const std::string& dir) {
  std::vector<std::string> files;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw Error(str_cat(dir, ": cannot open folder"));
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    const std::string l = to_lower(name);
    if (ends_with(l, ".jpg") || ends_with(l, ".jpeg") || ends_with(l, ".png"))
      files.push_back(path_join(dir, name));
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  MGM_CHECK(!files.empty(), dir, ": no .jpg/.jpeg/.png images");
  return files;
}

// Per-image fingerprint of the 768 and 336 tensors: sum |x|, sum x^2 and a position-weighted
// sum, in float64 (the Python side computes the same).
struct Check {
  double v[6] = {0, 0, 0, 0, 0, 0};
};

void fingerprint(const float* x, size_t n, double* out) {
  double a = 0, q = 0, w = 0;
  for (size_t i = 0; i < n; ++i) {
    const double v = x[i];
    a += std::fabs(v);
    q += v * v;
    w += v * static_cast<double>(static_cast<int64_t>(i % 7) - 3);
  }
  out[0] = a;
  out[1] = q;
  out[2] = w;
}

struct Sample {
  std::vector<float> aux;  // [3, size, size]
  at::Tensor lr;           // [1, 3, lr, lr]
};

// The training pipeline for one sample, as data::SupervisedDataset::get and the collator run it.
Sample process(const std::string& path, const data::ImageProcessorConfig& cfg, int64_t lr_size) {
  const data::RgbImage img = data::decode_image_file(path);
  Sample s;
  s.aux = data::normalize_chw(data::preprocess_uint8(img, cfg, data::AspectMode::kPad), cfg);
  const at::Tensor t = at::from_blob(s.aux.data(), {1, 3, cfg.crop, cfg.crop});
  s.lr = data::downsample_bilinear(t, lr_size);
  return s;
}

Check check_of(const Sample& s) {
  Check c;
  fingerprint(s.aux.data(), s.aux.size(), c.v);
  const at::Tensor lr = s.lr.contiguous();
  fingerprint(lr.data_ptr<float>(), static_cast<size_t>(lr.numel()), c.v + 3);
  return c;
}

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Measure {
  double samples_per_s = 0;
  double cpu_ms_per_sample = 0;  // CPU time of the workers: what a sample costs a core
};

// `passes` passes of the image list on `threads` workers.
Measure run_cpp(const std::vector<std::string>& files, int passes, int threads,
                const data::ImageProcessorConfig& cfg, int64_t lr_size) {
  const size_t total = files.size() * static_cast<size_t>(passes);
  std::atomic<size_t> next{0};
  std::vector<double> cpu(static_cast<size_t>(threads), 0.0);
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      at::set_num_threads(1);  // one core per worker: the loader's threads do not nest pools
      const double c0 = thread_cpu_seconds();
      for (size_t i; (i = next.fetch_add(1)) < total;)
        process(files[i % files.size()], cfg, lr_size);
      cpu[static_cast<size_t>(t)] = thread_cpu_seconds() - c0;
    });
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  double c = 0;
  for (double v : cpu) c += v;
  return {static_cast<double>(total) / s, 1000.0 * c / static_cast<double>(total)};
}

std::string fmt(double v, int prec = 1) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

int run(int argc, char** argv) {
  cli::ArgParser p(
      "data_throughput",
      "Samples/s of the 768-px training image pipeline (decode, pad, PIL-exact bicubic 768, "
      "crop, normalise, bilinear 336) for 1..N threads, against the Python reference (PIL + "
      "transformers CLIPImageProcessor + F.interpolate) on the same images in the same run.");
  p.flag("images", cli::Kind::kInt, "24", "number of generated images (varied sizes, PNG+JPEG)");
  p.flag("image-dir", cli::Kind::kString, "",
         "benchmark these .jpg/.jpeg/.png files instead of generated ones");
  p.flag("work-dir", cli::Kind::kString, "/tmp/mgm_bench_data_throughput",
         "where generated images and the Python results go");
  p.flag("passes", cli::Kind::kInt, "3", "timed passes over the image list per measurement");
  p.flag("rounds", cli::Kind::kInt, "3",
         "rounds alternating the C++ and the Python measurements; the best of each is shown");
  p.flag("threads", cli::Kind::kString, "",
         "comma-separated thread counts (default: 1..the number of cores)");
  p.flag("python", cli::Kind::kString, MGM_BENCH_PYTHON,
         "Python with torch, PIL and transformers for the reference; 'none' to skip it");
  p.flag("ref-script", cli::Kind::kString, MGM_BENCH_SOURCE_DIR "/bench/data_throughput_ref.py",
         "the Python reference script");
  p.flag("py-processes", cli::Kind::kBool, "true",
         "also time the Python reference with N worker processes for each thread count N > 1");
  p.flag("size", cli::Kind::kInt, "768", "aux image size (shortest edge and crop)");
  p.flag("lr-size", cli::Kind::kInt, "336", "low-resolution size (bilinear from the aux tensor)");
  p.flag("seed", cli::Kind::kInt, "0", "image generator seed");
  p.flag("smoke", cli::Kind::kBool, "false",
         "a seconds-long check that the benchmark runs: 4 small images, 1 pass, 1 round, "
         "threads 1,2, no Python unless --python is given");
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  const bool smoke = p.boolean("smoke");
  const int n_cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> threads;
  if (p.given("threads")) {
    for (const auto& t : p.list("threads")) {
      const int v = std::atoi(t.c_str());
      if (v < 1) throw UsageError(str_cat("--threads: '", t, "' is not a positive count"));
      threads.push_back(v);
    }
  } else if (smoke) {
    threads = {1, 2};
  } else {
    for (int t = 1; t <= n_cores; ++t) threads.push_back(t);
  }
  const int passes = smoke && !p.given("passes") ? 1 : static_cast<int>(p.integer("passes"));
  if (smoke && !p.given("rounds")) p.set_default("rounds", "1");
  if (passes < 1) throw UsageError("--passes must be >= 1");
  std::string python = p.str("python");
  if (smoke && !p.given("python")) python = "none";
  const bool with_python = !python.empty() && python != "none";

  data::ImageProcessorConfig cfg;
  cfg.shortest_edge = cfg.crop = static_cast<int>(p.integer("size"));
  const int64_t lr_size = p.integer("lr-size");

  const std::string work = p.str("work-dir");
  make_dirs(work);
  std::vector<std::string> files;
  if (p.given("image-dir")) {
    files = list_images(p.str("image-dir"));
  } else {
    const int n = smoke && !p.given("images") ? 4 : static_cast<int>(p.integer("images"));
    if (n < 1) throw UsageError("--images must be >= 1");
    files = generate_images(path_join(work, smoke ? "smoke_images" : "images"), n, smoke,
                            static_cast<uint32_t>(p.integer("seed")));
  }
  size_t n_jpeg = 0;
  int min_px = 1 << 30, max_px = 0;
  std::string min_s, max_s;
  for (const auto& f : files) {
    const std::string l = to_lower(f);
    n_jpeg += ends_with(l, ".jpg") || ends_with(l, ".jpeg");
  }

  // The C++ side: one untimed pass (page cache, allocator) that also fingerprints every image.
  at::set_num_threads(1);
  std::vector<Check> checks;
  for (const auto& f : files) {
    const data::RgbImage img = data::decode_image_file(f);
    const int px = img.width * img.height;
    if (px < min_px) min_px = px, min_s = str_cat(img.width, "x", img.height);
    if (px > max_px) max_px = px, max_s = str_cat(img.width, "x", img.height);
    checks.push_back(check_of(process(f, cfg, lr_size)));
  }
  // Rounds alternate the C++ and the Python measurements, and each keeps its best round, so a
  // burst of load from other processes on a shared machine does not favour either side.
  const int rounds = static_cast<int>(p.integer("rounds"));
  if (rounds < 1) throw UsageError("--rounds must be >= 1");
  std::vector<Measure> cpp(threads.size());
  Measure py_single;
  std::map<int, Measure> py_procs;
  Json py;  // the first round's result (fingerprints, versions)
  auto keep_best = [](Measure* best, const Measure& m) {
    if (m.samples_per_s > best->samples_per_s) best->samples_per_s = m.samples_per_s;
    if (best->cpu_ms_per_sample == 0 || m.cpu_ms_per_sample < best->cpu_ms_per_sample)
      best->cpu_ms_per_sample = m.cpu_ms_per_sample;
  };
  const std::string list = path_join(work, "files.txt");
  if (with_python) write_file_atomic(list, join(files, "\n") + "\n");
  std::vector<std::string> procs;
  if (p.boolean("py-processes"))
    for (int t : threads)
      if (t > 1) procs.push_back(std::to_string(t));
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < threads.size(); ++i)
      keep_best(&cpp[i], run_cpp(files, passes, threads[i], cfg, lr_size));
    if (!with_python) continue;
    // The Python reference, same images, same passes.
    const std::string out = path_join(work, "python_result.json");
    if (path_exists(out)) std::remove(out.c_str());
    const std::string cmd = str_cat(shell_quote(python), " ", shell_quote(p.str("ref-script")),
                                    " --list ", shell_quote(list), " --passes ", passes, " --size ",
                                    cfg.crop, " --lr-size ", lr_size, " --out ", shell_quote(out),
                                    procs.empty() ? "" : " --processes " + join(procs, ","));
    const int rc = std::system(cmd.c_str());
    MGM_CHECK(rc == 0, "the Python reference failed (exit ", rc, "): ", cmd);
    const Json j = read_json_file(out);
    keep_best(&py_single, {j["single"].get<double>(), j["single_cpu_ms"].get<double>()});
    for (const auto& [n, m] : j["processes"].items())
      keep_best(&py_procs[std::stoi(n)],
                {m["samples_per_s"].get<double>(), m["cpu_ms"].get<double>()});
    if (r == 0) py = j;
  }

  std::printf(
      "MGM data throughput: decode (%s) -> pad -> PIL bicubic %d -> crop -> normalise -> "
      "bilinear %lld\n",
#ifdef MGM_WITH_OPENCV
      "OpenCV",
#else
      "stb_image",
#endif
      cfg.crop, static_cast<long long>(lr_size));
  std::printf(
      "%zu images (%zu JPEG, %zu PNG; %s .. %s px), %d pass%s = %zu samples per "
      "measurement, best of %d round%s; %d cores\n",
      files.size(), n_jpeg, files.size() - n_jpeg, min_s.c_str(), max_s.c_str(), passes,
      passes == 1 ? "" : "es", files.size() * static_cast<size_t>(passes), rounds,
      rounds == 1 ? "" : "s", n_cores);
  std::printf("\n%7s  %21s  %29s  %10s  %19s\n", "", "C++ samples/s", "Python samples/s",
              "C++/Python", "CPU ms per sample");
  std::printf("%7s  %8s  %11s  %8s  %20s  %10s  %8s  %9s\n", "threads", "total", "per thread",
              "total", "per process", "per thread", "C++", "Python");
  for (size_t i = 0; i < threads.size(); ++i) {
    const int t = threads[i];
    const double per = cpp[i].samples_per_s / t;
    std::string py_total = "-", py_per = "-", ratio = "-", py_cpu = "-";
    if (with_python) {
      const Measure* pm = t == 1 ? &py_single : py_procs.count(t) ? &py_procs[t] : nullptr;
      if (pm != nullptr) {
        py_total = fmt(pm->samples_per_s);
        py_per = fmt(pm->samples_per_s / t) + (t == 1 ? " (1 proc)" : str_cat(" (", t, " procs)"));
        ratio = fmt(per / (pm->samples_per_s / t), 2);
        py_cpu = fmt(pm->cpu_ms_per_sample);
      } else {
        ratio = fmt(per / py_single.samples_per_s, 2) + " vs 1";
      }
    }
    std::printf("%7d  %8s  %11s  %8s  %20s  %10s  %8s  %9s\n", t, fmt(cpp[i].samples_per_s).c_str(),
                fmt(per).c_str(), py_total.c_str(), py_per.c_str(), ratio.c_str(),
                fmt(cpp[i].cpu_ms_per_sample).c_str(), py_cpu.c_str());
  }
  if (with_python) {
    // Same work on both sides: the tensors' fingerprints must agree (uint8 stage bit-exact,
    // normalised values within float rounding).
    size_t agree = 0;
    double worst = 0;
    for (size_t i = 0; i < files.size(); ++i) {
      const Json& pc = py["checks"][i];
      bool ok = true;
      for (int k = 0; k < 6; ++k) {
        const double scale = (k < 3 ? checks[i].v[0] : checks[i].v[3]) + 1.0;
        const double rel = std::fabs(checks[i].v[k] - pc[k].get<double>()) / scale;
        worst = std::max(worst, rel);
        ok = ok && rel < 1e-5;
      }
      agree += ok;
    }
    std::printf(
        "\noutputs agree with the Python reference on %zu/%zu images (largest relative "
        "fingerprint difference %.1e)\n",
        agree, files.size(), worst);
    std::printf("Python: %s\n", py["versions"].get<std::string>().c_str());
    if (agree != files.size()) {
      std::fprintf(stderr, "data_throughput: C++ and Python outputs differ\n");
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace mgm::bench

int main(int argc, char** argv) {
  // One OpenMP thread per worker: set before libtorch starts its pool.
  ::setenv("OMP_NUM_THREADS", "1", 1);
  try {
    return mgm::bench::run(argc, argv);
  } catch (const mgm::UsageError& e) {
    std::fprintf(stderr, "data_throughput: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_throughput: %s\n", e.what());
    return 1;
  }
}
