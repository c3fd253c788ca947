#include "models/io/pickle.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "common/error.h"

namespace mgm::models::io {
namespace {

// Global names a state dict may reference (torch.load(weights_only=True) allows a superset).
enum class Callable { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kRebuildParameterWithState,
                      kCodecsEncode, kStorageClass };

class Unpickler {
 public:
  Unpickler(const uint8_t* d, size_t n, const std::string& what) : p_(d), end_(d + n), what_(what) {}

  PickleResult run() {
    while (true) {
      need(1);
      uint8_t op = *p_++;
      if (op == '.') break;  // STOP
      step(op);
    }
    if (!marks_.empty()) fail("STOP with an unclosed MARK");
    if (stack_.size() != 1)
      fail("STOP with " + std::to_string(stack_.size()) + " values on the stack (expected 1)");
    res_.root = stack_.back();
    return std::move(res_);
  }

 private:
  [[noreturn]] void fail(const std::string& m) {
    throw FormatError(what_, "data.pkl at byte " + std::to_string(pos()) + ": " + m);
  }
  size_t pos() const { return static_cast<size_t>(p_ - begin_()); }
  const uint8_t* begin_() const { return end_ - total_; }
  void need(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail("truncated pickle");
  }
  uint64_t le(size_t n) {
    need(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p_[k]) << (8 * k);
    p_ += n;
    return v;
  }
  std::string bytes(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) fail("string length beyond the end of the pickle");
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  std::string line() {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p_, '\n', end_ - p_));
    if (nl == nullptr) fail("unterminated line");
    std::string s(reinterpret_cast<const char*>(p_), nl - p_);
    p_ = nl + 1;
    return s;
  }
  PyObj* make(PyObj::Type t) {
    res_.arena.push_back(std::make_unique<PyObj>());
    res_.arena.back()->type = t;
    return res_.arena.back().get();
  }
  // Names the opcode being executed, for messages: "'s' (0x73)".
  std::string op_desc() const {
    char buf[16];
    if (op_ >= 0x20 && op_ < 0x7f) std::snprintf(buf, sizeof buf, "'%c' (0x%02x)", op_, op_);
    else std::snprintf(buf, sizeof buf, "0x%02x", op_);
    return buf;
  }
  [[noreturn]] void underflow() {
    fail("stack underflow: opcode " + op_desc() + " needs more values than the stack holds" +
         (marks_.empty() ? std::string() : std::string(" above the last MARK")));
  }
  PyObj* pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) underflow();
    PyObj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  PyObj* top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) underflow();
    return stack_.back();
  }
  std::vector<PyObj*> pop_mark() {
    if (marks_.empty()) fail("opcode " + op_desc() + " without a MARK on the stack");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyObj*> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void push(PyObj* o) {
    if (stack_.size() > kMaxStack) fail("pickle stack too deep");
    stack_.push_back(o);
  }
  PyObj* int_obj(int64_t v) {
    PyObj* o = make(PyObj::Type::kInt);
    o->i = v;
    return o;
  }
  PyObj* str_obj(PyObj::Type t, std::string s) {
    PyObj* o = make(t);
    o->s = std::move(s);
    return o;
  }
  void memo_put(uint64_t k) {
    if (memo_.size() >= kMaxMemo && !memo_.count(k)) fail("memo too large");
    memo_[k] = top();
  }
  PyObj* memo_get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail("memo key " + std::to_string(k) + " not found");
    return it->second;
  }

  PyObj* global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    static const std::map<std::string, Callable> kAllowed = {
        {"collections.OrderedDict", Callable::kOrderedDict},
        {"torch._utils._rebuild_tensor_v2", Callable::kRebuildTensorV2},
        {"torch._utils._rebuild_parameter", Callable::kRebuildParameter},
        {"torch._utils._rebuild_parameter_with_state", Callable::kRebuildParameterWithState},
        {"_codecs.encode", Callable::kCodecsEncode},
    };
    PyObj* g = make(PyObj::Type::kGlobal);
    g->s = full;
    if (kAllowed.count(full)) {
      g->i = static_cast<int64_t>(kAllowed.at(full));
      return g;
    }
    if (module == "torch") {
      if (auto d = dtype_from_storage_class(name)) {
        g->i = static_cast<int64_t>(Callable::kStorageClass);
        g->dtype = *d;
        return g;
      }
    }
    fail("forbidden global '" + full +
         "' (only tensors and plain containers are accepted; nothing is executed)");
  }

  static Callable callable_of(const PyObj* g) { return static_cast<Callable>(g->i); }

  PyObj* call(PyObj* fn, PyObj* args) {
    if (fn->type != PyObj::Type::kGlobal) fail("REDUCE on a non-callable object");
    if (args->type != PyObj::Type::kTuple) fail("REDUCE arguments are not a tuple");
    const auto& a = args->items;
    switch (callable_of(fn)) {
      case Callable::kOrderedDict:
        if (!a.empty()) fail("OrderedDict called with arguments");
        return make(PyObj::Type::kDict);
      case Callable::kRebuildTensorV2: {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (a.size() < 6 || a.size() > 7) fail("_rebuild_tensor_v2 expects 6 or 7 arguments");
        if (a[0]->type != PyObj::Type::kStorage) fail("_rebuild_tensor_v2: first argument is not a storage");
        if (a[1]->type != PyObj::Type::kInt) fail("_rebuild_tensor_v2: storage offset is not an int");
        PyObj* t = make(PyObj::Type::kTensor);
        t->storage = a[0];
        t->dtype = a[0]->dtype;
        t->storage_offset = a[1]->i;
        t->sizes = int_tuple(a[2], "size");
        t->strides = int_tuple(a[3], "stride");
        if (t->sizes.size() != t->strides.size()) fail("_rebuild_tensor_v2: size and stride ranks differ");
        t->requires_grad = a[4]->type == PyObj::Type::kBool && a[4]->b;
        return t;
      }
      case Callable::kRebuildParameter:
      case Callable::kRebuildParameterWithState:
        // (data, requires_grad, backward_hooks[, state]): a Parameter is its data for us.
        if (a.size() < 3 || a[0]->type != PyObj::Type::kTensor) fail("_rebuild_parameter: bad arguments");
        return a[0];
      case Callable::kCodecsEncode: {
        // Protocol 2 pickles bytes as _codecs.encode(str, "latin1").
        if (a.size() != 2 || a[0]->type != PyObj::Type::kStr || a[1]->type != PyObj::Type::kStr)
          fail("_codecs.encode: bad arguments");
        if (a[1]->s != "latin1" && a[1]->s != "latin-1") fail("_codecs.encode: unsupported encoding");
        return str_obj(PyObj::Type::kBytes, latin1_from_utf8(a[0]->s));
      }
      case Callable::kStorageClass:
        fail("storage classes are only valid inside persistent ids");
    }
    fail("unsupported call");
  }

  std::string latin1_from_utf8(const std::string& s) {
    std::string out;
    for (size_t k = 0; k < s.size(); ++k) {
      uint8_t c = static_cast<uint8_t>(s[k]);
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if ((c & 0xE0) == 0xC0 && k + 1 < s.size()) {
        uint32_t cp = ((c & 0x1F) << 6) | (static_cast<uint8_t>(s[k + 1]) & 0x3F);
        if (cp > 0xFF) fail("_codecs.encode: character outside latin1");
        out.push_back(static_cast<char>(cp));
        ++k;
      } else {
        fail("_codecs.encode: character outside latin1");
      }
    }
    return out;
  }

  std::vector<int64_t> int_tuple(PyObj* o, const char* what) {
    if (o->type != PyObj::Type::kTuple && o->type != PyObj::Type::kList)
      fail(std::string("_rebuild_tensor_v2: ") + what + " is not a tuple");
    std::vector<int64_t> v;
    for (PyObj* x : o->items) {
      if (x->type != PyObj::Type::kInt) fail(std::string("_rebuild_tensor_v2: ") + what + " holds a non-int");
      v.push_back(x->i);
    }
    return v;
  }

  PyObj* persistent_load(PyObj* pid) {
    // ('storage', StorageClass, key, location, numel)
    if (pid->type != PyObj::Type::kTuple || pid->items.size() != 5 ||
        pid->items[0]->type != PyObj::Type::kStr || pid->items[0]->s != "storage")
      fail("unsupported persistent id (expected a ('storage', ...) tuple)");
    PyObj* cls = pid->items[1];
    PyObj* key = pid->items[2];
    PyObj* loc = pid->items[3];
    PyObj* numel = pid->items[4];
    if (cls->type != PyObj::Type::kGlobal || callable_of(cls) != Callable::kStorageClass)
      fail("persistent id: '" + cls->s + "' is not a typed storage class");
    if (key->type != PyObj::Type::kStr || loc->type != PyObj::Type::kStr ||
        numel->type != PyObj::Type::kInt || numel->i < 0)
      fail("persistent id: malformed storage key, location or size");
    auto it = storages_.find(key->s);
    if (it != storages_.end()) {
      if (it->second->dtype != cls->dtype) fail("storage '" + key->s + "' used with two dtypes");
      return it->second;
    }
    PyObj* s = make(PyObj::Type::kStorage);
    s->s = key->s;
    s->dtype = cls->dtype;
    s->location = loc->s;
    s->numel = static_cast<uint64_t>(numel->i);
    storages_[key->s] = s;
    return s;
  }

  void set_item(PyObj* d, PyObj* k, PyObj* v) {
    if (d->type != PyObj::Type::kDict) fail("SETITEM on a non-dict");
    d->dict.emplace_back(k, v);
  }

  void step(uint8_t op) {
    op_ = op;
    switch (op) {
      case 0x80: {  // PROTO
        uint64_t v = le(1);
        if (v > 5) fail("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case 0x95: le(8); break;  // FRAME: framing is transparent here
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case 'N': push(make(PyObj::Type::kNone)); break;
      case 0x88: case 0x89: {  // NEWTRUE / NEWFALSE
        PyObj* o = make(PyObj::Type::kBool);
        o->b = op == 0x88;
        push(o);
        break;
      }
      case 'J': push(int_obj(static_cast<int32_t>(le(4)))); break;  // BININT
      case 'K': push(int_obj(static_cast<int64_t>(le(1)))); break;  // BININT1
      case 'M': push(int_obj(static_cast<int64_t>(le(2)))); break;  // BININT2
      case 0x8a: {  // LONG1
        uint64_t n = le(1);
        if (n > 8) fail("integer wider than 64 bits");
        uint64_t v = n ? le(n) : 0;
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~0ull << (8 * n);  // sign-extend
        push(int_obj(static_cast<int64_t>(v)));
        break;
      }
      case 0x8b: fail("integer wider than 64 bits (LONG4)");
      case 'I': {  // INT (text), also "I01\n"/"I00\n" booleans
        std::string s = line();
        if (s == "01" || s == "00") {
          PyObj* o = make(PyObj::Type::kBool);
          o->b = s == "01";
          push(o);
        } else {
          try {
            size_t used = 0;
            int64_t v = std::stoll(s, &used);
            if (used != s.size()) fail("bad INT");
            push(int_obj(v));
          } catch (const std::exception&) {
            fail("bad INT");
          }
        }
        break;
      }
      case 'G': {  // BINFLOAT, big-endian double
        need(8);
        uint64_t v = 0;
        for (int k = 0; k < 8; ++k) v = (v << 8) | p_[k];
        p_ += 8;
        PyObj* o = make(PyObj::Type::kFloat);
        std::memcpy(&o->f, &v, 8);
        push(o);
        break;
      }
      case 'X': push(str_obj(PyObj::Type::kStr, bytes(le(4)))); break;     // BINUNICODE
      case 0x8c: push(str_obj(PyObj::Type::kStr, bytes(le(1)))); break;    // SHORT_BINUNICODE
      case 0x8d: push(str_obj(PyObj::Type::kStr, bytes(le(8)))); break;    // BINUNICODE8
      case 'T': push(str_obj(PyObj::Type::kStr, bytes(le(4)))); break;     // BINSTRING
      case 'U': push(str_obj(PyObj::Type::kStr, bytes(le(1)))); break;     // SHORT_BINSTRING
      case 'B': push(str_obj(PyObj::Type::kBytes, bytes(le(4)))); break;   // BINBYTES
      case 'C': push(str_obj(PyObj::Type::kBytes, bytes(le(1)))); break;   // SHORT_BINBYTES
      case 0x8e: push(str_obj(PyObj::Type::kBytes, bytes(le(8)))); break;  // BINBYTES8
      case '}': push(make(PyObj::Type::kDict)); break;   // EMPTY_DICT
      case ']': push(make(PyObj::Type::kList)); break;   // EMPTY_LIST
      case ')': push(make(PyObj::Type::kTuple)); break;  // EMPTY_TUPLE
      case 't': {  // TUPLE
        PyObj* o = make(PyObj::Type::kTuple);
        o->items = pop_mark();
        push(o);
        break;
      }
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        size_t n = op - 0x84u;
        PyObj* o = make(PyObj::Type::kTuple);
        o->items.resize(n);
        for (size_t k = n; k-- > 0;) o->items[k] = pop();
        push(o);
        break;
      }
      case 'l': {  // LIST
        PyObj* o = make(PyObj::Type::kList);
        o->items = pop_mark();
        push(o);
        break;
      }
      case 'd': {  // DICT
        auto items = pop_mark();
        if (items.size() % 2) fail("DICT with an odd number of items");
        PyObj* o = make(PyObj::Type::kDict);
        for (size_t k = 0; k < items.size(); k += 2) o->dict.emplace_back(items[k], items[k + 1]);
        push(o);
        break;
      }
      case 'a': {  // APPEND
        PyObj* v = pop();
        PyObj* l = top();
        if (l->type != PyObj::Type::kList) fail("APPEND to a non-list");
        l->items.push_back(v);
        break;
      }
      case 'e': {  // APPENDS
        auto items = pop_mark();
        PyObj* l = top();
        if (l->type != PyObj::Type::kList) fail("APPENDS to a non-list");
        l->items.insert(l->items.end(), items.begin(), items.end());
        break;
      }
      case 's': {  // SETITEM
        PyObj* v = pop();
        PyObj* k = pop();
        set_item(top(), k, v);
        break;
      }
      case 'u': {  // SETITEMS
        auto items = pop_mark();
        if (items.size() % 2) fail("SETITEMS with an odd number of items");
        PyObj* d = top();
        for (size_t k = 0; k < items.size(); k += 2) set_item(d, items[k], items[k + 1]);
        break;
      }
      case 'q': memo_put(le(1)); break;   // BINPUT
      case 'r': memo_put(le(4)); break;   // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;  // MEMOIZE
      case 'p': {  // PUT (text)
        try {
          memo_put(std::stoull(line()));
        } catch (const std::exception&) {
          fail("bad PUT");
        }
        break;
      }
      case 'h': push(memo_get(le(1))); break;  // BINGET
      case 'j': push(memo_get(le(4))); break;  // LONG_BINGET
      case 'g': {  // GET (text)
        uint64_t k = 0;
        try {
          k = std::stoull(line());
        } catch (const std::exception&) {
          fail("bad GET");
        }
        push(memo_get(k));
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        std::string name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyObj* name = pop();
        PyObj* module = pop();
        if (module->type != PyObj::Type::kStr || name->type != PyObj::Type::kStr)
          fail("STACK_GLOBAL with non-string names");
        push(global(module->s, name->s));
        break;
      }
      case 'R': {  // REDUCE
        PyObj* args = pop();
        PyObj* fn = pop();
        push(call(fn, args));
        break;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
        PyObj* args = pop();
        PyObj* cls = pop();
        if (cls->type != PyObj::Type::kGlobal || callable_of(cls) != Callable::kOrderedDict)
          fail("NEWOBJ of '" + cls->s + "' is not allowed");
        (void)args;
        push(make(PyObj::Type::kDict));
        break;
      }
      case 'b': {  // BUILD: obj.__setstate__(state)
        PyObj* state = pop();
        PyObj* obj = top();
        // A state dict carries `_metadata` (module versions) as instance state: accepted and
        // ignored. Parameters rebuilt "with state" are tensors here. Anything else is refused.
        if (obj->type == PyObj::Type::kDict || obj->type == PyObj::Type::kTensor) break;
        (void)state;
        fail("BUILD on an unsupported object");
      }
      case 'Q': {  // BINPERSID
        PyObj* pid = pop();
        push(persistent_load(pid));
        break;
      }
      case '0': pop(); break;  // POP
      case '1': pop_mark(); break;  // POP_MARK
      case '2': push(top()); break;  // DUP
      default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "0x%02x", op);
        p_--;
        fail(std::string("unsupported pickle opcode ") + buf);
      }
    }
  }

  static constexpr size_t kMaxStack = 1 << 20;
  static constexpr size_t kMaxMemo = 1 << 24;
  const uint8_t* p_;
  const uint8_t* end_;
  size_t total_ = static_cast<size_t>(end_ - p_);
  const std::string& what_;
  uint8_t op_ = 0;
  std::vector<PyObj*> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, PyObj*> memo_;
  std::map<std::string, PyObj*> storages_;
  PickleResult res_;
};

struct WalkState {
  StateDictIndex& out;
  std::set<std::string> names;
  // Entries left to visit. A dict referenced from several places (through the memo) is walked
  // once per reference, so dicts shared at every level would expand exponentially: the walk is
  // bounded by a small multiple of the number of objects in the pickle.
  uint64_t budget;
};

void walk(const PyObj* o, const std::string& prefix, int depth, WalkState& ws,
          const std::string& what) {
  StateDictIndex& out = ws.out;
  if (depth > 64) throw FormatError(what, "state dict nested too deeply (or cyclic) at '" + prefix + "'");
  for (const auto& [k, v] : o->dict) {
    if (ws.budget == 0)
      throw FormatError(what, "state dict expands to too many entries (dicts shared by reference "
                              "at many levels) under '" + prefix + "'");
    --ws.budget;
    std::string key;
    if (k->type == PyObj::Type::kStr) key = k->s;
    else if (k->type == PyObj::Type::kInt) key = std::to_string(k->i);
    else throw FormatError(what, "state dict key of unsupported type under '" + prefix + "'");
    std::string name = prefix.empty() ? key : prefix + "." + key;
    switch (v->type) {
      case PyObj::Type::kTensor: {
        const PyObj* s = v->storage;
        // Every element the view can reach must lie inside the storage.
        uint64_t extent = 0;
        bool empty = false;
        if (v->storage_offset < 0) throw FormatError(what, "tensor '" + name + "': negative storage offset");
        for (size_t d = 0; d < v->sizes.size(); ++d) {
          if (v->sizes[d] < 0 || v->strides[d] < 0)
            throw FormatError(what, "tensor '" + name + "': negative size or stride");
          if (v->sizes[d] == 0) empty = true;
        }
        if (!checked_numel(v->sizes.data(), v->sizes.size()))
          throw FormatError(what, "tensor '" + name + "': shape overflows");
        if (empty) {
          // Nothing is read, but the offset still becomes a pointer into the file's bytes.
          if (static_cast<uint64_t>(v->storage_offset) > s->numel)
            throw FormatError(what, "tensor '" + name + "': empty view's offset " +
                                        std::to_string(v->storage_offset) + " is beyond its storage of " +
                                        std::to_string(s->numel) + " elements");
        } else {
          for (size_t d = 0; d < v->sizes.size(); ++d) {
            auto m = checked_mul(static_cast<uint64_t>(v->sizes[d] - 1), static_cast<uint64_t>(v->strides[d]));
            if (!m || *m > UINT64_MAX / 2 - extent) throw FormatError(what, "tensor '" + name + "': strides overflow");
            extent += *m;
          }
          if (static_cast<uint64_t>(v->storage_offset) + extent >= s->numel)
            throw FormatError(what, "tensor '" + name + "': view (offset " + std::to_string(v->storage_offset) +
                                        ", last element " +
                                        std::to_string(static_cast<uint64_t>(v->storage_offset) + extent) +
                                        ") reaches beyond its storage of " + std::to_string(s->numel) + " elements");
        }
        if (!ws.names.insert(name).second) throw FormatError(what, "duplicate tensor name '" + name + "'");
        PickledTensor t;
        t.name = name;
        t.storage_key = s->s;
        t.dtype = s->dtype;
        t.storage_numel = s->numel;
        t.storage_offset = v->storage_offset;
        t.sizes = v->sizes;
        t.strides = v->strides;
        out.tensors.push_back(std::move(t));
        break;
      }
      case PyObj::Type::kDict:
        walk(v, name, depth + 1, ws, what);
        break;
      default: {
        static const char* kTypeNames[] = {"None", "bool", "int", "float", "str", "bytes", "tuple",
                                           "list", "dict", "global", "storage", "tensor"};
        out.skipped.push_back(name + ": " + kTypeNames[static_cast<int>(v->type)]);
      }
    }
  }
}

// -- writer ---------------------------------------------------------------------------------------

void op(std::string& s, uint8_t c) { s.push_back(static_cast<char>(c)); }
void put_u32(std::string& s, uint32_t v) {
  for (int k = 0; k < 4; ++k) s.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}
void put_str(std::string& s, const std::string& v) {
  op(s, 'X');
  put_u32(s, static_cast<uint32_t>(v.size()));
  s += v;
}
void put_int(std::string& s, int64_t v) {
  if (v >= 0 && v < 256) {
    op(s, 'K');
    op(s, static_cast<uint8_t>(v));
  } else if (v >= 0 && v < 65536) {
    op(s, 'M');
    op(s, static_cast<uint8_t>(v & 0xFF));
    op(s, static_cast<uint8_t>(v >> 8));
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    op(s, 'J');
    put_u32(s, static_cast<uint32_t>(static_cast<int32_t>(v)));
  } else {
    op(s, 0x8a);
    op(s, 8);
    for (int k = 0; k < 8; ++k) s.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * k)) & 0xFF));
  }
}
void put_int_tuple(std::string& s, const std::vector<int64_t>& v) {
  op(s, '(');
  for (int64_t x : v) put_int(s, x);
  op(s, 't');
}

}  // namespace

PickleResult unpickle(const uint8_t* data, size_t size, const std::string& what) {
  return Unpickler(data, size, what).run();
}

StateDictIndex index_state_dict(const PickleResult& r, const std::string& what) {
  if (r.root == nullptr || r.root->type != PyObj::Type::kDict)
    throw FormatError(what, "the pickled object is not a dict of tensors (a state dict)");
  StateDictIndex out;
  WalkState ws{out, {}, 16 * static_cast<uint64_t>(r.arena.size()) + 4096};
  walk(r.root, "", 0, ws, what);
  return out;
}

std::string pickle_state_dict(const std::vector<PickleTensorSpec>& tensors) {
  std::string s;
  op(s, 0x80);
  op(s, 2);
  op(s, '}');  // a plain dict
  if (!tensors.empty()) op(s, '(');
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    put_str(s, t.name);
    s += "ctorch._utils\n_rebuild_tensor_v2\n";
    op(s, '(');
    // persistent id ('storage', torch.<X>Storage, key, 'cpu', numel)
    op(s, '(');
    put_str(s, "storage");
    s += std::string("ctorch\n") + storage_class_name(t.dtype) + "\n";
    put_str(s, std::to_string(k));
    put_str(s, "cpu");
    uint64_t numel = 1;
    for (int64_t d : t.sizes) numel *= static_cast<uint64_t>(d);
    put_int(s, static_cast<int64_t>(numel));
    op(s, 't');
    op(s, 'Q');
    put_int(s, 0);  // storage offset
    put_int_tuple(s, t.sizes);
    std::vector<int64_t> strides(t.sizes.size(), 1);
    for (size_t d = t.sizes.size(); d-- > 1;) strides[d - 1] = strides[d] * std::max<int64_t>(t.sizes[d], 1);
    put_int_tuple(s, strides);
    op(s, 0x89);  // requires_grad False
    s += "ccollections\nOrderedDict\n";
    op(s, ')');
    op(s, 'R');  // backward_hooks = OrderedDict()
    op(s, 't');
    op(s, 'R');
  }
  if (!tensors.empty()) op(s, 'u');
  op(s, '.');
  return s;
}

}  // namespace mgm::models::io
