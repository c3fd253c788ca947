#include "eval/textvqa_runner.h"

#include <cstdio>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

namespace mgm::eval {

std::vector<EvalItem> read_textvqa_questions(const std::string& question_file,
                                             const std::string& image_folder) {
  const std::string text = read_file(question_file);
  std::vector<EvalItem> items;
  size_t pos = 0, line_no = 0, blank = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    ++line_no;
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (trim(line).empty()) {
      ++blank;
      continue;
    }
    EvalItem it;
    it.where = str_cat(question_file, " line ", line_no);
    try {
      const Json q = parse_json(line, it.where);
      MGM_CHECK(q.is_object(), "not a JSON object");
      MGM_CHECK(q.contains("question_id") &&
                    (q["question_id"].is_string() || q["question_id"].is_number_integer()),
                "no question_id (string or integer)");
      it.head["question_id"] = OrderedJson::parse(q["question_id"].dump());
      MGM_CHECK(q.contains("text") && q["text"].is_string(), "no 'text' string");
      it.question = q["text"].get<std::string>();
      it.head["prompt"] = it.question;  // cur_prompt: the question text as given
      if (q.contains("image") && !q["image"].is_null()) {
        MGM_CHECK(q["image"].is_string(), "'image' is not a string");
        const std::string path = path_join(image_folder, q["image"].get<std::string>());
        it.load_image = [path] { return data::decode_image_file(path); };
      }
    } catch (const Error& e) {
      it.problem = e.what();
    }
    items.push_back(std::move(it));
  }
  if (blank > 0)
    std::fprintf(stderr, "%s: ignored %zu blank line(s)\n", question_file.c_str(), blank);
  return items;
}

RunStats run_textvqa(const TextVqaOptions& o) {
  MGM_CHECK(!o.question_file.empty(), "--question-file is required");
  auto items = read_textvqa_questions(o.question_file, o.image_folder);
  const auto [begin, end] = chunk_range(items.size(), o.num_chunks, o.chunk_idx);
  std::vector<EvalItem> chunk(std::make_move_iterator(items.begin() + begin),
                              std::make_move_iterator(items.begin() + end));
  const auto lock = lock_answers_file(o.run.answers_file);  // before the (slow) model load
  EvalModel m = load_eval_model(o.model);
  RunOptions run = o.run;
  run.lock_held = true;
  run.settings = base_settings("textvqa", o.model, m, run.generation, o.question_file, o.num_chunks,
                               o.chunk_idx);
  run.settings["image_folder"] = o.image_folder;
  return run_eval(m, chunk, run);
}

}  // namespace mgm::eval
