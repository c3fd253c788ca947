// End-to-end LoRA finetuning with the real binaries on the tiny model: the files Python reads
// (PEFT adapter, LLaVA's non_lora_trainables.bin, checked with torch/safetensors/peft), the
// trainable set (adapters + projector + resampler, names and counts), merge-lora equal to base +
// adapter after real training (logits within 1e-5, and the same greedy answers from `mgm eval`
// on base + adapter as on the merged folder), kill -9 resume bit-identical, continuing from an
// adapter folder, the mm_projector learning-rate group, and the refusals.
#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/lora.h"
#include "models/mgm.h"
#include "tests_util.h"
#include "trainer/checkpoint.h"

namespace mgm::trainer {
namespace {

std::string src(const std::string& rel) { return test::source_dir() + "/" + rel; }

class LoraE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(test::temp_dir("lora_e2e"));
    std::string out;
    const int rc =
        test::run_command(str_cat(MGM_BIN, " data synth --out ", data(),
                                  " --seed 4 --size 48 --eval_size 6 --vocab_size 512 --overwrite"),
                          &out);
    ASSERT_EQ(rc, 0) << out;
    // The base: a (random) MGM checkpoint folder, as a finetuned MGM-2B would be.
    at::manual_seed(9);
    models::MgmForCausalLM m(models::MgmConfig::from_file(src("configs/models/tiny.json")));
    m->reset_tower_parameters();
    m->reset_mgm_parameters();
    models::save_mgm_checkpoint(m, base());
    write_file_atomic(base() + "/tokenizer.model",
                      read_file(data() + "/tokenizer/tokenizer.model"));
  }
  static void TearDownTestSuite() { delete root_; }
  static std::string data() { return *root_ + "/data"; }
  static std::string base() { return *root_ + "/base"; }

  static std::string train(const std::string& out, const std::string& extra) {
    return str_cat(MGM_TRAIN_BIN, " --stage finetune --model_name_or_path ", base(),
                   " --tokenizer ", data(), "/tokenizer/tokenizer.model --data_path ", data(),
                   "/finetune.json --image_folder ", data(), "/images --output_dir ", out,
                   " --per_device_train_batch_size 4 --logging_steps 1 --progress none --seed 5"
                   " --lora_enable true --lora_r 8 --lora_alpha 16 --dataloader_num_workers 2 ",
                   extra);
  }

  static at::Tensor logits(models::MgmForCausalLM& m) {
    const auto& c = m->config();
    at::manual_seed(3);
    at::Tensor ids = at::randint(3, 500, {2, 14}, at::kLong);
    ids.index_put_({0, 2}, models::kImageTokenIndex);
    ids.index_put_({1, 0}, models::kImageTokenIndex);
    const at::Tensor images = at::randn({2, 3, c.clip.image_size, c.clip.image_size});
    const at::Tensor aux = at::randn({2, 3, c.image_size_aux, c.image_size_aux});
    m->eval();
    at::NoGradGuard ng;
    return m->forward(ids, {}, at::ones_like(ids), images, aux, models::PaddingMode::kMasked)
        .logits;
  }

 private:
  static std::string* root_;
};
std::string* LoraE2E::root_ = nullptr;

std::map<std::string, at::Tensor> tensors_of(const std::string& path) {
  std::map<std::string, at::Tensor> out;
  const auto s = models::io::TensorStore::open(path);
  for (const auto& n : s.names()) out[n] = s.get(n).clone();
  return out;
}

TEST_F(LoraE2E, FinetuneWritesPeftFilesAndMergesToTheSameModel) {
  const std::string o = test::temp_dir("lora_run");
  std::string out;
  ASSERT_EQ(test::run_command(train(o,
                                    "--max_steps 12 --save_steps 6 --learning_rate 3e-3 "
                                    "--lora_dropout 0.05 --mm_projector_lr 1e-3"),
                              &out),
            0)
      << out;
  // The trainable set as the checkpoint records it: 2 x 7 adapters x 2 layers, the projector,
  // the resampler; nothing of the LLM or the towers.
  const auto trainable = models::io::TensorStore::open(o + "/checkpoint-6/trainable.safetensors");
  int lora = 0, proj = 0, uni = 0;
  int64_t numel = 0;
  for (const auto& n : trainable.names()) {
    numel += trainable.get(n).numel();
    if (n.find(".lora_A.weight") != std::string::npos ||
        n.find(".lora_B.weight") != std::string::npos)
      ++lora;
    else if (starts_with(n, "model.mm_projector."))
      ++proj;
    else if (starts_with(n, "model.vlm_uni_"))
      ++uni;
    else
      ADD_FAILURE() << "unexpected trainable tensor " << n;
  }
  EXPECT_EQ(lora, 28);
  EXPECT_EQ(proj, 4);
  EXPECT_EQ(uni, 12);
  const auto counts =
      models::mgm_parameter_counts(models::MgmConfig::from_file(src("configs/models/tiny.json")));
  const int64_t r = 8, H = 64, Q = 64, KV = 16, I = 128;
  const int64_t lora_numel = 2 * r * ((H + Q) + 2 * (H + KV) + (Q + H) + 2 * (H + I) + (I + H));
  EXPECT_EQ(numel, lora_numel + counts.trainable_pretrain());
  EXPECT_NE(out.find(str_cat(with_commas(static_cast<uint64_t>(numel)), " trainable parameters")),
            std::string::npos)
      << out;
  // Each checkpoint carries the adapter as of its step.
  EXPECT_TRUE(path_exists(o + "/checkpoint-6/adapter_model.safetensors"));
  EXPECT_TRUE(path_exists(o + "/checkpoint-6/non_lora_trainables.bin"));
  // ... and the MGM config that building the model on a plain LLM base needs.
  const Json cp_cfg = read_json_file(o + "/checkpoint-6/config.json");
  EXPECT_TRUE(cp_cfg.contains("mm_vision_tower")) << cp_cfg.dump();
  EXPECT_EQ(cp_cfg.at("train_mgm").at("steps"), 6);

  // The output folder, read by Python as LLaVA/MGM's loader and peft read it.
  for (const char* f : {"config.json", "adapter_config.json", "adapter_model.safetensors",
                        "non_lora_trainables.bin", "tokenizer.model"})
    EXPECT_TRUE(path_exists(o + "/" + f)) << f;
  EXPECT_FALSE(path_exists(o + "/model.safetensors"));
  const std::string py =
      "import sys, torch\n"
      "from safetensors.torch import load_file\n"
      "from peft import LoraConfig\n"
      "d = sys.argv[1]\n"
      "c = LoraConfig.from_pretrained(d)\n"
      "assert c.r == 8 and c.lora_alpha == 16 and sorted(c.target_modules) == "
      "sorted(['q_proj','k_proj',"
      "'v_proj','o_proj','gate_proj','up_proj','down_proj']), c\n"
      "a = load_file(d + '/adapter_model.safetensors')\n"
      "assert len(a) == 28 and 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight' in a, "
      "sorted(a)[:3]\n"
      "assert a['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'].shape == (8, "
      "64)\n"
      "assert a['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'].abs().max() > 0\n"
      "n = torch.load(d + '/non_lora_trainables.bin', weights_only=True)\n"
      "assert sorted(k.split('.')[3] for k in n) == sorted(['mm_projector'] * 4 + "
      "['vlm_uni_query_projector'] * 4"
      " + ['vlm_uni_aux_projector'] * 4 + ['vlm_uni_val_projector'] * 4), sorted(n)\n"
      "assert all(k.startswith('base_model.model.model.') for k in n)\n"
      "print('python ok', len(a), len(n))\n";
  write_file_atomic(o + "/check.py", py);
  ASSERT_EQ(test::run_python(o + "/check.py " + o, &out), 0) << out;

  // merge-lora (the binary) gives the base + adapter model: logits within 1e-5 in fp32.
  ASSERT_EQ(test::run_command(str_cat(MGM_BIN, " weights merge-lora --base ", base(), " --adapter ",
                                      o, " --out ", o, "/merged --max_shard_size 300KB"),
                              &out),
            0)
      << out;
  models::MgmForCausalLM merged = models::load_mgm_checkpoint(o + "/merged");
  models::MgmForCausalLM unmerged = models::load_mgm_with_adapter(o, base(), {}, /*merge=*/false);
  models::MgmForCausalLM plain = models::load_mgm_checkpoint(base());
  const at::Tensor want = logits(unmerged);
  const at::Tensor got = logits(merged);
  const double diff = (got - want).abs().max().item<double>();
  std::printf("[lora] merged vs base+adapter logits: max abs diff %.3g (logits up to %.3g)\n", diff,
              want.abs().max().item<double>());
  EXPECT_LE(diff, 1e-5);
  EXPECT_GT((logits(plain) - want).abs().max().item<double>(), 1e-3) << "training changed nothing";

  // Evaluation straight from base + adapter answers as the merged folder does. The 12-step
  // adapter answers with an immediate end of turn; a noisier copy of it makes long answers.
  const std::string noisy = o + "/noisy";
  make_dirs(noisy);
  for (const char* f :
       {"config.json", "adapter_config.json", "non_lora_trainables.bin", "tokenizer.model"})
    write_file_atomic(noisy + "/" + f, read_file(o + "/" + f));
  models::io::NamedTensors loud;
  at::manual_seed(8);
  for (const auto& [n, t] : tensors_of(o + "/adapter_model.safetensors"))
    loud.emplace_back(n, ends_with(n, "lora_B.weight") ? t + at::randn(t.sizes()) * 0.3 : t);
  models::io::save_safetensors(noisy + "/adapter_model.safetensors", loud);
  ASSERT_EQ(test::run_command(str_cat(MGM_BIN, " weights merge-lora --base ", base(), " --adapter ",
                                      noisy, " --out ", noisy, "_merged"),
                              &out),
            0)
      << out;
  const std::string q =
      str_cat(" --question-file ", data(), "/eval/textvqa_questions.jsonl --image-folder ", data(),
              "/images --max_new_tokens 6 --max_questions 4 --batch_size 2");
  ASSERT_EQ(
      test::run_command(str_cat(MGM_BIN, " eval textvqa --model-path ", noisy, " --model-base ",
                                base(), q, " --answers-file ", o, "/a_adapter.jsonl"),
                        &out),
      0)
      << out;
  ASSERT_EQ(test::run_command(str_cat(MGM_BIN, " eval textvqa --model-path ", noisy, "_merged", q,
                                      " --answers-file ", o, "/a_merged.jsonl"),
                              &out),
            0)
      << out;
  auto texts = [](const std::string& f) {
    std::vector<std::string> t;
    for (const auto& line : split(read_file(f), '\n'))
      if (!line.empty()) t.push_back(Json::parse(line).at("text").get<std::string>());
    return t;
  };
  const auto answers = texts(o + "/a_adapter.jsonl");
  ASSERT_EQ(answers.size(), 4u);
  EXPECT_TRUE(std::any_of(answers.begin(), answers.end(), [](const std::string& a) {
    return a.size() > 3;
  })) << join(answers, " | ");
  EXPECT_EQ(answers, texts(o + "/a_merged.jsonl"));
  EXPECT_EQ(read_json_file(o + "/a_adapter.jsonl.settings.json").at("model_base"), base());
}

// kill -9 at a random step (dropout active, so the RNG state matters) and resume: the final
// adapter and non-LoRA tensors equal an uninterrupted run's bit for bit.
TEST_F(LoraE2E, KillNineAndResumeIsBitIdentical) {
  const std::string root = test::temp_dir("lora_kill");
  const std::string args =
      "--max_steps 10 --save_steps 2 --save_total_limit 2 --learning_rate 2e-3 "
      "--lr_scheduler_type cosine --warmup_steps 2 --gradient_accumulation_steps 2 "
      "--lora_dropout 0.1 --mm_projector_lr 5e-4";
  std::string out;
  ASSERT_EQ(test::run_command(train(root + "/a", args), &out), 0) << out;
  std::random_device rd;
  const int kill_after = 2 * static_cast<int>(1 + rd() % 3);  // checkpoint-2 .. checkpoint-6
  const std::string b = root + "/b";
  // Killed at a random moment in the next two steps; the run stalls after them until the kill
  // comes, so it never finishes first (tests/tests_util.h).
  const pid_t pid = test::spawn(str_cat("env MGM_TEST_STALL_AFTER_STEP=", kill_after + 2, " ", train(b, args)),
                                root + "/b1.log");
  const bool killed = test::kill_when_file_appears(
      pid, str_cat(b, "/checkpoint-", kill_after, "/trainer_state.json"), std::chrono::seconds(300));
  ASSERT_TRUE(killed) << read_file(root + "/b1.log");
  ASSERT_FALSE(path_exists(b + "/adapter_model.safetensors")) << "killed too late to test resuming";
  ASSERT_EQ(test::run_command(train(b, args), &out), 0) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;
  for (const char* f : {"adapter_model.safetensors", "non_lora_trainables.bin"}) {
    const auto ta = tensors_of(root + "/a/" + f), tb = tensors_of(b + "/" + f);
    ASSERT_EQ(ta.size(), tb.size()) << f;
    for (const auto& [n, t] : ta)
      EXPECT_TRUE(t.equal(tb.at(n)))
          << f << " " << n << " (killed after checkpoint-" << kill_after << ")";
  }
}

// --lora_adapter continues from an adapter folder (weights and non_lora_trainables.bin); with
// learning_rate 0 and --mm_projector_lr only the projector moves (HF's own group).
TEST_F(LoraE2E, ContinueFromAnAdapterAndTheProjectorLearningRateGroup) {
  const std::string root = test::temp_dir("lora_continue");
  std::string out;
  ASSERT_EQ(
      test::run_command(
          train(root + "/first", "--max_steps 3 --learning_rate 3e-3 --save_strategy no"), &out),
      0)
      << out;
  ASSERT_EQ(test::run_command(train(root + "/second",
                                    str_cat("--max_steps 2 --learning_rate 0 --mm_projector_lr 1e-2"
                                            " --save_strategy no --lora_adapter ",
                                            root, "/first")),
                              &out),
            0)
      << out;
  const auto a1 = tensors_of(root + "/first/adapter_model.safetensors");
  const auto a2 = tensors_of(root + "/second/adapter_model.safetensors");
  ASSERT_EQ(a1.size(), a2.size());
  for (const auto& [n, t] : a1) EXPECT_TRUE(t.equal(a2.at(n))) << n;
  const auto n1 = tensors_of(root + "/first/non_lora_trainables.bin");
  const auto n2 = tensors_of(root + "/second/non_lora_trainables.bin");
  int moved = 0;
  for (const auto& [n, t] : n1) {
    const bool same = t.equal(n2.at(n));
    if (n.find("mm_projector") != std::string::npos)
      moved += same ? 0 : 1;
    else
      EXPECT_TRUE(same) << n;
  }
  EXPECT_EQ(moved, 4);
  // A contradicting flag is refused.
  EXPECT_NE(test::run_command(train(root + "/third", str_cat("--max_steps 1 --lora_adapter ", root,
                                                             "/first --use_rslora true")),
                              &out),
            0);
  EXPECT_NE(out.find("contradict"), std::string::npos) << out;
}

// An adapter made by peft in Python on the base's Gemma (no config.json, no
// non_lora_trainables.bin: PeftModel.save_pretrained's folder) continues training here and
// evaluates with --model-base.
TEST_F(LoraE2E, AdapterMadeByPeftTrainsAndEvaluatesHere) {
  const std::string root = test::temp_dir("lora_peft_adapter");
  const std::string py =
      "import sys, json, torch\n"
      "from safetensors.torch import load_file\n"
      "from transformers import GemmaConfig, GemmaForCausalLM\n"
      "from peft import LoraConfig, get_peft_model\n"
      "base, out = sys.argv[1], sys.argv[2]\n"
      "c = json.load(open(base + '/config.json'))\n"
      "keys = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',"
      " 'num_key_value_heads', 'head_dim', 'rms_norm_eps', 'hidden_act', 'pad_token_id', 'bos_token_id', 'eos_token_id']\n"
      "m = GemmaForCausalLM(GemmaConfig(**{k: c[k] for k in keys}))\n"
      "sd = {k: v for k, v in load_file(base + '/model.safetensors').items() if k.startswith('model.') and"
      " not k.startswith(('model.vision', 'model.mm_', 'model.vlm_'))}\n"
      "missing, unexpected = m.load_state_dict(sd, strict=False)\n"
      "assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)\n"
      "torch.manual_seed(0)\n"
      "p = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'],"
      " init_lora_weights=False, task_type='CAUSAL_LM'))\n"
      "p.save_pretrained(out)\n"
      "print('saved', out)\n";
  write_file_atomic(root + "/make.py", py);
  std::string out;
  ASSERT_TRUE(path_exists(base() + "/model.safetensors"));
  ASSERT_EQ(test::run_python(str_cat(root, "/make.py ", base(), " ", root, "/peft"), &out), 0) << out;
  // Continue training from it: with learning rate 0 the adapter comes back bit for bit.
  const std::string args = str_cat("--max_steps 2 --learning_rate 0 --save_strategy no --lora_adapter ", root,
                                   "/peft --lora_r 4 --lora_alpha 8 --lora_target_modules q_proj,v_proj");
  ASSERT_EQ(test::run_command(train(root + "/trained", args), &out), 0) << out;
  const auto a = tensors_of(root + "/peft/adapter_model.safetensors");
  const auto b = tensors_of(root + "/trained/adapter_model.safetensors");
  ASSERT_EQ(a.size(), 8u);  // q and v in two layers, A and B
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [n, t] : a) EXPECT_TRUE(t.equal(b.at(n))) << n;
  // Evaluation on base + the Python adapter (config and projector from the MGM base).
  ASSERT_EQ(test::run_command(str_cat(MGM_BIN, " eval textvqa --model-path ", root, "/peft --model-base ", base(),
                                      " --question-file ", data(), "/eval/textvqa_questions.jsonl --image-folder ",
                                      data(), "/images --max_new_tokens 4 --max_questions 2 --answers-file ", root,
                                      "/answers.jsonl"),
                              &out),
            0)
      << out;
  EXPECT_EQ(split(read_file(root + "/answers.jsonl"), '\n').size(), 3u);  // two lines + the final newline
}

TEST_F(LoraE2E, Refusals) {
  const std::string root = test::temp_dir("lora_refuse");
  std::string out;
  EXPECT_EQ(
      test::run_command(str_cat(MGM_TRAIN_BIN, " --stage pretrain --model_config ",
                                src("configs/models/tiny.json"), " --tokenizer ", data(),
                                "/tokenizer/tokenizer.model --data_path ", data(),
                                "/pretrain.json --output_dir ", root, "/p --lora_enable true"),
                        &out),
      2)
      << out;
  EXPECT_NE(out.find("LoRA is for --stage finetune"), std::string::npos) << out;
  EXPECT_EQ(
      test::run_command(str_cat(MGM_TRAIN_BIN, " --stage finetune --model_name_or_path ", base(),
                                " --data_path x.json --output_dir ", root, "/q --lora_r 4"),
                        &out),
      2)
      << out;
  EXPECT_NE(out.find("need --lora_enable true"), std::string::npos) << out;
  EXPECT_NE(test::run_command(
                train(root + "/r", "--max_steps 1 --lora_target_modules q_proj,qkv_proj"), &out),
            0);
  EXPECT_NE(out.find("qkv_proj"), std::string::npos) << out;
}

}  // namespace
}  // namespace mgm::trainer
